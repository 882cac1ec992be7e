"""Contrastive image-text training (CLIP): batches of images with one of their captions, the
symmetric contrastive loss over the whole (global) batch, validation by zero-shot accuracy or
recall, and the image format and vocabulary that travel with the model as its assets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn import models
from aiayn.data.binarize import load_meta
from aiayn.data.image_text import ImageTextSplit, image_text_spec_id
from aiayn.data.images import to_tensor
from aiayn.data.text import lm_tokenizer_assets, lm_tokenizer_from_assets
from aiayn.data.tokenizer import Tokenizer
from aiayn.tasks.images import ImageSampler
from aiayn.train.distributed import all_gather_with_grad


@dataclass
class ImageTextBatch:
    images: Tensor  # [B, C, H, W], normalised
    captions: Tensor  # [B, L] token ids: start, caption, end-of-text, padding

    def to(self, device, non_blocking: bool = False) -> "ImageTextBatch":
        return ImageTextBatch(self.images.to(device, non_blocking=non_blocking), self.captions.to(device, non_blocking=non_blocking))

    @property
    def inputs(self) -> tuple[Tensor, Tensor]:
        return self.images, self.captions

    @property
    def loss_tokens(self) -> int:  # pairs: the loss is a sum over them
        return self.images.size(0)

    @property
    def tokens(self) -> int:  # pairs, for throughput
        return self.images.size(0)


def contrastive_loss(image_features: Tensor, text_features: Tensor, scale: Tensor) -> Tensor:
    """CLIP's symmetric loss (Radford et al. 2021, Figure 3), summed over this process's pairs:
    for each image, the cross-entropy of picking its own caption among all captions of the batch,
    and for each caption its own image among all images, averaged. Features are L2-normalised
    [b, d]; under DDP both sides are first gathered from every process (gradients flowing back),
    so the negatives span the global batch and the sum over processes is the whole batch's loss."""
    all_images, offset = all_gather_with_grad(image_features)
    all_texts, _ = all_gather_with_grad(text_features)
    targets = torch.arange(image_features.size(0), device=image_features.device) + offset
    per_image = scale * image_features @ all_texts.t()  # [b, N]
    per_text = scale * text_features @ all_images.t()  # [b, N]
    loss = F.cross_entropy(per_image.float(), targets, reduction="sum") + F.cross_entropy(per_text.float(), targets, reduction="sum")
    return loss / 2


class LossModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        loss = contrastive_loss(self.model.image_features(images), self.model.text_features(tokens), self.model.scale())
        return loss, loss.detach()


class ImageTextTask:
    """A dataset from 'aiayn prepare --task image-text' and what training needs of it."""

    name = "image-text"
    unit = "pairs"
    fine_tune_keys = ("dropout",)

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir)
        self.spec, self.context = self.meta["image"], int(self.meta["context"])
        self.tokenizer = Tokenizer.from_file(self.data_dir / self.meta["vocab"]["file"])
        self.vocab_id = image_text_spec_id(self.spec, self.tokenizer.sha256, self.context)
        self.train_data = ImageTextSplit(self.data_dir, "train")
        self.valid_data = ImageTextSplit(self.data_dir, "valid") if "valid" in self.meta["splits"] else None
        self.zero_shot = self.meta.get("zero_shot")
        labelled = self.zero_shot and self.valid_data is not None and self.valid_data.labels is not None
        self.metric_name = "valid_zero_shot_accuracy" if labelled else "valid_recall@5"

    def describe(self) -> str:
        s = self.spec
        return f"{len(self.train_data)} images of {s['width']}×{s['height']}×{s['channels']} with {len(self.train_data.tokens)} captions"

    def model_config(self, values: dict):
        values = dict(values)
        preset = values.pop("preset", "clip-tiny")
        s, tok = self.spec, self.tokenizer
        if s["height"] != s["width"]:
            raise ValueError(f"{self.data_dir}: the images are {s['width']}×{s['height']}; CLIP's ViT takes square images")
        return models.preset_config(
            preset,
            image_size=s["height"],
            in_channels=s["channels"],
            vocab_size=tok.vocab_size,
            context=self.context,
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            **values,
        )

    def check_compatible(self, ckpt, what: str) -> None:
        from aiayn.io.checkpoint import CheckpointError

        a = ckpt.assets
        same = (
            ckpt.task == self.name
            and image_text_spec_id(
                json.loads(a.get("image", "{}")), lm_tokenizer_from_assets(a, str(ckpt.path)).sha256, ckpt.config.context
            )
            == self.vocab_id
        )
        if not same:
            raise CheckpointError(
                f"{what} {ckpt.path}: its image format, vocabulary or context differ from the dataset's ({self.data_dir})"
            )

    def assets(self) -> dict[str, str]:
        assets = {"image": json.dumps(self.spec), **lm_tokenizer_assets(self.tokenizer)}
        if self.zero_shot:
            assets["zero_shot"] = json.dumps(self.zero_shot, ensure_ascii=False)
        return assets

    # ----- batches: max_sentences images a batch (default 256), each with one of its captions
    def sampler(self, model: nn.Module, cfg, rank: int = 0, world_size: int = 1) -> ImageSampler:
        return ImageSampler(len(self.train_data), cfg.max_sentences or 256, cfg.seed, rank, world_size)

    def batches(self, sampler: ImageSampler, model: nn.Module, num_workers: int = 0, pin_memory: bool = False):
        data = self.train_data
        for i, idx in sampler:
            idx = np.sort(idx)
            rng = np.random.default_rng([sampler.seed, sampler.epoch, i, sampler.rank])
            first, n = data.first_pair[idx], np.diff(data.first_pair)[idx]
            pairs = first + (rng.random(len(idx)) * n).astype(np.int64)  # one caption of each image
            yield ImageTextBatch(to_tensor(data.images[idx], self.spec), caption_batch(data.tokens[pairs], model.config.pad_id))

    def loss_model(self, model: nn.Module, label_smoothing: float) -> nn.Module:
        return LossModel(model)

    @torch.no_grad()
    def validate(self, model: nn.Module, cfg, where: torch.device, precision: str) -> dict:
        from aiayn.zero_shot import evaluate_split

        result = evaluate_split(model, self.valid_data, self.spec, self.tokenizer, self.zero_shot, where, precision)
        return {k: v for k, v in result.items() if k.startswith("valid_")}


def caption_batch(tokens: np.ndarray, pad_id: int) -> Tensor:
    """[B, context] token rows -> [B, L], cut after the longest caption's end-of-text."""
    tokens = np.asarray(tokens)
    used = (tokens != pad_id).any(0)
    length = int(np.nonzero(used)[0].max()) + 1 if used.any() else 1
    return torch.from_numpy(tokens[:, :length].astype(np.int64))
