"""Class-conditional image generation (DiT): the labelled image datasets of 'aiayn prepare --task
images', pixels scaled to [−1, 1], a random horizontal flip if the config's random_flip asks for
it (null: where the dataset allows it); each image gets a noise level t (uniform over the steps,
or, as the model's config asks, log-normal in the noise-to-signal ratio: Karras et al. 2022,
Esser et al. 2024), Gaussian noise ε and, with probability class_dropout, the null class in place
of its label (classifier-free guidance, Ho & Salimans 2022), all drawn from a generator seeded by
(seed, epoch, batch, rank), so a resumed run sees the same draws. The loss is DDPM's simple
objective ‖ε − ε_θ(x_t, t, y)‖² (Ho et al. 2020, Eq. 14), or ‖v − v_θ‖² for a v-predicting model
(Salimans & Ho 2022), the mean over pixels summed over images, optionally weighted by Min-SNR-γ
(Hang et al. 2023, so the nearly clean steps, easy and many, do not dominate); validation
measures the plain MSE of the model's target on the valid split at fixed draws, with uniform steps
for every run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from aiayn import diffusion, runtime
from aiayn.data.images import ImageSplit
from aiayn.tasks.images import ImageSampler, LabelledImagesTask, flips


def to_unit_range(images: np.ndarray) -> Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [−1, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def to_pixels(x: Tensor) -> np.ndarray:
    """float [B, C, H, W] in [−1, 1] -> uint8 [B, H, W, C] (clipped)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass
class NoisyBatch:
    images: Tensor  # [B, C, H, W] in [−1, 1]
    labels: Tensor  # [B]: a class, or the null class
    t: Tensor  # [B] noise levels
    noise: Tensor  # [B, C, H, W]

    def to(self, device, non_blocking: bool = False) -> "NoisyBatch":
        return NoisyBatch(*(x.to(device, non_blocking=non_blocking) for x in (self.images, self.labels, self.t, self.noise)))

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return self.images, self.labels, self.t, self.noise

    @property
    def loss_tokens(self) -> int:  # the loss is normalised per image
        return self.labels.numel()

    @property
    def tokens(self) -> int:  # images, for throughput
        return self.labels.numel()


def draws(
    schedule: diffusion.NoiseSchedule,
    n: int,
    shape: tuple,
    class_dropout: float,
    generator: torch.Generator,
    log_normal: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(t [n], ε [n, *shape], which labels to drop [n]) from one generator; t uniform over the
    schedule's steps, or log-normal in σ_t (diffusion.training_noise_levels)."""
    t = diffusion.training_noise_levels(schedule, n, generator, log_normal)
    noise = torch.randn((n, *shape), generator=generator)
    drop = torch.rand(n, generator=generator) < class_dropout
    return t, noise, drop


class DenoisingLoss(nn.Module):
    """(x_0, y, t, ε) -> (Σ_images w_t · mean_pixels (target − f_θ(x_t, t, y))², the unweighted sum
    detached), the target ε or, for a v-predicting model, v = √ᾱ_t ε − √(1 − ᾱ_t) x_0; Min-SNR-γ's
    w_t is min(SNR_t, γ)/SNR_t for ε and min(SNR_t, γ)/(SNR_t + 1) for v (Hang et al. 2023)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.predicts_v = model.config.prediction == "v"
        ab = model.noise_schedule().alphas_cumprod
        gamma = model.config.min_snr_gamma
        snr = ab / (1 - ab)
        weights = (snr.clamp(max=gamma) / (snr + 1 if self.predicts_v else snr)) if gamma else torch.ones_like(ab)
        self.register_buffer("alphas_cumprod", ab.float(), persistent=False)
        self.register_buffer("weights", weights.float(), persistent=False)

    def forward(self, images: Tensor, labels: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = ab.sqrt() * images + (1 - ab).sqrt() * noise  # Eq. (4)
        predicted = self.model(noisy, t, labels)
        target = diffusion.velocity(images, noise, ab) if self.predicts_v else noise
        mse = (predicted.float() - target).pow(2).flatten(1).mean(1)
        return (self.weights[t] * mse).sum(), mse.detach().sum()  # (the weighted loss, the plain MSE)


class ImageGenerationTask(LabelledImagesTask):
    """A labelled image dataset from 'aiayn prepare --task images', for a class-conditional DiT."""

    name = "image-generation"
    default_preset = "dit-tiny"
    metric_name = None  # the best checkpoint has the lowest valid loss
    loss_in_bits = False  # an MSE
    fine_tune_keys = ("class_dropout", "min_snr_gamma", "noise_levels", "log_sigma_mean", "log_sigma_std")
    # `compile: true` compiles the whole denoiser (every batch has one shape): dit-tiny, bf16, batches of 16, ran
    # 1.41–1.61× eager's updates/s (separate runs in turn, 500 updates, the second half; 2-core Zen 4); with its
    # blocks alone compiled (dynamic shapes), a forward and backward took 0.97× eager's time
    compile_whole_model = True

    def batches(self, sampler: ImageSampler, model: nn.Module, num_workers: int = 0, pin_memory: bool = False):
        data, spec, config = self.train_data, self.spec, model.config
        shape, flip = (spec["channels"], spec["height"], spec["width"]), flips(spec, sampler.random_flip)
        schedule = model.noise_schedule()
        for i, idx in sampler:
            idx = np.sort(idx)
            images, labels = np.asarray(data.images[idx]), torch.from_numpy(data.labels[idx].astype(np.int64))
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([sampler.seed, sampler.epoch, i, sampler.rank]).generate_state(1)[0])
            )
            t, noise, drop = draws(schedule, len(idx), shape, config.class_dropout, generator, model.training_log_normal)
            x = to_unit_range(images)
            if flip:
                mirror = torch.rand(len(idx), generator=generator) < 0.5
                x[mirror] = x[mirror].flip(-1)
            yield NoisyBatch(x, labels.masked_fill(drop, config.n_classes), t, noise)

    def loss_model(self, model: nn.Module, label_smoothing: float) -> nn.Module:
        return DenoisingLoss(model)

    @torch.no_grad()
    def validate(self, model: nn.Module, cfg, where: torch.device, precision: str) -> dict:
        return {"valid_loss": denoising_loss(model, self.valid_data, where, precision, seed=cfg.seed)}


@torch.no_grad()
def denoising_loss(model, split: ImageSplit, where, precision: str = "fp32", batch: int = 500, seed: int = 0, limit: int = 5000) -> float:
    """The mean denoising MSE of (the first `limit` images of) a split, conditional, at draws fixed by `seed`
    (steps uniform, whatever the training draws: the same measure for every run)."""
    model.eval()
    schedule = model.noise_schedule()
    loss_model = DenoisingLoss(model).to(where)
    generator = torch.Generator().manual_seed(seed)
    n = min(len(split), limit)
    total = 0.0
    for start in range(0, n, batch):
        images = to_unit_range(np.asarray(split.images[start : min(start + batch, n)]))
        labels = torch.from_numpy(split.labels[start : start + len(images)].astype(np.int64))
        t, noise, _ = draws(schedule, len(images), tuple(images.shape[1:]), 0.0, generator)
        with runtime.autocast(precision, where):
            _, mse = loss_model(images.to(where), labels.to(where), t.to(where), noise.to(where))
        total += mse.item()
    return total / max(n, 1)
