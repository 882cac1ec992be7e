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


def learning_rate(step: int, *, schedule: str, d_model: int, warmup_steps: int, lr_scale: float = 1.0, peak_lr: float = 0.0) -> float:
    if schedule == "paper":
        return paper_lr(step, d_model, warmup_steps, lr_scale)
    if schedule == "inverse_sqrt":
        return inverse_sqrt_lr(step, peak_lr, warmup_steps)
    raise ValueError(f"unknown lr_schedule {schedule!r} (paper or inverse_sqrt)")
