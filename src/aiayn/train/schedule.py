"""§5.3 Optimizer: the learning-rate schedule.

    lrate = d_model^-0.5 · min(step_num^-0.5, step_num · warmup_steps^-1.5)        (Eq. 3)

"increasing the learning rate linearly for the first warmup_steps training steps, and
decreasing it thereafter proportionally to the inverse square root of the step number."
"""

from __future__ import annotations

import math


def paper_lr(step: int, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    """Eq. (3), times an optional scale factor (tensor2tensor's learning_rate multiplier)."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def inverse_sqrt_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """The same shape given by its peak: linear warm-up to peak_lr at warmup_steps, then
    peak_lr · sqrt(warmup_steps / step) (fairseq's inverse_sqrt)."""
    step = max(step, 1)
    return peak_lr * min(step / warmup_steps, math.sqrt(warmup_steps / step))


def cosine_lr(step: int, peak_lr: float, warmup_steps: int, progress: float, min_lr: float = 0.0) -> float:
    """Linear warm-up to peak_lr, then half a cosine down to min_lr at the end of the budget
    (`progress` in [0, 1]: the share of it spent; Loshchilov & Hutter 2017, as GPT-2/nanoGPT train)."""
    step = max(step, 1)
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def linear_lr(step: int, peak_lr: float, warmup_steps: int, progress: float, min_lr: float = 0.0) -> float:
    """Linear warm-up to peak_lr, then a straight line down to min_lr at the end of the budget: the
    linear schedule of Li, Yumer and Ramanan 2020 ("Budgeted Training: Rethinking Deep Neural Network
    Training Under Resource Constraints"), which lets the budget's last updates settle the weights."""
    step = max(step, 1)
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return min_lr + (peak_lr - min_lr) * (1.0 - min(max(progress, 0.0), 1.0))


BUDGETED = ("cosine", "linear")  # the schedules that end with the budget


def decay_progress(progress: float, decay_fraction: float) -> float:
    """The share of the decay done when `progress` of the budget is spent and the decay takes its last
    `decay_fraction`: 0 until then (the rate stays at its peak), 1 at the budget's end. With 1.0 the
    decay spans the whole budget after warm-up; with e.g. 0.2 the schedule is warm-up, a constant
    stretch, then a cool-down ("warmup-stable-decay"; Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations")."""
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
    return min(max((progress - (1.0 - decay_fraction)) / decay_fraction, 0.0), 1.0)


def learning_rate(
    step: int,
    *,
    schedule: str,
    d_model: int,
    warmup_steps: int,
    lr_scale: float = 1.0,
    peak_lr: float = 0.0,
    progress: float = 0.0,
    min_lr: float = 0.0,
    decay_fraction: float = 1.0,
) -> float:
    if schedule == "paper":
        if not d_model:
            raise ValueError("lr_schedule 'paper' is defined by d_model; this model has none: use inverse_sqrt or cosine with lr")
        return paper_lr(step, d_model, warmup_steps, lr_scale)
    if schedule == "inverse_sqrt":
        return inverse_sqrt_lr(step, peak_lr, warmup_steps)
    if schedule == "cosine":
        return cosine_lr(step, peak_lr, warmup_steps, decay_progress(progress, decay_fraction), min_lr)
    if schedule == "linear":
        return linear_lr(step, peak_lr, warmup_steps, decay_progress(progress, decay_fraction), min_lr)
    raise ValueError(f"unknown lr_schedule {schedule!r} (paper, inverse_sqrt, cosine or linear)")
