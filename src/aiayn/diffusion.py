"""Denoising diffusion: the forward process, its training target and the samplers, for any
ε-predicting model (models/dit.py's DiT; a v-predicting one through `epsilon_predictor`).

- DDPM (Ho et al. 2020): q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) with ᾱ_t = ∏_{s≤t} (1 − β_s),
  Eq. (4); the simple loss ‖ε − ε_θ(x_t, t)‖², Eq. (14); ancestral sampling with σ_t² = β̃_t.
- Schedules: linear β from 1e-4 to 0.02 over 1,000 steps (Ho et al.), cosine ᾱ (Nichol &
  Dhariwal 2021, Eq. (17), β clipped at 0.999).
- DDIM (Song et al. 2021, Eq. (12)) on any subsequence of the steps, η from 0 (deterministic) to 1
  (DDPM's variance: with every step, the same chain as DDPM).
- Classifier-free guidance (Ho & Salimans 2022): ε̂ = ε_∅ + w (ε_y − ε_∅), both in one batch,
  optionally within an interval of noise levels (Kynkäänniemi et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class NoiseSchedule:
    betas: Tensor  # [T] float64

    @classmethod
    def make(cls, kind: str = "linear", steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        if steps < 1:
            raise ValueError(f"a schedule needs at least one step, got {steps}")
        if kind == "linear":  # Ho et al.'s values are for 1,000 steps; scaled for others as improved DDPM does
            scale = 1000.0 / steps
            return cls(torch.linspace(beta_start * scale, beta_end * scale, steps, dtype=torch.float64))
        if kind == "cosine":
            s = 0.008
            f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
            return cls((1 - f[1:] / f[:-1]).clamp(max=0.999))
        raise ValueError(f"unknown noise schedule {kind!r} (linear or cosine)")

    @property
    def steps(self) -> int:
        return self.betas.numel()

    @property
    def alphas_cumprod(self) -> Tensor:  # ᾱ_t
        return torch.cumprod(1 - self.betas, dim=0)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Eq. 4), one t per row."""
        ab = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def noise_to_signal(schedule: NoiseSchedule) -> Tensor:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) for every step t: [T], increasing."""
    ab = schedule.alphas_cumprod
    return ((1 - ab) / ab).sqrt()


def training_noise_levels(
    schedule: NoiseSchedule, n: int, generator: torch.Generator, log_normal: tuple[float, float] | None = None
) -> Tensor:
    """n steps t to train at: uniform over the schedule's steps (DDPM), or, with `log_normal` (m, s),
    ln σ_t ~ N(m, s), each draw taken to the step of the nearest ln σ_t. This is the log-normal
    noise levels of Karras et al. 2022 (EDM) and, with σ the noise-to-signal ratio, the
    logit-normal of Esser et al. 2024 (m = 0, s = 1). Under the linear schedule, uniform steps put
    60% of the draws above σ = 2.0 (t ≥ 400), where the image is mostly noise; N(0, 1) puts 24% there."""
    if log_normal is None:
        return torch.randint(0, schedule.steps, (n,), generator=generator)
    mean, std = log_normal
    log_sigma = noise_to_signal(schedule).log().float()
    drawn = mean + std * torch.randn(n, generator=generator)
    above = torch.searchsorted(log_sigma, drawn).clamp(1, schedule.steps - 1)  # the first step at or above each draw
    nearer_below = (drawn - log_sigma[above - 1]) < (log_sigma[above] - drawn)
    return (above - nearer_below.long()).clamp(0, schedule.steps - 1)


EpsilonModel = Callable[[Tensor, Tensor], Tensor]  # (x_t, t [B]) -> ε̂
PREDICTIONS = ("epsilon", "v")


def velocity(x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4): the v-prediction target."""
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def epsilon_predictor(model: Callable[[Tensor, Tensor, Tensor], Tensor], schedule: NoiseSchedule, prediction: str):
    """(x_t, t, y) -> ε̂ for a model that predicts `prediction`: the model itself for ε, and for v,
    ε̂ = √ᾱ_t v̂ + √(1 − ᾱ_t) x_t. The map is affine in the prediction with x_t's weight the same for
    every class, so guidance on ε̂ is guidance on v̂."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r} ({' or '.join(PREDICTIONS)})")
    if prediction == "epsilon":
        return model
    alphas_cumprod = schedule.alphas_cumprod.float()

    def eps(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        ab = alphas_cumprod.to(x.device)[t].view(-1, *([1] * (x.dim() - 1)))
        return ab.sqrt() * model(x, t, y).float() + (1 - ab).sqrt() * x.float()

    return eps


def check_guidance_interval(interval: tuple[float, float]) -> None:
    """Refuses an empty or negative interval of noise-to-signal ratios: (low, high] needs 0 ≤ low < high."""
    low, high = interval
    if not 0 <= low < high:
        raise ValueError(f"a guidance interval needs 0 ≤ LOW < HIGH, got ({low}, {high})")


def guided_steps(schedule: NoiseSchedule, interval: tuple[float, float]) -> list[bool]:
    """For each step t of `schedule`, whether its noise-to-signal ratio σ_t = √((1 − ᾱ_t)/ᾱ_t) lies in
    `interval` (σ_lo, σ_hi]."""
    check_guidance_interval(interval)
    sigma = noise_to_signal(schedule)
    return ((sigma > interval[0]) & (sigma <= interval[1])).tolist()


def guided(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    y: Tensor,
    null_class: int,
    scale: float,
    interval: tuple[float, float] | None = None,
    schedule: NoiseSchedule | None = None,
) -> EpsilonModel:
    """Classifier-free guidance: ε_∅ + scale · (ε_y − ε_∅), the two in one batch (scale 1: the conditional
    model alone). `interval` (σ_lo, σ_hi), in the noise-to-signal ratio σ_t = √((1 − ᾱ_t)/ᾱ_t) of
    `schedule`, limits guidance to the steps with σ_lo < σ_t ≤ σ_hi and takes the conditional model
    alone elsewhere (Kynkäänniemi et al. 2024: guidance at high noise levels costs the samples their
    variety, and at low ones does little)."""
    if interval is not None and schedule is None:
        raise ValueError("a guidance interval needs the noise schedule")
    guide_at = guided_steps(schedule, interval) if interval is not None else None

    def eps(x: Tensor, t: Tensor) -> Tensor:
        if scale == 1.0 or (guide_at is not None and not guide_at[int(t[0])]):  # (a sampler's steps give every row one t)
            return model(x, t, y)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return eps


@torch.no_grad()
def ddim_sample(
    eps: EpsilonModel,
    schedule: NoiseSchedule,
    shape: tuple,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
    trajectory: list | None = None,
    clip: float | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) over `steps` evenly spaced noise levels, from pure noise:
    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z, σ = η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}).
    `trajectory`, when given, receives x̂_0 at each step (the denoising as it goes). `clip` bounds x̂_0
    to [−clip, clip] (the data's range; ε̂ re-derived from it), as pixel-space samplers do."""
    T = schedule.steps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1 … {T}, got {steps}")
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    ab = schedule.alphas_cumprod
    times = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long().unique_consecutive().tolist()
    x = torch.randn(shape, generator=generator, device=device)
    for i, t in enumerate(times):
        prev = times[i + 1] if i + 1 < len(times) else -1
        a_t, a_prev = ab[t].item(), (ab[prev].item() if prev >= 0 else 1.0)
        e = eps(x, torch.full((shape[0],), t, device=x.device, dtype=torch.long)).float()
        x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            e = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        if trajectory is not None:
            trajectory.append(x0)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_prev, 0.0))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * e
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=device)
    return x


@torch.no_grad()
def ddpm_sample(
    eps: EpsilonModel,
    schedule: NoiseSchedule,
    shape: tuple,
    generator: torch.Generator | None = None,
    device=None,
    clip: float | None = None,
) -> Tensor:
    """DDPM's ancestral sampling (Ho et al. 2020, Algorithm 2) through every step, σ_t² = β̃_t:
    x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t z, with μ̃_t = (√ᾱ_{t−1} β_t x̂_0 + √α_t (1 − ᾱ_{t−1}) x_t) / (1 − ᾱ_t);
    `clip` bounds x̂_0 as in ddim_sample."""
    betas, ab = schedule.betas, schedule.alphas_cumprod
    x = torch.randn(shape, generator=generator, device=device)
    for t in range(schedule.steps - 1, -1, -1):
        a_t, a_prev, beta = ab[t].item(), (ab[t - 1].item() if t > 0 else 1.0), betas[t].item()
        e = eps(x, torch.full((shape[0],), t, device=x.device, dtype=torch.long)).float()
        x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        mean = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x) / (1 - a_t)
        x = mean
        if t > 0:
            x = x + math.sqrt(beta * (1 - a_prev) / (1 - a_t)) * torch.randn(shape, generator=generator, device=device)
    return x
