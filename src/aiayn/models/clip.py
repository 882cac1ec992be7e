"""CLIP: an image tower and a text tower trained so that an image and its caption land close
together in one space (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"), both assembled from the block set.

    image ─► ViT (no head, LayerNorm before the blocks) ─► [CLS] state ─► Linear ─┐
                                                                                   ├─► L2-normalised, cosine × e^t
    tokens ─► embed + positions ─► Stack of Block(causal, pre_norm) ─► LayerNorm ─► state at end-of-text ─► Linear ─┘

§2.4 of the CLIP paper: "the activations of the highest layer of the transformer at the [EOS]
token are treated as the feature representation of the text which is layer normalized and then
linearly projected into the multi-modal embedding space"; "masked self-attention was used in the
text encoder". §2.5: "the learnable temperature parameter τ was initialized to the equivalent of
0.07 ... and clipped to prevent scaling the logits by more than 100". The image tower is
models/vit.py's ViT; the text tower is the paper's decoder stack without cross-attention (a GPT
without its output layer). The symmetric contrastive loss lives with its task (tasks/image_text.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn import schema
from aiayn.models.config import ModelConfig
from aiayn.models.vit import ViT, ViTConfig
from aiayn.nn import Block, Dropout, Linear, Stack, TokenEmbedding


@dataclass
class CLIPConfig(ModelConfig):
    """The two towers' shapes (vision_*, text_*), the joint space's width d_embed, and the temperature."""

    ARCHITECTURE = "clip"

    image_size: int = 224
    patch_size: int = 32
    in_channels: int = 3
    vision_d_model: int = 768
    vision_n_heads: int = 12
    vision_d_ff: int = 3072
    vision_n_layers: int = 12
    vocab_size: int = 49408
    context: int = 77  # the longest caption in tokens, start and end-of-text included
    text_d_model: int = 512
    text_n_heads: int = 8
    text_d_ff: int = 2048
    text_n_layers: int = 12
    d_embed: int = 512  # the joint space
    activation: str = "quick_gelu"
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    temperature: float = 0.07  # the initial τ; logits are cos · 1/τ
    max_logit_scale: float = 100.0  # 1/τ is clipped here
    bos_id: int = 2  # put before every caption
    eos_id: int = 3  # end-of-text: the text tower's representation is its state here
    pad_id: int = 0

    @classmethod
    def check(cls, values: dict, where: str = "") -> None:
        from aiayn.nn import ACTIVATIONS

        S = schema
        rules = {k: S.AT_LEAST_1 for k in ("image_size", "patch_size", "in_channels", "vocab_size", "context", "d_embed")}
        for tower in ("vision", "text"):
            rules.update({f"{tower}_{k}": S.AT_LEAST_1 for k in ("d_model", "n_heads", "d_ff", "n_layers")})
        rules.update(
            activation=S.Rule(choices=tuple(ACTIVATIONS)),
            dropout=S.PROBABILITY,
            layer_norm_eps=S.POSITIVE,
            temperature=S.POSITIVE,
            max_logit_scale=S.POSITIVE,
            bos_id=S.Rule(low=-1),
            eos_id=S.AT_LEAST_0,
            pad_id=S.AT_LEAST_0,
        )
        schema.check(cls, values, where, rules, what="model config")
        for tower in ("vision", "text"):
            d, h = values.get(f"{tower}_d_model"), values.get(f"{tower}_n_heads")
            if d and h and d % h:
                raise ValueError(f"{where}{tower}_d_model={d} is not divisible by {where}{tower}_n_heads={h}")
        if "image_size" in values and "patch_size" in values and values["image_size"] % values["patch_size"]:
            raise ValueError(f"{where}image_size={values['image_size']} is not a multiple of {where}patch_size={values['patch_size']}")

    def vision(self) -> ViTConfig:
        """The image tower: CLIP's ViT (no patch bias, a LayerNorm before the blocks, no classifier)."""
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            in_channels=self.in_channels,
            n_classes=0,
            d_model=self.vision_d_model,
            n_heads=self.vision_n_heads,
            d_ff=self.vision_d_ff,
            n_layers=self.vision_n_layers,
            dropout=self.dropout,
            activation=self.activation,
            pooling="cls",
            positional="learned",
            layer_norm_eps=self.layer_norm_eps,
            patch_bias=False,
            embed_norm=True,
        )


