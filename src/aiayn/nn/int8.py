"""int8 inference on the CPU: every projection's matrix product in 8-bit integers.

A weight W [out, in] is quantized symmetrically per output channel, W ≈ s ⊙ Q with
s_o = max|W_o| / 127 and Q = round(W / s) ∈ [−127, 127]; an activation x is quantized per call
over its own range (dynamic quantization, 8-bit affine), and the product runs in PyTorch's int8
GEMM (fbgemm with VNNI's vpdpbusd where the CPU has it, or oneDNN where it measures faster, as with
AMX: `runtime.int8_engine`), accumulating in int32 and rescaling to fp32 with the bias added (without VNNI the kernel takes the weights at 7 bits:
`runtime.int8_weight_levels`). Embeddings, layer norms, softmax and attention stay in fp32.

`quantize_int8(model)` swaps each `Linear` of any model of the family for an `Int8Linear` in
place; its state dict (int8 `weight_q` + fp32 `weight_scale` + bias) saves and loads through
safetensors like any other, so a quantized checkpoint is a plain weights file.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from aiayn import runtime
from aiayn.nn.linear import Linear


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(Q int8 [out, in], s fp32 [out]) with W ≈ s[:, None] · Q, symmetric per output channel."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W held in int8 per output channel and x quantized per call (inference only).

    The kernel's packed form of the weight is made on first use and again whenever the buffers
    change (a `load_state_dict`); copies and pickles leave it behind."""

    _packed: tuple | None = None  # ((engine, buffer identity), packed weight)

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, scale = quantize_weight(linear.weight)
        out.weight_q.copy_(q)
        out.weight_scale.copy_(scale)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().float())
        return out

    def rows(self, index: Tensor) -> "Int8Linear":
        """The map to these outputs alone (a vocabulary shortlist)."""
        out = Int8Linear(self.in_features, index.numel(), bias=self.bias is not None)
        out.weight_q, out.weight_scale = self.weight_q.index_select(0, index), self.weight_scale.index_select(0, index)
        if self.bias is not None:
            out.bias = self.bias.index_select(0, index)
        return out

    def dequantized_weight(self) -> Tensor:
        return self.weight_q.float() * self.weight_scale[:, None]

    def _packed_weight(self):
        engine = runtime.int8_engine()
        key = (engine, *((t.data_ptr(), t._version) for t in (self.weight_q, self.weight_scale, self.bias) if t is not None))
        if self._packed is None or self._packed[0] != key:
            runtime.reuse_freed_memory()  # (the products' working buffers, allocated at every call, stay on the heap)
            with warnings.catch_warnings():  # quantized tensors are how this PyTorch's int8 GEMM takes its weight
                warnings.simplefilter("ignore")
                q, scale = self.weight_q.cpu(), self.weight_scale.double().cpu()
                levels = runtime.int8_weight_levels()
                if levels < 127:  # the stored 8-bit codes re-rounded to the levels this CPU's kernel takes
                    q = torch.round(q.float() * (levels / 127)).clamp(-levels, levels).to(torch.int8)
                    scale = scale * (127 / levels)
                qweight = torch._make_per_channel_quantized_tensor(q, scale, torch.zeros(self.out_features, dtype=torch.long), 0)
                with runtime.quantized_engine(engine):
                    packed = torch.ops.quantized.linear_prepack(qweight, None if self.bias is None else self.bias.float().cpu())
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """x Wᵀ + b, or with relu=True max(0, x Wᵀ + b) (fused into the kernel's output stage)."""
        if x.device.type != "cpu":
            raise RuntimeError("int8 inference runs on the CPU; on a GPU use bf16 or fp16")
        shape = x.shape
        x2d = x.reshape(-1, self.in_features).float().contiguous()
        product = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
        y = product(x2d, self._packed_weight(), False)  # 8-bit activations (see runtime.int8_weight_levels)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every `Linear` of `model` (in place) by an `Int8Linear` of its weights; returns the model,
    in eval mode. A tied output projection gets its own int8 copy; the embedding it shares stays fp32."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantization is for CPU inference: move the model to the CPU first")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    return model.eval()


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def for_precision(model: nn.Module, precision: str, where: torch.device) -> tuple[nn.Module, str]:
    """The model and precision to run inference with on `where`. The precision is resolved by
    `runtime.inference_precision` ("auto" measures); int8 asked of a float model quantizes a copy
    (the caller's model is left as it was); a quantized model (an int8 checkpoint) runs in int8
    whatever was asked, and refuses a GPU."""
    if is_int8(model):
        if where.type != "cpu":
            raise ValueError("this model's weights are int8, which runs on the CPU only")
        return model, "int8"
    precision = runtime.inference_precision(precision, where)
    if precision == "int8":
        import copy

        model = quantize_int8(copy.deepcopy(model).cpu())
    return model, precision
