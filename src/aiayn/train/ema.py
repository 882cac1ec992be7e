"""An exponential moving average of a model's weights (Polyak averaging as diffusion models and
DiT keep it): after every update, θ_ema ← d θ_ema + (1 − d) θ, with the decay warmed up as
d_n = min(d, (1 + n) / (10 + n)) at update n, so that a short run's average is not dominated by its
random start. Buffers are copied. The average is what a run's checkpoints hold and what
sampling uses; the trained weights travel in the training state for resuming."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards `model`'s weights after update `step` (1, 2, ...)."""
        d = self.decay_at(step)
        averaged, current = list(self.model.parameters()), list(model.parameters())
        torch._foreach_lerp_(averaged, current, 1.0 - d)  # θ_ema + (1 − d)(θ − θ_ema)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)
