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


def _precisions(text: str) -> list[str]:
    import argparse

    chosen = text.split(",")
    if not chosen or any(p not in ("fp32", "bf16") for p in chosen):
        raise argparse.ArgumentTypeError(f"{text!r}: expected fp32, bf16 or fp32,bf16")
    return chosen


def add_precision_options(parser) -> None:
    """--precision (aiayn's) and --hf-precision (Hugging Face's runs), for the benchmarks that train both."""
    parser.add_argument("--precision", default="auto", help="aiayn's training precision (default auto: bf16 where the CPU has bf16 units)")
    parser.add_argument(
        "--hf-precision",
        type=_precisions,
        default=None,
        help="Hugging Face's runs, comma-separated (default fp32, and bf16 too where the CPU has bf16 units)",
    )


def hf_precisions(args) -> list[str]:
    """Hugging Face's runs: fp32, its default, and bf16 autocast (`bf16=True`) too where the CPU has
    bf16 units, since aiayn trains in bf16 there; the speed ratios are taken against the faster run."""
    if args.hf_precision is not None:
        return args.hf_precision
    from aiayn.runtime import cpu_has_bf16

    return ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]


def hf_system(precision: str) -> str:
    """The name of a Hugging Face run in the tables: "hf" in fp32, "hf-bf16" in bf16."""
    return "hf" if precision == "fp32" else f"hf-{precision}"


def ratio_against_fastest(rows: dict, key: str) -> tuple[float, str] | None:
    """aiayn's figure `key` over the best Hugging Face row's ("hf", "hf-bf16", ...), and that row's
    name; None where no Hugging Face row ran."""
    peers = [name for name in rows if name.startswith("hf")]
    if not peers:
        return None
    fastest = max(peers, key=lambda name: rows[name][key])
    return rows["aiayn"][key] / rows[fastest][key], fastest
