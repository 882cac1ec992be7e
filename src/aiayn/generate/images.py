"""Drawing images from a class-conditional diffusion model (DiT): `aiayn sample`, the served
page's samples. DDIM (any number of steps, η) or DDPM (every step), classifier-free guidance,
a seed that fixes the draws, and the denoising trajectory (the model's estimate of the clean
image at each step) for showing how a sample forms."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aiayn import diffusion, runtime
from aiayn.nn.int8 import for_precision
from aiayn.tasks.image_generation import to_pixels


@dataclass
class ImageGenerator:
    """A DiT with its class names and image format (the checkpoint's assets). `precision` is the
    arithmetic of the model's calls: fp32, bf16 or fp16 (autocast), int8 (CPU: a quantized copy),
    or auto (`runtime.inference_precision`); the sampler's own updates stay in fp32."""

    model: torch.nn.Module
    classes: list[str]
    spec: dict
    device: torch.device
    precision: str = "fp32"

    def __post_init__(self):
        self.model, self.precision = for_precision(self.model.eval(), self.precision, self.device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> "ImageGenerator":
        from aiayn.io.checkpoint import load_model

        where = runtime.device(device)
        what = "an image generator (a DiT trained with 'aiayn train --config dit-tiny')"
        return cls.from_checkpoint(*load_model(path, where, task="image-generation", what=what), where, precision)

    @classmethod
    def from_checkpoint(cls, model: torch.nn.Module, ckpt, where: torch.device, precision: str = "fp32") -> "ImageGenerator":
        """The generator of a loaded DiT and its checkpoint (`io.checkpoint.load_model`), whose assets
        name the classes and the image format."""
        return cls(model, json.loads(ckpt.assets["classes"]), json.loads(ckpt.assets["image"]), where, precision)

    def class_index(self, name: str | int) -> int:
        """A class by its name (case-insensitive, first) or its index."""
        lowered, key = [c.lower() for c in self.classes], str(name).strip().lower()
        if key in lowered:
            return lowered.index(key)
        if key.isdigit():
            if int(key) >= len(self.classes):
                raise ValueError(
                    f"class index {key} is out of range: the model has {len(self.classes)} classes (0 … {len(self.classes) - 1})"
                )
            return int(key)
        raise ValueError(f"unknown class {name!r}; the model's classes: {', '.join(self.classes)}")

    @torch.no_grad()
    def sample(
        self,
        classes: list[int],
        steps: int = 50,
        guidance: float = 1.0,
        eta: float = 0.0,
        seed: int = 0,
        sampler: str = "ddim",
        batch: int = 250,
        trajectory: bool = False,
        guidance_interval: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """uint8 images [len(classes), H, W, C], one per requested class, and (with `trajectory`) the
        estimate of the clean images after each step, as uint8 arrays of the same shape.
        `guidance_interval` (σ_lo, σ_hi) guides only the steps whose noise-to-signal ratio lies in it
        (`diffusion.guided`)."""
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampler {sampler!r} (ddim or ddpm)")
        if guidance < 0:
            raise ValueError(f"guidance must be ≥ 0, got {guidance}")
        model, cfg = self.model, self.model.config
        schedule = model.noise_schedule()
        denoiser = diffusion.epsilon_predictor(model, schedule, cfg.prediction)
        generator = torch.Generator(self.device).manual_seed(seed)
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        images, frames = [], []
        for start in range(0, len(classes), batch):
            y = torch.tensor(classes[start : start + batch], dtype=torch.long, device=self.device)
            eps = diffusion.guided(denoiser, y, model.null_class, guidance, guidance_interval, schedule)
            steps_seen: list | None = [] if trajectory else None
            with runtime.autocast(self.precision, self.device):  # (the samplers take ε̂ in fp32 for their own updates)
                if sampler == "ddim":
                    x = diffusion.ddim_sample(eps, schedule, (len(y), *shape), steps, eta, generator, self.device, steps_seen, clip=1.0)
                else:
                    x = diffusion.ddpm_sample(eps, schedule, (len(y), *shape), generator, self.device, clip=1.0)
            images.append(to_pixels(x))
            if trajectory:
                frames.append([to_pixels(f) for f in steps_seen])
        out = np.concatenate(images) if images else np.zeros((0, *shape[1:], shape[0]), np.uint8)
        steps_out = [np.concatenate([f[i] for f in frames]) for i in range(len(frames[0]))] if trajectory and frames else []
        return out, steps_out


def grid(images: np.ndarray, columns: int, pad: int = 2, scale: int = 1):
    """uint8 [N, H, W, C] -> one PIL image of the N images in rows of `columns`, on white."""
    from PIL import Image

    n, h, w, c = images.shape
    rows = max(1, -(-n // columns))
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, columns)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = image
    picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST) if scale > 1 else picture
