"""The Transformer block of §3.1 and what it is made of: the feed-forward network (§3.3), dropout
(§5.4), the residual connection with its layer norm, written once, and the stack of N blocks.

One `Block` serves every model of the family: the paper's encoder layer (self-attention, FFN),
its decoder layer (causal self-attention, cross-attention, FFN), a GPT block (causal, no
cross-attention), a ViT or CLIP block (pre-norm), and a DiT block (a norm whose shift, scale and
gate come from a conditioning vector: `Residual`'s modulation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn import runtime
from aiayn.nn.attention import CrossAttention, Packing, SelfAttention
from aiayn.nn.cache import KVCache
from aiayn.nn.linear import Linear


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


# name -> (function, Hugging Face's name for it). relu is the paper's; swish/silu is Marian's (OPUS-MT),
# gelu the erf form (BERT, ViT), gelu_tanh GPT-2's approximation ("gelu_new" in Hugging Face), quick_gelu
# OpenAI CLIP's x·σ(1.702x).
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], str]] = {
    "relu": (F.relu, "relu"),
    "gelu": (F.gelu, "gelu"),
    "gelu_tanh": (_gelu_tanh, "gelu_new"),
    "swish": (F.silu, "swish"),
    "silu": (F.silu, "swish"),
    "quick_gelu": (_quick_gelu, "quick_gelu"),
}


class Dropout(nn.Module):
    """§5.4 dropout: zero each element with probability p, scale the rest by 1/(1−p).

    Where `runtime.int16_dropout` says so (the CPU) the keep-mask comes from 16-bit random
    integers, about twice as fast as Bernoulli sampling forward and backward (p is exact to
    1/32768); elsewhere it is `F.dropout`.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.threshold = p, round(p * 32768)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not runtime.int16_dropout(x):
            return F.dropout(x, self.p, training=True)
        keep = torch.empty(x.shape, dtype=torch.int16).random_() >= self.threshold  # random_ draws from [0, 32767]
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Module):
    """§3.3 Position-wise Feed-Forward Network, Eq. (2): FFN(x) = max(0, x W1 + b1) W2 + b2.

    relu is the paper's activation; the others of ACTIVATIONS are options. `activation_dropout`
    (tensor2tensor's relu_dropout) is off in the paper presets.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", activation_dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (one of {', '.join(ACTIVATIONS)})")
        self.w1 = Linear(d_model, d_ff, bias=bias)
        self.w2 = Linear(d_ff, d_model, bias=bias)
        self.activation = ACTIVATIONS[activation][0]
        self.dropout = Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:  # [.., d_model] -> [.., d_ff] -> [.., d_model]
        if self.activation is F.relu:  # max(0, ·) fused into the product where its kernel can (Linear, Int8Linear)
            return self.w2(self.dropout(self.w1(x, relu=True)))
        return self.w2(self.dropout(self.activation(self.w1(x))))


Modulation = tuple[Tensor, Tensor, Tensor]  # (shift, scale, gate), each broadcastable to x


class Residual(nn.Module):
    """§3.1: "the output of each sub-layer is LayerNorm(x + Sublayer(x))", with dropout on the
    sub-layer's output (§5.4 "Residual Dropout"). pre_norm=True is x + Dropout(Sublayer(LayerNorm(x)))
    (Wang et al. 2019; GPT-2, ViT): it trains stably at higher learning rates.

    The hook for a conditioned norm: `modulation` = (shift, scale, gate) computed from a
    conditioning vector gives DiT's adaLN-Zero (Peebles & Xie 2023, §3.2),
    x + gate · Sublayer(LayerNorm(x) · (1 + scale) + shift), pre-norm only.
    Two options of deep pre-norm stacks (ViT, CaiT, DeiT): `layer_scale`, a learned per-channel
    scale of the sub-layer's output (Touvron et al. 2021, "Going deeper with Image Transformers",
    §2), passed in by the block that owns it; and `drop_path`, stochastic depth (Huang et al. 2016):
    while training, each example skips the sub-layer with probability drop_path.
    Holds no parameters: the norm belongs to the block, so its state-dict key stays the block's.
    """

    def __init__(self, dropout: float, pre_norm: bool, drop_path: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.dropout = Dropout(dropout)
        self.pre_norm, self.drop_path = pre_norm, drop_path

    def forward(
        self, x: Tensor, norm: nn.Module, sublayer: Callable, modulation: Modulation | None = None, layer_scale: Tensor | None = None
    ):
        """sublayer(h) returns a tensor, or (tensor, extra); returns (new x, extra or None)."""
        if not self.pre_norm:
            if modulation is not None:
                raise ValueError("a conditioned norm (modulation) needs pre_norm=True")
            out, extra = _split(sublayer(x))
            return norm(x + self._branch(out, layer_scale)), extra
        h = norm(x)
        if modulation is not None:
            shift, scale, gate = modulation
            h = h * (1 + scale) + shift
        out, extra = _split(sublayer(h))
        if modulation is not None:
            out = gate * out
        return x + self._branch(out, layer_scale), extra

    def _branch(self, out: Tensor, layer_scale: Tensor | None) -> Tensor:
        if layer_scale is not None:
            out = out * layer_scale
        out = self.dropout(out)
        if self.drop_path and self.training:  # one keep/drop per example (the first dimension)
            keep = torch.rand((out.size(0),) + (1,) * (out.dim() - 1), device=out.device) >= self.drop_path
            out = out * keep.to(out.dtype) / (1.0 - self.drop_path)
        return out


def _split(out):
    return out if isinstance(out, tuple) else (out, None)


class Block(nn.Module):
    """§3.1 one layer of a stack: self-attention (causal in a decoder, §3.2.3), encoder-decoder
    attention when `cross` (§3.2.3), and the feed-forward network (§3.3), each wrapped by `Residual`.

    The paper's encoder layer is Block(causal=False, cross=False), its decoder layer
    Block(causal=True, cross=True); a GPT block is Block(causal=True, pre_norm=True); a ViT block
    Block(pre_norm=True, activation="gelu"), with stochastic depth and LayerScale as options.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        causal: bool = False,
        cross: bool = False,
        pre_norm: bool = False,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        activation: str = "relu",
        activation_dropout: float = 0.0,
        bias: bool = True,
        norm_eps: float = 1e-5,
        norm_affine: bool = True,
        drop_path: float = 0.0,
        layer_scale: float = 0.0,
    ):
        super().__init__()

        def norm() -> nn.LayerNorm:
            return nn.LayerNorm(d_model, eps=norm_eps, elementwise_affine=norm_affine)

        self.self_attn = SelfAttention(d_model, n_heads, causal=causal, dropout=attn_dropout, bias=bias)
        self.self_attn_norm = norm()
        if cross:
            self.cross_attn = CrossAttention(d_model, n_heads, dropout=attn_dropout, bias=bias)
            self.cross_attn_norm = norm()
        self.ffn = FeedForward(d_model, d_ff, activation, activation_dropout, bias)
        self.ffn_norm = norm()
        self.residual = Residual(dropout, pre_norm, drop_path)
        if layer_scale:  # LayerScale (CaiT): one learned scale per channel and sub-layer, starting small
            self.self_attn_scale = nn.Parameter(torch.full((d_model,), float(layer_scale)))
            if cross:
                self.cross_attn_scale = nn.Parameter(torch.full((d_model,), float(layer_scale)))
            self.ffn_scale = nn.Parameter(torch.full((d_model,), float(layer_scale)))

    @property
    def has_cross(self) -> bool:
        return hasattr(self, "cross_attn")

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        memory: tuple[Tensor, Tensor] | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
        modulation: Sequence[Modulation] | None = None,
        at: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: [N, L, d_model], or its real tokens [n, d_model] with their `packing`.
        mask: self-attention mask (e.g. [B, 1, 1, L], True at real tokens); memory: the cross-attention's
        keys and values (`CrossAttention.keys_values`), memory_mask: [B, 1, 1, S]; cache: this layer's
        KV cache (incremental decoding); modulation: one (shift, scale, gate) per sub-layer; at: [N]
        one position per row, for the block's output there alone [N, 1, d_model] (the last block of an
        encoder whose output is pooled there: its other positions are never used).

        Returns the new x and, with need_weights, the attention weights: the cross-attention's
        where the block has one ([N, h, L, S]), else the self-attention's ([N, h, L, L])."""
        mod = modulation or (None, None, None)
        scale = lambda name: getattr(self, name, None)  # noqa: E731 - LayerScale, where the block has it
        if at is not None:
            if modulation is not None or cache is not None or packing is not None:
                raise ValueError("`at` goes without modulation, a KV cache or packing")
            return self._forward_at(x, at, mask, need_weights, scale)
        x, weights = self.residual(
            x,
            self.self_attn_norm,
            lambda h: self.self_attn(h, mask=mask, cache=cache, need_weights=need_weights and not self.has_cross, packing=packing),
            mod[0],
            scale("self_attn_scale"),
        )
        if self.has_cross:
            x, weights = self.residual(
                x,
                self.cross_attn_norm,
                lambda h: self.cross_attn(h, memory, mask=memory_mask, need_weights=need_weights, packing=packing),
                mod[1] if len(mod) > 2 else None,
                scale("cross_attn_scale"),
            )
        x, _ = self.residual(x, self.ffn_norm, self.ffn, mod[-1], scale("ffn_scale"))
        return x, weights

    def _forward_at(self, x: Tensor, at: Tensor, mask: Tensor | None, need_weights: bool, scale) -> tuple[Tensor, Tensor | None]:
        """The block at one position per row: self-attention from that position over all of x, then
        the residual and the feed-forward network on that position alone."""
        if self.has_cross:
            raise ValueError("a block with cross-attention computes every position (no `at`)")
        here = x[torch.arange(x.size(0), device=x.device), at][:, None]  # [N, 1, d]
        source = self.self_attn_norm(x) if self.residual.pre_norm else x
        out, weights = self.self_attn(source, mask=mask, need_weights=need_weights, at=at)
        here = here + self.residual._branch(out, scale("self_attn_scale"))
        if not self.residual.pre_norm:
            here = self.self_attn_norm(here)
        here, _ = self.residual(here, self.ffn_norm, self.ffn, None, scale("ffn_scale"))
        return here, weights


