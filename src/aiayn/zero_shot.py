"""Using a CLIP: zero-shot classification (class names turned into captions by prompt templates,
their embeddings averaged, §3.1.4 of Radford et al. 2021), retrieval of images by text and of
captions by image, and their measures (zero-shot accuracy, recall@k) for `aiayn zero-shot`,
`aiayn retrieve`, `aiayn evaluate` and validation during training."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aiayn import runtime
from aiayn.data.image_text import encode_captions
from aiayn.data.images import to_tensor

DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}", "{}")


@dataclass
class DualEncoder:
    """A CLIP with its vocabulary, image format and (where its data had them) zero-shot classes and templates."""

    model: torch.nn.Module
    tokenizer: object
    spec: dict
    zero_shot: dict | None
    device: torch.device
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast), int8 (a quantized copy, CPU) or auto (runtime.inference_precision)

    def __post_init__(self):
        from aiayn.nn.int8 import for_precision

        self.model, self.precision = for_precision(self.model.to(self.device).eval(), self.precision, self.device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> "DualEncoder":
        from aiayn.data.text import lm_tokenizer_from_assets
        from aiayn.io.checkpoint import load_model

        where = runtime.device(device)
        model, ckpt = load_model(path, where, task="image-text", what="an image-text (CLIP) model")
        a = ckpt.assets
        zero_shot = json.loads(a["zero_shot"]) if a.get("zero_shot") else None
        return cls(model, lm_tokenizer_from_assets(a, str(ckpt.path)), json.loads(a["image"]), zero_shot, where, precision)

    @property
    def templates(self) -> list[str]:
        return list((self.zero_shot or {}).get("templates") or DEFAULT_TEMPLATES)

    @torch.no_grad()
    def encode_images(self, images: np.ndarray, batch: int = 256) -> Tensor:
        """uint8 [B, H, W, C] -> L2-normalised [B, d_embed] (on the CPU, fp32)."""
        out = []
        for start in range(0, len(images), batch):
            x = to_tensor(np.asarray(images[start : start + batch]), self.spec).to(self.device)
            with runtime.autocast(self.precision, self.device):
                out.append(self.model.image_features(x).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.d_embed)

    @torch.no_grad()
    def encode_tokens(self, tokens: np.ndarray, batch: int = 256) -> Tensor:
        from aiayn.tasks.image_text import caption_batch

        out = []
        for start in range(0, len(tokens), batch):
            ids = caption_batch(tokens[start : start + batch], self.tokenizer.pad_id).to(self.device)
            with runtime.autocast(self.precision, self.device):
                out.append(self.model.text_features(ids).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.d_embed)

    def encode_texts(self, texts: list[str], batch: int = 256) -> Tensor:
        """Captions -> L2-normalised [n, d_embed] (cut to the model's context)."""
        return self.encode_tokens(encode_captions(self.tokenizer, list(texts), self.model.config.context)[0], batch)

    def class_embeddings(self, labels: list[str], templates: list[str] | None = None) -> Tensor:
        """One vector per class name: the normalised mean of its captions' embeddings, one caption per
        template ("a photo of a {}."), as CLIP's prompt ensembling. [n_classes, d_embed]."""
        templates = list(templates or self.templates)
        if not labels:
            raise ValueError("zero-shot classification needs at least one label")
        if any("{}" not in t for t in templates):
            raise ValueError(f"every template must hold '{{}}' where the label goes: {templates}")
        texts = [t.format(label) for label in labels for t in templates]
        e = self.encode_texts(texts).view(len(labels), len(templates), -1).mean(1)
        return torch.nn.functional.normalize(e, dim=-1)

    def scale(self) -> float:
        return float(self.model.scale().detach())

    def classify(self, images: np.ndarray, labels: list[str], templates: list[str] | None = None) -> Tensor:
        """Zero-shot class probabilities [B, n_classes]: softmax over scale · cos(image, class)."""
        classes = self.class_embeddings(labels, templates)
        return (self.scale() * self.encode_images(images) @ classes.t()).softmax(-1)


def recall_at(similarity: Tensor, relevant: Tensor, k: int) -> float:
    """similarity [Q, N]; relevant [Q, N] bool -> % of queries with a relevant item in their top k."""
    top = similarity.topk(min(k, similarity.size(1)), dim=1).indices
    return float(relevant.gather(1, top).any(1).float().mean()) * 100.0 if len(similarity) else 0.0


@torch.no_grad()
def evaluate_split(model, split, spec: dict, tokenizer, zero_shot: dict | None, where, precision: str = "fp32", batch: int = 256) -> dict:
    """A split's contrastive loss (bits a pair, in batches of `batch` images with their first caption),
    recall@1/5/10 of its images from each caption and of its captions from each image, and, where the
    dataset has zero-shot classes, the accuracy of classifying its labelled images among all classes."""
    model.eval()
    enc = DualEncoder(model, tokenizer, spec, zero_shot, where, precision)
    images = enc.encode_images(split.images, batch)
    texts = enc.encode_tokens(split.tokens, batch)
    scale = enc.scale()
    firsts = texts[split.first_pair[:-1]]
    loss = 0.0
    for start in range(0, len(images), batch):
        logits = scale * images[start : start + batch] @ firsts[start : start + batch].t()
        target = torch.arange(logits.size(0))
        loss += (
            float(
                torch.nn.functional.cross_entropy(logits, target, reduction="sum")
                + torch.nn.functional.cross_entropy(logits.t(), target, reduction="sum")
            )
            / 2
        )
    pair_image = torch.from_numpy(np.asarray(split.pair_image, dtype=np.int64))
    similarity = texts @ images.t()  # [P, N]
    relevant = pair_image[:, None] == torch.arange(len(images))[None, :]
    result = {"valid_loss": loss / max(len(images), 1) / math.log(2)}
    for k in (1, 5, 10):
        result[f"valid_recall@{k}"] = recall_at(similarity, relevant, k)
    for k in (1, 5, 10):
        result[f"valid_image_recall@{k}"] = recall_at(similarity.t(), relevant.t(), k)
    if zero_shot and split.labels is not None and (split.labels >= 0).any():
        labelled = np.nonzero(split.labels >= 0)[0]
        classes = enc.class_embeddings(zero_shot["classes"], zero_shot.get("templates"))
        predicted = (images[labelled] @ classes.t()).argmax(1).numpy()
        result["valid_zero_shot_accuracy"] = float((predicted == split.labels[labelled]).mean()) * 100.0
    return result
