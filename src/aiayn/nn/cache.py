"""Incremental decoding state: the protocol every searchable model's state follows, and the
decoder self-attention's KV cache (§3.2.3: at step t the decoder attends to steps ≤ t, whose
keys and values never change, so they are computed once and kept)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from aiayn import runtime


class DecodingState(Protocol):
    """What beam search, greedy search and sampling need of a model's incremental state.

    Rows are hypotheses, G per sentence, sentence-major (G = the beam; 1 for greedy and sampling).
    A KV cache, a recurrent network's hidden state, or an ensemble of either all qualify.
    """

    def reorder(self, order: Tensor) -> None:
        """Row n continues the hypothesis that was row order[n] (of the same sentence)."""

    def select(self, sentences: Tensor) -> None:
        """Keep only these sentences (all their rows), e.g. the unfinished ones."""


def hypothesis_rows(sentences: Tensor, group: int) -> Tensor:
    """The rows of these sentences' hypotheses, G = group per sentence, sentence-major."""
    return (sentences[:, None] * group + torch.arange(group, device=sentences.device)).reshape(-1)


def reorder_caches(caches, order: Tensor) -> None:
    """Beam search's reorder applied to every layer's cache (`KVCache.reorder`): the plan of which
    rows move, the same for every layer, worked out once (none for caches kept per sentence: no
    rows move)."""
    plan = KVCache.plan(order) if caches and caches[0].group == 1 else None
    for cache in caches:
        cache.reorder(order, plan)


class KVCache:
    """The keys and values of one decoder self-attention layer for the steps decoded so far.

    Stored time-major, [T, N, h, d_k], in a buffer that grows by doubling: a new step is written
    in place (no concatenation), attention reads a [N, h, t, d_k] view, and beam search's
    reordering of the N hypotheses is one gather into a spare buffer that then takes over.

    Given the number of `sentences` B, a cache that first receives G = N / B > 1 hypotheses per
    sentence (beam search) is kept per sentence instead, [B, h, T, G, d_k], and never reordered:
    `ancestors` [T, N] says in which of its sentence's G slots each hypothesis's ancestor left its
    keys at each step, and attention reads all G·t keys of its sentence under `beam_mask`, which
    lets each hypothesis see its own ancestors' alone. A reorder then moves T·N integers instead
    of T·N·d_model floats (beam 4 on a CPU spent about as long reordering as attending).
    """

    def __init__(self, sentences: int | None = None, masks: dict | None = None):
        self.k: Tensor | None = None  # [capacity, N, h, d_k], or per sentence [B, h, capacity, G, d_k]
        self.v: Tensor | None = None
        self.length = 0
        self._spare: tuple[Tensor, Tensor] | None = None
        self.sentences = sentences
        self.group = 1  # G: hypotheses per sentence in the per-sentence layout (1: time-major)
        self.ancestors: Tensor | None = None  # [capacity, N] (per-sentence layout)
        # the step's additive beam mask (`beam_bias`), shared by the caches of one decoding state: every
        # layer's is the same, since their caches are appended, reordered and cut together
        self.masks = masks if masks is not None else {}

    @classmethod
    def for_layers(cls, layers: int, sentences: int | None = None) -> list["KVCache"]:
        """One cache per decoder layer of a decoding state, sharing one `masks` dict: a step's beam
        mask (`beam_bias`) is then made by the first layer and reused by the others."""
        masks: dict = {}
        return [cls(sentences=sentences, masks=masks) for _ in range(layers)]

    @property
    def rows(self) -> int:
        if self.k is None:
            return 0
        return self.ancestors.size(1) if self.group > 1 else self.k.size(1)

    def hypotheses_per_sentence(self, rows: int, where: torch.device) -> int:
        """G if attention over this cache is per sentence (decided by its first keys: N = `rows` on
        `where`, `runtime.beam_cache_per_sentence`), else 1."""
        if self.k is None and self.sentences and rows % self.sentences == 0 and not torch.is_grad_enabled():
            self.group = rows // self.sentences if runtime.beam_cache_per_sentence(where) else 1
        return self.group

    def append(self, k: Tensor, v: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Add the keys/values of L new steps ([N, h, L, d_k]), kept in `dtype` where given
        (`runtime.decoding_cache_dtype`); return all of them as [N, h, t, d_k] views, or in the
        per-sentence layout as [B, h, t·G, d_k] (key s·G + g: slot g at step s)."""
        if dtype is not None:
            k, v = k.to(dtype), v.to(dtype)
        elif runtime.decoding_attention_in_fp32(k):  # bf16 decoding on a CPU keeps its cache in fp32
            k, v = k.float(), v.float()
        if self.group > 1:
            return self._append_per_sentence(k, v)
        end = self.length + k.size(2)
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

    def _append_per_sentence(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        (N, h, L, d), G = k.shape, self.group
        B, end = N // G, self.length + L
        if self.k is None or end > self.k.size(2):
            capacity = max(end, 2 * (self.k.size(2) if self.k is not None else 16))
            grown = [t.new_empty((B, h, capacity, G, d)) for t in (k, v)]
            ancestors = torch.empty((capacity, N), dtype=torch.long, device=k.device)
            if self.k is not None:
                grown[0][:, :, : self.length], grown[1][:, :, : self.length] = self.k[:, :, : self.length], self.v[:, :, : self.length]
                ancestors[: self.length] = self.ancestors[: self.length]
            (self.k, self.v), self.ancestors = grown, ancestors
        self.k[:, :, self.length : end] = k.view(B, G, h, L, d).permute(0, 2, 3, 1, 4)
        self.v[:, :, self.length : end] = v.view(B, G, h, L, d).permute(0, 2, 3, 1, 4)
        self.ancestors[self.length : end] = torch.arange(N, device=k.device) % G  # each new step in its own slot
        self.length = end
        return self.k[:, :, :end].flatten(2, 3), self.v[:, :, :end].flatten(2, 3)

    def beam_mask(self, new_steps: int) -> Tensor:
        """Per-sentence layout: which keys ([B, 1, G·L, t·G], True where it may attend) each of the
        G·L queries of the last L = `new_steps` steps sees: its own hypothesis's, up to its own step."""
        t, G = self.length, self.group
        B = self.ancestors.size(1) // G
        slots = torch.arange(G, device=self.ancestors.device)
        own = self.ancestors[:t].view(t, B, G).permute(1, 2, 0)[..., None] == slots  # [B, G, t, G]: ancestor's slot
        if new_steps == 1:
            return own.reshape(B, 1, G, t * G)
        steps = torch.arange(t, device=own.device)
        causal = steps[None, :] <= (t - new_steps + torch.arange(new_steps, device=own.device))[:, None]  # [L, t]
        return (own[:, :, None] & causal[None, None, :, :, None]).reshape(B, 1, G * new_steps, t * G)

    def beam_bias(self, new_steps: int, heads: int, dtype: torch.dtype) -> Tensor:
        """`beam_mask` as an additive mask of type `dtype`: 0 where a query may attend, the type's
        lowest value where not. Made by the first layer of a step and reused by the others whose
        caches share `masks`; attention adds it inside its first product (nn.attention's spelled-out
        form) instead of filling the scores layer by layer. For one new step it is made for every
        one of the `heads`, [B, heads, G, t·G] (attention then takes it as it is); for a prefill of
        L > 1 steps it stays [B, 1, G·L, t·G], since over every head it would be as large as the scores."""
        key = (self.length, new_steps, heads, self.ancestors.size(1), dtype)
        made = self.masks.get("beam")
        if made is None or made[0] != key:
            from aiayn.nn.attention import additive_mask  # (attention imports this module)

            bias = additive_mask(self.beam_mask(new_steps), dtype)
            made = self.masks["beam"] = (key, bias.expand(-1, heads, -1, -1).contiguous() if new_steps == 1 else bias)
        return made[1]

    @staticmethod
    def plan(order: Tensor) -> tuple[Tensor, Tensor, bool] | None:
        """How to apply `order` (the same for every layer, so worked out once per step): the rows
        that change, the rows they copy from, and whether copying just those is enough (they are
        few and copy only from rows that stay, as beam search arranges it). None: gather every row,
        without asking the device which rows move (runtime.partial_cache_reorder: on a GPU)."""
        from aiayn import runtime

        if not runtime.partial_cache_reorder(order.device):
            return None
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
        if self.group > 1:  # per sentence: only the ancestry moves
            self.ancestors[: self.length] = self.ancestors[: self.length, order]
            return
        if self.k.requires_grad:  # decoding under autograd (unusual): a plain gather
            self.k, self.v = self.k.index_select(1, order), self.v.index_select(1, order)
            return
        plan = plan if plan is not None else self.plan(order)
        changed, sources, partial = plan if plan is not None else (None, None, False)
        if changed is not None and changed.numel() == 0:
            return
        # (on [T, N, h·d_k] views: a row's keys are one block, which index_select copies ~1.5× as fast
        # as a row of h blocks of d_k)
        if partial:
            for buf in (self.k, self.v):
                live = buf[: self.length].flatten(2)
                live.index_copy_(1, changed, live.index_select(1, sources))
            return
        if self._spare is None:
            self._spare = (torch.empty_like(self.k), torch.empty_like(self.v))
        k2, v2 = self._spare
        torch.index_select(self.k[: self.length].flatten(2), 1, order, out=k2[: self.length].flatten(2))
        torch.index_select(self.v[: self.length].flatten(2), 1, order, out=v2[: self.length].flatten(2))
        self._spare = (self.k, self.v)
        self.k, self.v = k2, v2

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (their number may shrink)."""
        if self.k is None:
            return
        if self.group > 1:  # whole sentences leave (beam search drops finished ones)
            sentences = rows.view(-1, self.group)[:, 0] // self.group
            self.k, self.v = self.k.index_select(0, sentences), self.v.index_select(0, sentences)
            self.ancestors = self.ancestors[:, rows]
            return
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        self._spare = None