class TextTransformer(nn.Module):
    """CLIP's text tower: token embeddings plus learned positions, causal pre-norm blocks, a final
    LayerNorm; a caption's representation is the state at its first end-of-text token."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.eos_id = cfg.eos_id
        self.token_embed = TokenEmbedding(cfg.vocab_size, cfg.text_d_model, scale=False)
        self.position_embed = nn.Parameter(torch.zeros(cfg.context, cfg.text_d_model))
        self.dropout = Dropout(cfg.dropout)
        self.layers = Stack(
            Block(
                cfg.text_d_model,
                cfg.text_n_heads,
                cfg.text_d_ff,
                causal=True,
                pre_norm=True,
                dropout=cfg.dropout,
                activation=cfg.activation,
                norm_eps=cfg.layer_norm_eps,
            )
            for _ in range(cfg.text_n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.text_d_model, eps=cfg.layer_norm_eps)

    def end_of_text(self, tokens: Tensor) -> Tensor:
        """[B] the position of each row's first end-of-text token (the last position where it has none)."""
        is_eos = tokens == self.eos_id
        first = is_eos.int().argmax(1)
        return torch.where(is_eos.any(1), first, torch.full_like(first, tokens.size(1) - 1))

    def features(self, tokens: Tensor, need_weights: bool = False) -> tuple[Tensor, list]:
        """tokens: [B, L] -> states [B, L, d] and, with need_weights, the attention per layer. Padding
        after end-of-text needs no mask: under the causal mask no earlier position sees it."""
        x, weights = self.layers(self.embed(tokens), need_weights=need_weights)
        return self.final_norm(x), weights

    def embed(self, tokens: Tensor) -> Tensor:
        L = tokens.size(1)
        if L > self.position_embed.size(0):
            raise ValueError(f"a caption of {L} tokens is longer than the model's context of {self.position_embed.size(0)}")
        return self.dropout(self.token_embed(tokens) + self.position_embed[:L])

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: [B, L] -> the end-of-text states [B, d] (the last block computes only there)."""
        x, _ = self.layers(self.embed(tokens), last_at=self.end_of_text(tokens))
        return self.final_norm(x[:, 0])


class CLIP(nn.Module):
    """A dual encoder: `image_features` and `text_features` give L2-normalised vectors of one space;
    `forward` the logits of every image against every caption of a batch."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = cfg = config
        self.visual = ViT(cfg.vision())
        self.text = TextTransformer(cfg)
        self.visual_proj = Linear(cfg.vision_d_model, cfg.d_embed, bias=False)
        self.text_proj = Linear(cfg.text_d_model, cfg.d_embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The image tower keeps ViT's (timm's) initialisation; the text tower gets CLIP's: embeddings
        N(0, 0.02), positions N(0, 0.01), attention and FFN weights scaled by width and depth
        (std d^-½ for the input projections, (2·n_layers·d)^-½ for the outputs), projections d^-½."""
        cfg, text = self.config, self.text
        nn.init.normal_(text.token_embed.weight, std=0.02)
        nn.init.normal_(text.position_embed, std=0.01)
        d, n = cfg.text_d_model, cfg.text_n_layers
        for block in text.layers:
            nn.init.normal_(block.self_attn.qkv_proj.weight, std=d**-0.5)
            nn.init.normal_(block.self_attn.out_proj.weight, std=d**-0.5 * (2 * n) ** -0.5)
            nn.init.normal_(block.ffn.w1.weight, std=(2 * d) ** -0.5)
            nn.init.normal_(block.ffn.w2.weight, std=d**-0.5 * (2 * n) ** -0.5)
            for linear in (block.self_attn.qkv_proj, block.self_attn.out_proj, block.ffn.w1, block.ffn.w2):
                nn.init.zeros_(linear.bias)
        nn.init.normal_(self.visual_proj.weight, std=cfg.vision_d_model**-0.5)
        nn.init.normal_(self.text_proj.weight, std=cfg.text_d_model**-0.5)

    def image_features(self, images: Tensor, normalize: bool = True) -> Tensor:
        """images: [B, C, H, W] (normalised as the dataset says) -> [B, d_embed]."""
        x = self.visual_proj(self.visual(images))
        return F.normalize(x, dim=-1) if normalize else x

    def text_features(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """tokens: [B, L] (start, caption, end-of-text, padding) -> [B, d_embed]."""
        x = self.text_proj(self.text(tokens))
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> Tensor:
        """1/τ, clipped to [1, max_logit_scale] (its gradient is zero where clipped)."""
        return self.logit_scale.clamp(0.0, math.log(self.config.max_logit_scale)).exp()

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """-> (logits per image [B_img, B_txt], logits per text [B_txt, B_img])."""
        logits = self.scale() * self.image_features(images) @ self.text_features(tokens).t()
        return logits, logits.t()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
