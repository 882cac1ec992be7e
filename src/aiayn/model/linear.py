"""The affine maps of every projection (x Wᵀ + b), with the matrix product done by the faster library.

PyTorch's CPU build sends fp32 matrix products to Intel MKL, whose kernels are tuned for Intel's
cores. On other x86 CPUs oneDNN (also inside PyTorch) is faster for the shapes of decoding: on a
2-core AMD EPYC, 128 × 512 × 1536 runs at 63 GFLOP/s through oneDNN and 50 through MKL, and the
8,000-word output projection at 60 vs 46. CTranslate2 makes the same choice (MKL only on
GenuineIntel CPUs). For training, both are within a few percent (MKL is faster for the weight
gradient), so oneDNN is used only where no gradient is needed: decoding and evaluation.

AIAYN_GEMM=mkl|onednn|auto (default auto: oneDNN for fp32 inference on CPUs that are not Intel's).
The results agree to rounding (~1e-6 relative).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@functools.cache
def cpu_info(field: str) -> str:
    """A field of /proc/cpuinfo for the first CPU ("vendor_id", "model name", ...); "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def _resolve(choice: str) -> bool:
    if choice == "auto":
        return onednn_available() and cpu_info("vendor_id") not in ("GenuineIntel", "")
    if choice not in ("mkl", "onednn"):
        raise ValueError(f"AIAYN_GEMM={choice!r}: expected auto, mkl or onednn")
    if choice == "onednn" and not onednn_available():
        raise RuntimeError("AIAYN_GEMM=onednn, but this PyTorch build has no oneDNN linear kernel")
    return choice == "onednn"


_choice = os.environ.get("AIAYN_GEMM", "auto").lower()


def onednn_inference() -> bool:
    """Whether fp32 CPU inference goes through oneDNN (see the module docstring); worked out once per choice."""
    return _resolve(_choice)


@contextlib.contextmanager
def gemm_library(choice: str):
    """Within this block, use `choice` (auto, mkl or onednn) as AIAYN_GEMM would."""
    global _choice
    saved, _choice = _choice, choice
    try:
        onednn_inference()  # checks the choice
        yield
    finally:
        _choice = saved


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) whose no-grad fp32 CPU product may use oneDNN.

    In eval mode the weight is also kept in oneDNN's packed layout (made on first use, made again
    whenever the weight changes in place, dropped by `train()`): 1.3× faster at the 32 rows of
    greedy decoding, 1.1× at the 128 of beam search, for a second copy of the weights in memory.
    """

    _packed: tuple | None = None  # (weight identity, packed weight)

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and onednn_inference()
        ):
            weight = self.weight
            if not self.training:
                key = (weight.data_ptr(), weight._version, weight.shape)
                if self._packed is None or self._packed[0] != key:
                    self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
                weight = self._packed[1]
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def train(self, mode: bool = True) -> "Linear":
        self._packed = None
        return super().train(mode)

    def __getstate__(self) -> dict:  # copies and pickles leave the packed weight behind (it cannot be copied)
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state