class Stack(nn.ModuleList):
    """§3.1: "a stack of N identical layers". A ModuleList of blocks (state-dict keys `0.…`, `1.…`)
    that runs them in turn; `compile_blocks()` compiles each for training."""

    def __init__(self, blocks):
        super().__init__(blocks)
        self._compiled: dict = {}

    def forward(
        self,
        x: Tensor,
        *,
        caches: Sequence[KVCache] | None = None,
        memories: Sequence | None = None,
        modulations: Sequence | None = None,
        last_at: Tensor | None = None,
        **kwargs,
    ) -> tuple[Tensor, list]:
        """Run every block on x; `caches`, `memories` and `modulations` give each block its own KV
        cache, cross-attention keys/values and (shift, scale, gate) per sub-layer; `last_at` ([N] one position per row) has the last block compute
        only there (the stack's output is then [N, 1, d_model]); other keyword arguments go to every
        block. Returns x and the per-block attention weights (with need_weights)."""
        weights = []
        for i, block in enumerate(self):
            if caches is not None:
                kwargs["cache"] = caches[i]
            if memories is not None:
                kwargs["memory"] = memories[i]
            if modulations is not None:
                kwargs["modulation"] = modulations[i]
            if last_at is not None and i == len(self) - 1:
                kwargs["at"] = last_at
            x, w = (block if caches is not None else self._run(block))(x, **kwargs)  # a KV cache is Python state: eager
            weights.append(w)
        return x, weights

    def compile_blocks(self) -> None:
        """Compile each block with torch.compile ("regional compilation"), for training: the blocks
        share one graph, compiled once with dynamic shapes, so token-bucket batches of any size run
        without recompiling (whether padding is skipped is worked out outside the graphs). Inside a
        block the compiler fuses what eager PyTorch runs as separate kernels: dropout, residual add
        and layer norm, bias and ReLU, the casts of mixed precision. Evaluation and incremental
        decoding (whose KV cache is Python state) stay eager; parameters and keys are unchanged."""
        self._compiled = {block: torch.compile(block, dynamic=True) for block in self}

    def _run(self, block: nn.Module) -> nn.Module:
        """The block's compiled form while training, where compile_blocks() made one; else the block."""
        return self._compiled.get(block, block) if self.training else block

    def __getstate__(self) -> dict:  # copies and pickles leave the compiled forms behind (they hold dynamo's state)
        state = self.__dict__.copy()
        state["_compiled"] = {}
        return state
