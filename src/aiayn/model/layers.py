"""The building blocks of §3: positional encoding, feed-forward network, encoder and decoder layers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.model.attention import MultiHeadAttention, Packing
from aiayn.model.linear import Linear

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "silu": F.silu}


def sinusoid_table(n_positions: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """§3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    layout="interleaved" is the paper's (sin on even, cos on odd dimensions); "concat" puts all
    sines first, then all cosines (tensor2tensor, Marian/OPUS-MT): the same functions, permuted.
    Returns [n_positions, d_model].
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = pos * inv_freq  # [P, d/2]
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    if layout == "interleaved":
        table[:, 0::2], table[:, 1::2] = torch.sin(angles), torch.cos(angles[:, : d_model // 2])
    elif layout == "concat":
        half = (d_model + 1) // 2
        table[:, :half], table[:, half:] = torch.sin(angles), torch.cos(angles[:, : d_model // 2])
    else:
        raise ValueError(f"unknown positional layout {layout!r} (interleaved or concat)")
    return table.float()


class PositionalEncoding(nn.Module):
    """§3.5 Positional Encoding: fixed sinusoids (the paper) or learned embeddings (its Table 3 row E)."""

    def __init__(self, d_model: int, max_positions: int, kind: str = "sinusoidal", layout: str = "interleaved"):
        super().__init__()
        self.kind, self.layout, self.d_model = kind, layout, d_model
        if kind == "learned":
            self.embedding = nn.Embedding(max_positions, d_model)
        elif kind == "sinusoidal":
            self.register_buffer("table", sinusoid_table(max_positions, d_model, layout), persistent=False)
        else:
            raise ValueError(f"unknown positional encoding {kind!r} (sinusoidal or learned)")

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings of positions offset … offset+length−1: [length, d_model]."""
        end = offset + length
        if self.kind == "learned":
            if end > self.embedding.num_embeddings:
                raise ValueError(f"position {end - 1} is beyond max_positions={self.embedding.num_embeddings}")
            return self.embedding.weight[offset:end]
        if end > self.table.size(0):  # sinusoids extrapolate: grow the table
            self.table = sinusoid_table(max(end, 2 * self.table.size(0)), self.d_model, self.layout).to(self.table.device)
        return self.table[offset:end]


class Dropout(nn.Module):
    """§5.4 dropout: zero each element with probability p, scale the rest by 1/(1−p).

    On the CPU the keep-mask comes from 16-bit random integers, about twice as fast as
    torch's Bernoulli sampling forward and backward (p is exact to 1/32768); elsewhere it
    is `F.dropout`.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.threshold = p, round(p * 32768)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        keep = torch.empty(x.shape, dtype=torch.int16).random_() >= self.threshold  # random_ draws from [0, 32767]
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Module):
    """§3.3 Position-wise Feed-Forward Network, Eq. (2): FFN(x) = max(0, x W1 + b1) W2 + b2.

    relu is the paper's activation; gelu and swish are options (swish for OPUS-MT weights).
    `activation_dropout` (tensor2tensor's relu_dropout) is off in the paper presets.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", activation_dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (one of {', '.join(ACTIVATIONS)})")
        self.w1 = Linear(d_model, d_ff, bias=bias)
        self.w2 = Linear(d_ff, d_model, bias=bias)
        self.activation = ACTIVATIONS[activation]
        self.dropout = Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.dropout(self.activation(self.w1(x))))  # [.., d_model] -> [.., d_ff] -> [.., d_model]


class EncoderLayer(nn.Module):
    """§3.1 Encoder layer: multi-head self-attention, then the feed-forward network.

    Each sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (post-norm, the paper; dropout
    from §5.4 "Residual Dropout"), or x + Dropout(Sublayer(LayerNorm(x))) with pre_norm=True.
    """

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, attn_dropout=cfg.attn_dropout, bias=cfg.bias)
        self.self_attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, cfg.activation_dropout, cfg.bias)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False, packing: Packing | None = None) -> tuple[Tensor, Tensor | None]:
        """x: [B, S, d_model], or its real tokens [n, d_model] with their `packing`;
        mask: [B, 1, 1, S], True at real (non-padding) source tokens."""
        h = self.self_attn_norm(x) if self.pre_norm else x
        h, weights = self.self_attn(h, mask=mask, need_weights=need_weights, packing=packing)
        x = x + self.dropout(h) if self.pre_norm else self.self_attn_norm(x + self.dropout(h))

        h = self.ffn_norm(x) if self.pre_norm else x
        h = self.ffn(h)
        x = x + self.dropout(h) if self.pre_norm else self.ffn_norm(x + self.dropout(h))
        return x, weights


class DecoderLayer(nn.Module):
    """§3.1 Decoder layer: masked self-attention, encoder-decoder attention, feed-forward network.

    Self-attention is causal (§3.2.3: position i attends only to positions ≤ i); with a `cache`
    it attends to the keys/values of earlier steps kept there (incremental decoding).
    """

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, attn_dropout=cfg.attn_dropout, bias=cfg.bias)
        self.self_attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cross=True, attn_dropout=cfg.attn_dropout, bias=cfg.bias)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, cfg.activation_dropout, cfg.bias)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        memory_mask: Tensor | None,
        cache=None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: [N, T, d_model], or its real tokens [n, d_model] with their `packing`;
        memory_kv: 2 × [B, h, S, d_k] with N = B·G; memory_mask: [B, 1, 1, S].

        Returns the new x and, with need_weights, the encoder-decoder attention [N, h, T, S].
        """
        h = self.self_attn_norm(x) if self.pre_norm else x
        h, _ = self.self_attn(h, is_causal=True, cache=cache, packing=packing)
        x = x + self.dropout(h) if self.pre_norm else self.self_attn_norm(x + self.dropout(h))

        h = self.cross_attn_norm(x) if self.pre_norm else x
        h, weights = self.cross_attn(h, mask=memory_mask, memory_kv=memory_kv, need_weights=need_weights, packing=packing)
        x = x + self.dropout(h) if self.pre_norm else self.cross_attn_norm(x + self.dropout(h))

        h = self.ffn_norm(x) if self.pre_norm else x
        h = self.ffn(h)
        x = x + self.dropout(h) if self.pre_norm else self.ffn_norm(x + self.dropout(h))
        return x, weights
