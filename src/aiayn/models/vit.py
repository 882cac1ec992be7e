"""ViT: an image classified by the Transformer's encoder (Dosovitskiy et al. 2020, "An Image is
Worth 16x16 Words"), assembled from the block set.

    image ─► patches (strided conv, or a conv stem) ─► [CLS] + patches + positions ─► Stack of N Block(pre_norm)
          ─► LayerNorm ─► the [CLS] state (or the patches' mean) ─► Linear ─► class logits

§3.1 of the ViT paper: "we prepend a learnable embedding to the sequence of embedded patches ...
whose state at the output of the Transformer encoder serves as the image representation"; the
blocks are the paper's encoder layers (§3.1 of Vaswani et al.) in pre-norm order with GELU.
Stochastic depth (DeiT) and LayerScale (CaiT) are options of `Block`. `attention_rollout`
(Abnar & Zuidema 2020) shows which patches the class token's representation comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aiayn import schema
from aiayn.models.config import ModelConfig, check_heads
from aiayn.nn import Block, ConvStem, Dropout, Linear, PatchEmbedding, Stack, sinusoid_table_2d


@dataclass
class ViTConfig(ModelConfig):
    ARCHITECTURE = "vit"

    image_size: int = 224  # square images of image_size × image_size pixels
    patch_size: int = 16
    in_channels: int = 3
    n_classes: int = 1000
    d_model: int = 768
    n_heads: int = 12
    d_ff: int = 3072
    n_layers: int = 12
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth of the last block; earlier blocks get linearly less (DeiT)
    layer_scale: float = 0.0  # LayerScale's initial value (CaiT: 1e-5 … 1e-1); 0: off
    activation: str = "gelu"
    pooling: str = "cls"  # cls: the class token's state | mean: the mean of the patches' states
    positional: str = "learned"  # learned | sinusoidal (2-D)
    layer_norm_eps: float = 1e-6
    patch_bias: bool = True  # the patch projection's bias (CLIP's has none)
    patch_stem: str = "linear"  # linear: one strided convolution (ViT) | conv: 3×3 convolutions of stride 2 (Xiao et al. 2021)
    stem_depth: int = 1  # with patch_stem conv: 3×3 convolutions at each resolution, the first halving it
    embed_norm: bool = False  # a LayerNorm on the embedded patches and positions before the blocks (CLIP's ln_pre)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def check(cls, values: dict, where: str = "") -> None:
        from aiayn.nn import ACTIVATIONS

        S = schema
        rules = {
            "image_size": S.AT_LEAST_1,
            "patch_size": S.AT_LEAST_1,
            "in_channels": S.AT_LEAST_1,
            "n_classes": S.AT_LEAST_0,
            "d_model": S.AT_LEAST_1,
            "n_heads": S.AT_LEAST_1,
            "d_ff": S.AT_LEAST_1,
            "n_layers": S.AT_LEAST_1,
            "dropout": S.PROBABILITY,
            "attn_dropout": S.PROBABILITY,
            "drop_path": S.PROBABILITY,
            "layer_scale": S.AT_LEAST_0,
            "activation": S.Rule(choices=tuple(ACTIVATIONS)),
            "pooling": S.Rule(choices=("cls", "mean")),
            "positional": S.Rule(choices=("learned", "sinusoidal")),
            "patch_stem": S.Rule(choices=("linear", "conv")),
            "stem_depth": S.AT_LEAST_1,
            "layer_norm_eps": S.POSITIVE,
        }
        schema.check(cls, values, where, rules, what="model config")
        check_heads(values, where)
        if "image_size" in values and "patch_size" in values and values["image_size"] % values["patch_size"]:
            raise ValueError(f"{where}image_size={values['image_size']} is not a multiple of {where}patch_size={values['patch_size']}")
        patch = values.get("patch_size", cls.patch_size)
        if values.get("patch_stem") == "conv" and (patch < 2 or patch & (patch - 1)):
            raise ValueError(f"{where}patch_stem=conv needs a patch_size that is a power of 2 (at least 2), not {patch}")


class ViT(nn.Module):
    """A Vision Transformer classifier; with n_classes=0 an image encoder (CLIP's image tower), whose
    forward gives the pooled representation [B, d_model]."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size={cfg.image_size} is not a multiple of patch_size={cfg.patch_size}")
        if cfg.patch_stem == "conv":
            self.patch_embed = ConvStem(cfg.in_channels, cfg.patch_size, cfg.d_model, bias=cfg.patch_bias, depth=cfg.stem_depth)
        else:
            self.patch_embed = PatchEmbedding(cfg.in_channels, cfg.patch_size, cfg.d_model, bias=cfg.patch_bias)
        n_tokens = cfg.grid**2 + (cfg.pooling == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pooling == "cls" else None
        if cfg.positional == "learned":
            self.position_embed = nn.Parameter(torch.zeros(1, n_tokens, cfg.d_model))
        else:  # fixed 2-D sinusoids for the patches (MAE, DiT); the class token gets none
            table = sinusoid_table_2d(cfg.grid, cfg.grid, cfg.d_model)
            if cfg.pooling == "cls":
                table = torch.cat([torch.zeros(1, cfg.d_model), table])
            self.register_buffer("position_table", table[None], persistent=False)
        self.embed_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.embed_norm else None
        self.dropout = Dropout(cfg.dropout)
        self.layers = Stack(
            Block(
                cfg.d_model,
                cfg.n_heads,
                cfg.d_ff,
                pre_norm=True,
                dropout=cfg.dropout,
                attn_dropout=cfg.attn_dropout,
                activation=cfg.activation,
                norm_eps=cfg.layer_norm_eps,
                drop_path=cfg.drop_path * i / max(cfg.n_layers - 1, 1),
                layer_scale=cfg.layer_scale,
            )
            for i in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.head = Linear(cfg.d_model, cfg.n_classes) if cfg.n_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's: truncated-normal(0.02) weights, class token and positions, zero biases; the patch
        projection Xavier-uniform over its flattened patch (a convolutional stem's 3 × 3 layers keep
        PyTorch's Kaiming initialisation)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.size(0), -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.config.positional == "learned":
            nn.init.trunc_normal_(self.position_embed, std=0.02)

    def embed(self, images: Tensor) -> Tensor:
        """images: [B, C, H, W] (normalised) -> the blocks' input [B, 1 + patches, d_model] (class token first where there is one)."""
        x = self.patch_embed(images)  # [B, N, d_model]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)
        positions = self.position_embed if self.config.positional == "learned" else self.position_table
        if positions.size(1) != x.size(1):
            raise ValueError(
                f"the images give {x.size(1)} tokens; the model was built for {positions.size(1)} (image_size {self.config.image_size})"
            )
        x = x + positions
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.dropout(x)

    def features(self, images: Tensor, need_weights: bool = False) -> tuple[Tensor, list]:
        """images: [B, C, H, W] (normalised) -> the encoder's output [B, 1 + patches, d_model] (class
        token first where there is one) and, with need_weights, the attention per layer [B, h, L, L]."""
        x, weights = self.layers(self.embed(images), need_weights=need_weights)
        return self.final_norm(x), weights

    def pool(self, states: Tensor) -> Tensor:
        return states[:, 0] if self.config.pooling == "cls" else states.mean(1)

    def forward(self, images: Tensor) -> Tensor:
        """images: [B, C, H, W] -> class logits [B, n_classes] (without a head: the pooled states [B, d_model]).
        With the class token, the last block computes its output there alone (the other positions'
        outputs are never used): the same result as pooling `features`, for less work."""
        if self.config.pooling == "cls":
            x = self.embed(images)
            pooled = self.final_norm(self.layers(x, last_at=torch.zeros(x.size(0), dtype=torch.long, device=x.device))[0][:, 0])
        else:
            pooled = self.pool(self.features(images)[0])
        return pooled if self.head is None else self.head(pooled)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def attention_rollout(weights: list[Tensor], residual: float = 0.5) -> Tensor:
    """Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", §3: the attention of
    each layer averaged over heads, mixed with the identity for the residual connection
    (A' = residual·I + (1 − residual)·A, rows renormalised), multiplied through the layers.
    weights: per layer [B, h, L, L] -> [B, L, L], each row a distribution over the input tokens."""
    rollout = None
    for w in weights:
        a = w.float().mean(1)  # [B, L, L]
        a = residual * torch.eye(a.size(-1), device=a.device) + (1 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout
