"""§3.2 Attention: scaled dot-product attention and multi-head attention, with a KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """§3.2.1, Eq. (1): Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V.

    q: [B, h, Lq, d_k]; k: [B, h, Lk, d_k]; v: [B, h, Lk, d_v]
    mask: bool, broadcastable to [B, h, Lq, Lk]; True where a query may attend.
    is_causal: query i sees keys ≤ i + (Lk − Lq) (the decoder's masking of §3.2.3).

    The default path is PyTorch's fused kernel (flash / memory-efficient on GPU, a fused
    CPU kernel otherwise). `need_weights=True` spells Eq. (1) out and also returns the
    attention probabilities [B, h, Lq, Lk], for alignments and heat maps.
    """
    if is_causal:
        Lq, Lk = q.size(-2), k.size(-2)
        if Lq == 1:  # one new query (incremental decoding) sees every key so far
            is_causal = False
        elif mask is not None or Lq != Lk or need_weights:
            causal = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)
            mask = causal if mask is None else mask & causal
            is_causal = False
    if not need_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        return out, None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # [B, h, Lq, Lk]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = F.dropout(weights, dropout_p) @ v  # [B, h, Lq, d_v]
    return out, weights


class MultiHeadAttention(nn.Module):
    """§3.2.2 Multi-Head Attention.

    MultiHead(Q, K, V) = Concat(head_1, …, head_h) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
    with d_k = d_v = d_model / h. The h per-head projections of one kind form one
    d_model × d_model matrix; self-attention fuses W^Q, W^K, W^V into one d_model × 3·d_model
    matmul, encoder-decoder attention fuses W^K, W^V (its keys and values come from the encoder).
    """

    def __init__(self, d_model: int, n_heads: int, *, cross: bool = False, attn_dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head, self.cross = n_heads, d_model // n_heads, cross
        self.attn_dropout = attn_dropout
        if cross:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, L, d_model] -> [B, h, L, d_k]"""
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.d_head).transpose(1, 2)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder-decoder attention keys and values, computed once per source: 2 × [B, h, S, d_k]."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        cache: dict | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: queries [N, L, d_model].

        Self-attention: keys and values come from x; with `cache` (a dict) the new keys/values
        are appended to cache["k"], cache["v"] ([N, h, T, d_k]) for incremental decoding.
        Encoder-decoder attention: `memory_kv` from `memory_kv()`, shaped [B, h, S, d_k] where
        the query batch N is B·G (G hypotheses per source sentence, e.g. the beams of beam
        search, laid out sentence-major). The G queries of a sentence attend to the same
        keys, so the encoder's keys and values are never copied G times or reordered.
        """
        N, L, d = x.shape
        p = self.attn_dropout if self.training else 0.0
        if self.cross:
            k, v = memory_kv
            B = k.size(0)
            q = self.q_proj(x).view(B, (N // B) * L, self.n_heads, self.d_head).transpose(1, 2)  # [B, h, G·L, d_k]
            out, w = scaled_dot_product_attention(q, k, v, mask, False, p, need_weights)
            out = out.transpose(1, 2).reshape(N, L, d)  # [B, G·L, h, d_k] -> [N, L, d_model]
            if w is not None:
                w = w.view(B, self.n_heads, N // B, L, -1).transpose(1, 2).reshape(N, self.n_heads, L, -1)
            return self.out_proj(out), w
        q, k, v = (self._heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))  # 3 × [N, h, L, d_k]
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        out, w = scaled_dot_product_attention(q, k, v, mask, is_causal, p, need_weights)
        out = out.transpose(1, 2).reshape(N, L, d)  # [N, h, L, d_k] -> [N, L, d_model]
        return self.out_proj(out), w
