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
) -> float:
    if schedule == "paper":
        if not d_model:
            raise ValueError("lr_schedule 'paper' is defined by d_model; this model has none: use inverse_sqrt or cosine with lr")
        return paper_lr(step, d_model, warmup_steps, lr_scale)
    if schedule == "inverse_sqrt":
        return inverse_sqrt_lr(step, peak_lr, warmup_steps)
    if schedule == "cosine":
        return cosine_lr(step, peak_lr, warmup_steps, progress, min_lr)
    raise ValueError(f"unknown lr_schedule {schedule!r} (paper, inverse_sqrt or cosine)")
