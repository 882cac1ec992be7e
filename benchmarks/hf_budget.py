"""Training a Hugging Face model with `Trainer` for a wall-clock budget, as a user with a budget would:
its schedule is counted in steps, so max_steps comes from its own speed, measured over a short
first run, to make the schedule end with the budget; a callback stops it at the budget in any case."""

from __future__ import annotations

import time


def budget_callback(seconds: float):
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        def __init__(self):
            self.start = None

        def on_train_begin(self, *args, **kwargs):
            self.start = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            if time.time() - self.start >= seconds:
                control.should_training_stop = True

    return Budget()


def _step_clock():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.time())

    return Clock()


def train_for(make_trainer, minutes: float, probe_steps: int = 60, min_steps: int = 1) -> dict:
    """make_trainer(max_steps, seconds, name) -> a transformers Trainer. Runs a probe of probe_steps
    whose steady speed (the steps after its first 10) sets max_steps, then the real run; returns the
    trained Trainer, its wall time and the plan."""
    probe = make_trainer(probe_steps, 1e9, "probe")
    clock = _step_clock()
    probe.add_callback(clock)
    probe.train()
    per_step = (clock.times[-1] - clock.times[9]) / (len(clock.times) - 10)
    max_steps = max(min_steps, int(minutes * 60 / per_step))
    trainer = make_trainer(max_steps, minutes * 60, "run")
    started = time.time()
    output = trainer.train()
    return {
        "trainer": trainer,
        "wall_seconds": time.time() - started,
        "train_seconds": output.metrics.get("train_runtime", time.time() - started),
        "planned_steps": max_steps,
        "probe_seconds_per_step": per_step,
        "steps": trainer.state.global_step,
    }
