"""§3.2 Attention: scaled dot-product attention and multi-head attention, with a KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.model.linear import Linear


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


def avoid_cudnn_attention() -> None:
    """Keep PyTorch's scaled_dot_product_attention off cuDNN's kernel on CUDA (process-wide).

    cuDNN builds an execution plan for each exact input shape (hundreds of ms each, then cached).
    Token-bucket batches meet a new shape nearly every update, and incremental decoding every
    step, so the flash and memory-efficient kernels serve us better. Measured on an H200 (bf16,
    Bible corpus, 25k target tokens per update, benchmarks/gpu_throughput.py): `base` training ran
    at 118k tokens/s with cuDNN's kernel and 719k without it.
    """
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)


class Packing:
    """Where the real tokens of a right-padded batch are, so that everything position-wise (the
    projections, the feed-forward network, layer norms, dropout) runs on those tokens alone,
    packed as rows [n, ...], and never on padding. Only attention needs the batch layout: it pads
    its queries, keys and values out to [B, L, ...] (zeros at padding, which the masks hide) and
    packs its output again. On real data this skips the padding's share of the matmul work (about
    7% in token-bucket batches of the Bible corpus). The model uses it on the CPU only (see
    Transformer.packing).
    """

    def __init__(self, shape: torch.Size, index: Tensor):
        self.shape = shape  # [B, L]
        self.index = index  # [n]: flat positions of the real tokens

    @staticmethod
    def of(mask: Tensor) -> "Packing | None":
        """A Packing for `mask` ([B, L], True at real tokens), or None where there is no padding
        (or while torch.compile traces it: a whole compiled model keeps the padded layout, since the
        number of real tokens is data-dependent; Transformer.compile_layers works out the packing
        outside its graphs)."""
        if torch.compiler.is_compiling():
            return None
        index = mask.reshape(-1).nonzero().squeeze(1)  # the one host sync (on a GPU)
        return Packing(mask.shape, index) if index.numel() < mask.numel() else None

    def pack(self, x: Tensor) -> Tensor:
        """[B, L, ...] -> [n, ...]: the real positions, in order."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """[n, ...] -> [B, L, ...] with zeros at padding."""
        out = x.new_zeros(self.shape.numel(), *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(*self.shape, *x.shape[1:])


class KVCache:
    """The keys and values of one decoder self-attention layer for the steps decoded so far.

    Stored time-major, [T, N, h, d_k], in a buffer that grows by doubling: a new step is written
    in place (no concatenation), attention reads a [N, h, t, d_k] view, and beam search's
    reordering of the N hypotheses is one gather into a spare buffer that then takes over.
    """

    def __init__(self):
        self.k: Tensor | None = None  # [capacity, N, h, d_k]
        self.v: Tensor | None = None
        self.length = 0
        self._spare: tuple[Tensor, Tensor] | None = None

    @property
    def rows(self) -> int:
        return 0 if self.k is None else self.k.size(1)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the keys/values of L new steps ([N, h, L, d_k]); return all of them as [N, h, t, d_k] views."""
        L, end = k.size(2), self.length + k.size(2)
        if self.k is None or end > self.k.size(0):
            capacity = max(end, 2 * (self.k.size(0) if self.k is not None else 16))
            grown = [t.new_empty((capacity, *t.shape[:2], t.size(3))) for t in (k, v)]
            if self.k is not None:
                grown[0][: self.length], grown[1][: self.length] = self.k[: self.length], self.v[: self.length]
            self.k, self.v = grown
            self._spare = None
        self.k[self.length : end] = k.permute(2, 0, 1, 3)
        self.v[self.length : end] = v.permute(2, 0, 1, 3)
        self.length = end
        return self.k[:end].permute(1, 2, 0, 3), self.v[:end].permute(1, 2, 0, 3)

    @staticmethod
    def plan(order: Tensor) -> tuple[Tensor, Tensor, bool]:
        """How to apply `order` (the same for every layer, so worked out once per step): the rows
        that change, the rows they copy from, and whether copying just those is enough (they are
        few and copy only from rows that stay, as beam search arranges it)."""
        moved = order.ne(torch.arange(order.numel(), device=order.device))
        changed = moved.nonzero().squeeze(1)
        sources = order[changed]
        return changed, sources, 2 * changed.numel() <= order.numel() and not bool(moved[sources].any())

    def reorder(self, order: Tensor, plan: tuple[Tensor, Tensor, bool] | None = None) -> None:
        """Row n continues the hypothesis that was row order[n]; `plan` is `KVCache.plan(order)`.

        Rows that keep their own hypothesis are not touched; with a partial plan only the rows
        that change are copied."""
        if self.k is None:
            return
        if self.k.requires_grad:  # decoding under autograd (unusual): a plain gather
            self.k, self.v = self.k.index_select(1, order), self.v.index_select(1, order)
            return
        changed, sources, partial = plan if plan is not None else self.plan(order)
        if changed.numel() == 0:
            return
        if partial:
            for buf in (self.k, self.v):
                live = buf[: self.length]
                live.index_copy_(1, changed, live.index_select(1, sources))
            return
        if self._spare is None:
            self._spare = (torch.empty_like(self.k), torch.empty_like(self.v))
        k2, v2 = self._spare
        torch.index_select(self.k[: self.length], 1, order, out=k2[: self.length])
        torch.index_select(self.v[: self.length], 1, order, out=v2[: self.length])
        self._spare = (self.k, self.v)
        self.k, self.v = k2, v2

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (their number may shrink)."""
        if self.k is None:
            return
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        self._spare = None


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
            self.q_proj = Linear(d_model, d_model, bias=bias)
            self.kv_proj = Linear(d_model, 2 * d_model, bias=bias)
        else:
            self.qkv_proj = Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = Linear(d_model, d_model, bias=bias)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, L, d_model] -> [B, h, L, d_k]"""
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.d_head).transpose(1, 2)

    def memory_kv(self, memory: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """Encoder-decoder attention keys and values, computed once per source: 2 × [B, h, S, d_k].
        memory: the encoder's output, [B, S, d_model], or its real tokens [n, d_model] with their `packing`."""
        kv = self.kv_proj(memory)
        if packing is not None:
            kv = packing.unpack(kv)  # [n, 2·d_model] -> [B, S, 2·d_model]
        k, v = kv.chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: queries [N, L, d_model], or with `packing` their real tokens [n, d_model] (the output
        is then packed too).

        Self-attention: keys and values come from x; with a `cache` the new keys/values are
        appended to those of earlier steps (incremental decoding).
        Encoder-decoder attention: `memory_kv` from `memory_kv()`, shaped [B, h, S, d_k] where
        the query batch N is B·G (G hypotheses per source sentence, e.g. the beams of beam
        search, laid out sentence-major). The G queries of a sentence attend to the same
        keys, so the encoder's keys and values are never copied G times or reordered.
        """
        (N, L), d = (packing.shape if packing is not None else x.shape[:2]), x.size(-1)
        p = self.attn_dropout if self.training else 0.0
        if self.cross:
            k, v = memory_kv
            B = k.size(0)
            q = self.q_proj(x)
            if packing is not None:
                q = packing.unpack(q)  # [n, d_model] -> [N, L, d_model]
            q = q.view(B, (N // B) * L, self.n_heads, self.d_head).transpose(1, 2)  # [B, h, G·L, d_k]
            out, w = scaled_dot_product_attention(q, k, v, mask, False, p, need_weights)
            out = out.transpose(1, 2).reshape(N, L, d)  # [B, G·L, h, d_k] -> [N, L, d_model]
            if w is not None:
                w = w.view(B, self.n_heads, N // B, L, -1).transpose(1, 2).reshape(N, self.n_heads, L, -1)
        else:
            qkv = self.qkv_proj(x)
            if packing is not None:
                qkv = packing.unpack(qkv)  # [n, 3·d_model] -> [N, L, 3·d_model]
            q, k, v = (self._heads(t) for t in qkv.chunk(3, dim=-1))  # 3 × [N, h, L, d_k]
            if cache is not None:
                k, v = cache.append(k, v)  # [N, h, T, d_k]: every step so far
            out, w = scaled_dot_product_attention(q, k, v, mask, is_causal, p, need_weights)
            out = out.transpose(1, 2).reshape(N, L, d)  # [N, h, L, d_k] -> [N, L, d_model]
        if packing is not None:
            out = packing.pack(out)  # [N, L, d_model] -> [n, d_model]
        return self.out_proj(out), w
