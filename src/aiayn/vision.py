"""Using an image classifier: classify image files, draw attention rollout over an image, and
draw a confusion matrix (`aiayn classify`, `aiayn attention --image`, `aiayn evaluate --data`), and
the Fréchet distance between two sets of image features (generated against real images)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Classifier:
    """A ViT with its class names and image format (the checkpoint's assets), run in `precision`:
    fp32, bf16 or fp16 (autocast), int8 (a quantized copy, CPU) or auto (as decoding chooses:
    runtime.inference_precision)."""

    model: torch.nn.Module
    classes: list[str]
    spec: dict
    device: torch.device
    precision: str = "fp32"

    def __post_init__(self):
        from aiayn.nn.int8 import for_precision

        self.model, self.precision = for_precision(self.model.to(self.device).eval(), self.precision, self.device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> "Classifier":
        from aiayn import runtime
        from aiayn.io.checkpoint import load_model

        where = runtime.device(device)
        model, ckpt = load_model(path, where, task="images", what="an image classifier")
        return cls(model, json.loads(ckpt.assets["classes"]), json.loads(ckpt.assets["image"]), where, precision)

    @torch.no_grad()
    def logits(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, C] -> class logits [B, n_classes] (float32)."""
        from aiayn import runtime
        from aiayn.data.images import to_tensor

        with runtime.autocast(self.precision, self.device):
            return self.model(to_tensor(images, self.spec).to(self.device)).float()

    def probabilities(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, C] -> class probabilities [B, n_classes]."""
        return self.logits(images).softmax(-1).cpu()

    def classify(self, images: np.ndarray, top_k: int = 3) -> list[list[tuple[str, float]]]:
        probs = self.probabilities(images)
        k = min(top_k, probs.size(1))
        top = probs.topk(k, dim=-1)
        return [[(self.classes[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist())] for ps, idx in zip(top.values, top.indices)]

    @torch.no_grad()
    def rollout(self, image: np.ndarray) -> tuple[np.ndarray, list[tuple[str, float]]]:
        """The attention rollout of the class token (or, with mean pooling, of all tokens on average) over
        the patch grid [grid, grid], and the top predictions."""
        from aiayn import runtime
        from aiayn.data.images import to_tensor
        from aiayn.models import attention_rollout

        x = to_tensor(image[None], self.spec).to(self.device)
        with runtime.autocast(self.precision, self.device):
            states, weights = self.model.features(x, need_weights=True)
            probs = self.model.head(self.model.pool(states)).float().softmax(-1)[0].cpu()
        r = attention_rollout(weights)[0]  # [L, L]
        g = self.model.config.grid
        row = r[0, 1:] if self.model.config.pooling == "cls" else r.mean(0)
        top = probs.topk(min(3, probs.numel()))
        return row.reshape(g, g).cpu().numpy(), [(self.classes[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]


def draw_rollout(image: np.ndarray, grid_map: np.ndarray, out: str | Path, title: str = "") -> Path:
    """The image beside its rollout map laid over it, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, W = image.shape[:2]
    shown = image[..., 0] if image.shape[-1] == 1 else image
    cmap = "gray" if image.shape[-1] == 1 else None
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(shown, cmap=cmap)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(shown, cmap=cmap)
    axes[1].imshow(grid_map, cmap="inferno", alpha=0.6, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
    axes[1].set_title("attention rollout", fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def draw_confusion(confusion: np.ndarray, classes: list[str], out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7, color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of feature vectors [N, d] (FID's
    formula, Heusel et al. 2017): ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
