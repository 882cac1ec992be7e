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


class ConvStem(nn.Module):
    """A convolutional stem in place of the patch projection (Xiao et al. 2021, "Early Convolutions
    Help Transformers See Better", §3): log2(p) 3 × 3 convolutions of stride 2, each followed by
    BatchNorm and ReLU, doubling the channels from d_model / 2^log2(p) … d_model / 2, then a 1 × 1
    projection to d_model. The output has the same p × p grid as PatchEmbedding's, and the stem's
    receptive fields overlap. `depth` > 1 adds depth − 1 3 × 3 convolutions of stride 1 at each
    resolution, after the one that halves it (a small convolutional network before the Transformer,
    as in ViT's hybrid models, §3.1 "Hybrid Architecture"), at little cost: on 28 × 28 images with
    patch 4, depth 2 adds 3.6M multiply-adds an image to vit-tiny's 59M.
    [B, C, H, W] -> [B, (H/p)·(W/p), d_model], row-major."""

    def __init__(self, in_channels: int, patch_size: int, d_model: int, bias: bool = True, depth: int = 1):
        super().__init__()
        steps = patch_size.bit_length() - 1
        if patch_size < 2 or 1 << steps != patch_size:
            raise ValueError(f"a convolutional stem needs a patch size that is a power of 2 (at least 2), not {patch_size}")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(steps):
            out = max(d_model >> (steps - i), 1)
            for j in range(depth):
                layers += [nn.Conv2d(channels, out, 3, stride=1 if j else 2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, d_model, kernel_size=1, bias=bias)

    def forward(self, images: Tensor) -> Tensor:
        H, W = images.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}×{W} is not a multiple of the patch size {self.patch_size}")
        return self.proj(self.convs(images)).flatten(2).transpose(1, 2)
