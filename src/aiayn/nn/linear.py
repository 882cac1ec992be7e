"""The affine map of every projection, x Wᵀ + b, with the matrix product done by the faster library."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn import runtime


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) whose no-grad fp32 CPU product may use
    oneDNN (`runtime.onednn_inference`: on CPUs that are not Intel's; the results agree with MKL's
    to rounding, ~1e-6 relative).

    In eval mode the weight is also kept in oneDNN's packed layout (made on first use, made again
    whenever the weight changes in place, dropped by `train()`): 1.3× faster at the 32 rows of
    greedy decoding, 1.1× at the 128 of beam search, for a second copy of the weights in memory.
    A oneDNN call costs a fixed ~0.1 ms, so small products (under ONEDNN_MIN_MACS multiply-adds:
    a GPT's one row a step, small models) stay with MKL: on a 2-core AMD EPYC a 1 × 128 × 512
    product took 29 µs there and 106 µs through oneDNN, while 16 × 512 × 2048 took 677 µs and 360 µs.
    """

    _packed: tuple | None = None  # (weight identity, packed weight)
    ONEDNN_MIN_MACS = 1_500_000

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """x Wᵀ + b, or with relu=True max(0, x Wᵀ + b) (§3.3's first layer: fused into oneDNN's product)."""
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()  # (a compiled model's products are the compiler's)
            and x.numel() // max(x.size(-1), 1) * self.in_features * self.out_features >= self.ONEDNN_MIN_MACS
            and runtime.onednn_inference()
        ):
            weight = self.weight
            if not self.training:
                key = (weight.data_ptr(), weight._version, weight.shape)
                if self._packed is None or self._packed[0] != key:
                    self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
                weight = self._packed[1]
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "relu" if relu else "none", [], "")
        y = F.linear(x, self.weight, self.bias)
        return F.relu(y) if relu else y

    def rows(self, index: Tensor) -> "Linear":
        """The map to these outputs alone (a vocabulary shortlist), for inference: x W[index]ᵀ + b[index]."""
        out = torch.nn.utils.skip_init(
            Linear, self.in_features, index.numel(), bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype
        )  # (no random initialisation of weights about to be replaced)
        out.weight.data = self.weight.detach().index_select(0, index)
        if self.bias is not None:
            out.bias.data = self.bias.detach().index_select(0, index)
        return out.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "Linear":
        self._packed = None
        return super().train(mode)

    def __getstate__(self) -> dict:  # copies and pickles leave the packed weight behind (it cannot be copied)
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state
