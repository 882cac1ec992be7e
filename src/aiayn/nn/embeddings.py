"""Inputs as vectors of d_model: tokens (§3.4) and image patches (Dosovitskiy et al. 2020, §3.1)."""

from __future__ import annotations

import math

from torch import Tensor, nn


class TokenEmbedding(nn.Embedding):
    """§3.4: learned embeddings of the tokens, multiplied by √d_model (`scale=True`, the paper's).
    An nn.Embedding (same parameter, same state-dict key), so the pre-softmax projection can share
    its weight."""

    def __init__(self, vocab_size: int, d_model: int, padding_idx: int | None = None, scale: bool = True):
        super().__init__(vocab_size, d_model, padding_idx=padding_idx)
        self.scale = math.sqrt(d_model) if scale else 1.0

    def forward(self, tokens: Tensor) -> Tensor:
        return super().forward(tokens) * self.scale


class PatchEmbedding(nn.Module):
    """An image cut into non-overlapping p × p patches, each flattened and projected to d_model
    (ViT §3.1: "we reshape the image x ∈ R^{H×W×C} into a sequence of flattened 2D patches"),
    done as one strided convolution. [B, C, H, W] -> [B, (H/p)·(W/p), d_model], row-major."""

    def __init__(self, in_channels: int, patch_size: int, d_model: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, images: Tensor) -> Tensor:
        H, W = images.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}×{W} is not a multiple of the patch size {self.patch_size}")
        return self.proj(images).flatten(2).transpose(1, 2)
