"""Image classification (ViT): shuffled batches of images with seeded augmentation (a random crop
of the zero-padded image; a horizontal flip if the config's random_flip asks for it, for null
where the dataset allows it), the label-smoothed cross-entropy, validation by loss and accuracy,
and the class names and image normalisation that travel with the model as its assets."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from aiayn import models, runtime
from aiayn.data.binarize import load_meta
from aiayn.data.images import ImageSplit, image_spec_id, to_tensor
from aiayn.train.loss import label_smoothed_nll


@dataclass
class ImageBatch:
    images: Tensor  # [B, C, H, W], normalised
    labels: Tensor  # [B]

    def to(self, device, non_blocking: bool = False) -> "ImageBatch":
        return ImageBatch(self.images.to(device, non_blocking=non_blocking), self.labels.to(device, non_blocking=non_blocking))

    @property
    def inputs(self) -> tuple[Tensor, Tensor]:
        return self.images, self.labels

    @property
    def loss_tokens(self) -> int:
        return self.labels.numel()

    @property
    def tokens(self) -> int:  # images, for throughput
        return self.labels.numel()


class ImageSampler:
    """Batches of image indices: a seeded permutation per epoch (every image once), each rank
    taking its share of every batch-sized group; deterministic from (seed, epoch, position)."""

    def __init__(
        self,
        n: int,
        batch: int,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
        crop_padding: int = -1,
        random_flip: bool | None = None,
    ):
        if n < batch * world_size:
            batch = max(1, n // world_size)
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world_size
        self.crop_padding = crop_padding  # how the classification task augments the batches (-1: its default)
        self.random_flip = random_flip  # whether the tasks mirror a random half of the images (None: the dataset's say)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.start = epoch, position

    def __len__(self) -> int:
        return self.n // (self.batch * self.world)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        step = self.batch * self.world
        for i in range(self.start, self.n // step):
            group = order[i * step : (i + 1) * step]
            yield i, group[self.rank * self.batch : (self.rank + 1) * self.batch]


def crop_padding(spec: dict, setting: int = -1) -> int:
    """Pixels of zero padding around an image before its random crop: `setting` (the config's
    crop_padding), or for -1 a seventh of the height (4 of 28, 1 of 8; CIFAR's 4 of 32)."""
    return max(1, spec["height"] // 7) if setting < 0 else setting


def flips(spec: dict, setting: bool | None = None) -> bool:
    """Whether training mirrors a random half of the images: `setting` (the config's random_flip), or
    for None what the dataset allows (prepare's `flip`)."""
    return spec["flip"] if setting is None else setting


def augment(images: np.ndarray, rng: np.random.Generator, pad: int, flip: bool) -> np.ndarray:
    """A random crop of each zero-padded image (its size kept) and, with flip, a coin-flip mirror."""
    B, H, W, C = images.shape
    padded = np.zeros((B, H + 2 * pad, W + 2 * pad, C), dtype=images.dtype)
    padded[:, pad : pad + H, pad : pad + W] = images
    dy, dx = rng.integers(0, 2 * pad + 1, size=B), rng.integers(0, 2 * pad + 1, size=B)
    out = np.stack([padded[b, dy[b] : dy[b] + H, dx[b] : dx[b] + W] for b in range(B)])
    if flip:
        mirror = rng.random(B) < 0.5
        out[mirror] = out[mirror, :, ::-1]
    return out


class LossModel(nn.Module):
    def __init__(self, model: nn.Module, label_smoothing: float):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return label_smoothed_nll(self.model(images), labels.long(), self.label_smoothing)


class LabelledImagesTask:
    """What every task on a dataset from 'aiayn prepare --task images' shares: its splits, class
    names and image format (the assets), square-image model configs, shuffled batches of images."""

    name = "images"
    unit = "images"
    default_preset = "vit-tiny"

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir)
        if self.meta.get("task") != "images":
            raise ValueError(
                f"{self.data_dir}: not a labelled image dataset ('aiayn prepare --task images') but {self.meta.get('task')!r} data"
            )
        self.classes, self.spec = self.meta["classes"], self.meta["image"]
        self.vocab_id = image_spec_id(self.classes, self.spec)
        self.train_data = ImageSplit(self.data_dir, "train")
        self.valid_data = ImageSplit(self.data_dir, "valid") if "valid" in self.meta["splits"] else None

    def describe(self) -> str:
        s = self.spec
        return f"{len(self.train_data)} images of {s['width']}×{s['height']}×{s['channels']}, {len(self.classes)} classes"

    def model_config(self, values: dict):
        values = dict(values)
        preset = values.pop("preset", self.default_preset)
        s = self.spec
        if s["height"] != s["width"]:
            raise ValueError(
                f"{self.data_dir}: the images are {s['width']}×{s['height']}; the model takes square images (prepare with --image-size)"
            )
        return models.preset_config(preset, image_size=s["height"], in_channels=s["channels"], n_classes=len(self.classes), **values)

    def check_compatible(self, ckpt, what: str) -> None:
        from aiayn.io.checkpoint import CheckpointError

        assets = ckpt.assets
        if (
            ckpt.task != self.name
            or image_spec_id(json.loads(assets.get("classes", "[]")), json.loads(assets.get("image", "{}"))) != self.vocab_id
        ):
            raise CheckpointError(f"{what} {ckpt.path}: its classes or image format differ from the dataset's ({self.data_dir})")

    def assets(self) -> dict[str, str]:
        return {"classes": json.dumps(self.classes, ensure_ascii=False), "image": json.dumps(self.spec)}

    # ----- batches: max_sentences images a batch (default 128)
    def sampler(self, model: nn.Module, cfg, rank: int = 0, world_size: int = 1) -> ImageSampler:
        return ImageSampler(len(self.train_data), cfg.max_sentences or 128, cfg.seed, rank, world_size, cfg.crop_padding, cfg.random_flip)


class ImageClassificationTask(LabelledImagesTask):
    """A dataset from 'aiayn prepare --task images' and what training a classifier needs of it."""

    metric_name = "valid_accuracy"
    fine_tune_keys = ("dropout", "attn_dropout", "drop_path")

    def __init__(self, data_dir: str | Path):
        super().__init__(data_dir)
        self.augmentation = True

    def batches(self, sampler: ImageSampler, model: nn.Module, num_workers: int = 0, pin_memory: bool = False):
        data, spec = self.train_data, self.spec
        pad = crop_padding(spec, sampler.crop_padding)
        for i, idx in sampler:
            images = data.images[np.sort(idx)] if len(idx) else data.images[:0]
            labels = data.labels[np.sort(idx)]
            if self.augmentation:
                rng = np.random.default_rng([sampler.seed, sampler.epoch, i, sampler.rank])
                images = augment(np.asarray(images), rng, pad, flips(spec, sampler.random_flip))
            yield ImageBatch(to_tensor(images, spec), torch.from_numpy(labels.astype(np.int64)))

    def loss_model(self, model: nn.Module, label_smoothing: float) -> nn.Module:
        return LossModel(model, label_smoothing)

    @torch.no_grad()
    def validate(self, model: nn.Module, cfg, where: torch.device, precision: str) -> dict:
        result = evaluate_split(model, self.valid_data, self.spec, where, precision, label_smoothing=cfg.label_smoothing)
        return {k: v for k, v in result.items() if k != "confusion"}


@torch.no_grad()
def evaluate_split(
    model, split: ImageSplit, spec: dict, where, precision: str = "fp32", batch: int = 256, label_smoothing: float = 0.0
) -> dict:
    """Loss (bits), accuracy and the confusion matrix (rows: true class, columns: predicted) of a split."""
    model.eval()
    n_classes = model.config.n_classes
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    loss = nll = 0.0
    loss_model = LossModel(model, label_smoothing)
    for start in range(0, len(split), batch):
        x = to_tensor(np.asarray(split.images[start : start + batch]), spec).to(where)
        y = torch.from_numpy(split.labels[start : start + batch].astype(np.int64)).to(where)
        with runtime.autocast(precision, where):
            logits = model(x)
        total, total_nll = label_smoothed_nll(logits.float(), y, loss_model.label_smoothing)
        loss, nll = loss + total.item(), nll + total_nll.item()
        np.add.at(confusion, (y.cpu().numpy(), logits.argmax(-1).cpu().numpy()), 1)
    n = max(len(split), 1)
    return {
        "valid_loss": loss / n / math.log(2),
        "valid_nll": nll / n / math.log(2),
        "valid_accuracy": float(np.trace(confusion)) / n * 100.0,
        "confusion": confusion,
    }
