"""Attention on a CPU: PyTorch's fused kernel against Eq. (1) spelled out (two batched products and
a softmax), per shape and per training recipe, in one run.

`aiayn.runtime.attention_spelled_out` spells attention out on a CPU for at most
`SPELLED_OUT_ATTENTION_MAX_KEYS` keys (under bf16 autocast the fused kernel itself runs in fp32,
`runtime.attention_in_fp32`). This script shows where that bound comes from and what it gains:

* kernels: forward + backward of one attention [B, h, L, d_k] (no mask, and a padding mask), fp32
  and bf16 autocast, the fused path against the spelled-out path, milliseconds (mean of --repeats);
* recipes: training items per second of shipped recipes (--configs) with the bound as shipped
  against 0 (the fused kernel everywhere), each in its own precision on this CPU, one run each way,
  back to back (a VM's speed drifts between runs: the kernel table is the measurement).

    .venv/bin/python benchmarks/attention_cpu.py
    .venv/bin/python benchmarks/attention_cpu.py --configs vit-tiny --updates 120

Prints two tables and writes benchmarks/results/attention_cpu.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from precision_train import add_recipe_options, recipes_from_args  # noqa: E402

from aiayn import runtime  # noqa: E402
from aiayn.nn.attention import scaled_dot_product_attention  # noqa: E402

SHAPES = [  # [B, h, L, d_k]: a vit-tiny layer, tiny/quickstart translation batches, longer sequences
    (128, 4, 50, 32),
    (64, 4, 34, 32),
    (32, 8, 30, 64),
    (16, 4, 64, 32),
    (16, 4, 128, 32),
    (8, 4, 256, 32),
    (4, 8, 512, 64),
]


@contextlib.contextmanager
def spelled_out_bound(max_keys: int):
    """Within this block, attention is spelled out for at most `max_keys` keys (0: never)."""
    saved, runtime.SPELLED_OUT_ATTENTION_MAX_KEYS = runtime.SPELLED_OUT_ATTENTION_MAX_KEYS, max_keys
    try:
        yield
    finally:
        runtime.SPELLED_OUT_ATTENTION_MAX_KEYS = saved


def time_attention(shape, precision: str, masked: bool, max_keys: int, repeats: int) -> float:
    """Milliseconds for one forward and backward pass through `scaled_dot_product_attention` with
    the spelled-out bound set to `max_keys` (0: the fused kernel)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = (torch.arange(shape[2]) < shape[2] - 3).view(1, 1, 1, -1).expand(shape[0], 1, 1, -1) if masked else None
    grad = torch.randn(*shape, dtype=dtype)

    def once():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, _ = scaled_dot_product_attention(q, k, v, mask)
        out.backward(grad)

    with spelled_out_bound(max_keys):
        for _ in range(3):
            once()
        started = time.perf_counter()
        for _ in range(repeats):
            once()
        return 1000 * (time.perf_counter() - started) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed passes per kernel cell (default 30)")
    add_recipe_options(p, "quickstart,vit-tiny,dit-tiny", 80, 20)
    p.add_argument("--out", default=str(HERE / "results" / "attention_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bound = runtime.SPELLED_OUT_ATTENTION_MAX_KEYS
    precisions = ["fp32", "bf16"] if runtime.cpu_has_bf16() else ["fp32"]

    kernels = []
    print(f"{'B, h, L, d_k':>18} {'mask':>5} {'precision':>9} {'fused ms':>9} {'spelled ms':>11} {'fused/spelled':>14}")
    for shape in [] if args.skip_kernels else SHAPES:
        for masked in (False, True):
            for precision in precisions:
                fused = time_attention(shape, precision, masked, 0, args.repeats)
                spelled = time_attention(shape, precision, masked, 1 << 30, args.repeats)
                kernels.append(
                    {
                        "shape": list(shape),
                        "masked": masked,
                        "precision": precision,
                        "fused_ms": round(fused, 2),
                        "spelled_ms": round(spelled, 2),
                    }
                )
                print(
                    f"{str(list(shape)):>18} {'yes' if masked else 'no':>5} {precision:>9} {fused:9.2f} {spelled:11.2f} {fused / spelled:13.2f}×",
                    flush=True,
                )

    recipes = recipes_from_args(args, {"fused": lambda: spelled_out_bound(0), "spelled": lambda: spelled_out_bound(bound)})

    result = {
        "benchmark": "attention_cpu",
        "machine": runtime.machine(args.threads),
        "settings": {"repeats": args.repeats, "updates": args.updates, "skip": args.skip, "max_keys": bound},
        "kernels": kernels,
        "recipes": recipes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
