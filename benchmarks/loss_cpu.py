"""The output projection and the loss on a CPU: computed together a block of rows at a time
(`train.loss.projected_label_smoothed_nll`, what training uses) against the projection followed by
the loss (`F.linear` + `label_smoothed_nll`, the logits stored whole), per shape and per recipe, in
one run.

* kernels: forward + backward of N target tokens × d_model → a V-word vocabulary with label
  smoothing 0.1, fp32 and (where the CPU has bf16 units) bf16 autocast, milliseconds (median of
  --repeats);
* recipes: training items per second of shipped recipes (--configs) each way, in the recipe's own
  precision on this CPU, one run each way, back to back (a VM's speed drifts between runs: the kernel
  table is the measurement).

    .venv/bin/python benchmarks/loss_cpu.py
    .venv/bin/python benchmarks/loss_cpu.py --configs rnnsearch-tiny --updates 60

Prints two tables and writes benchmarks/results/loss_cpu.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from precision_train import add_recipe_options, recipes_from_args  # noqa: E402

from aiayn import runtime  # noqa: E402
from aiayn.tasks import lm, translation  # noqa: E402
from aiayn.train.loss import label_smoothed_nll, projected_label_smoothed_nll  # noqa: E402

SHAPES = [  # (N target tokens, d_model, V): an rnnsearch-tiny batch, a quickstart batch, gpt-tiny, base at 32k
    (2040, 128, 8000),
    (3000, 192, 4000),
    (4096, 128, 4000),
    (2048, 512, 32000),
]


def separate(hidden, weight, bias, target, epsilon):
    """The projection, then the loss: the [N, V] logits stored whole."""
    return label_smoothed_nll(F.linear(hidden, weight, bias), target, epsilon)


def time_loss(loss_fn, shape, precision: str, repeats: int) -> float:
    """Median milliseconds of one forward and backward pass."""
    n, d, v = shape
    hidden = torch.randn(n, d, requires_grad=True)
    weight = (torch.randn(v, d) * d**-0.5).requires_grad_()
    target = torch.randint(0, v, (n,))
    times = []
    for i in range(repeats + 2):
        hidden.grad = weight.grad = None
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = loss_fn(hidden, weight, None, target, 0.1)
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return 1000 * sorted(times)[len(times) // 2]


@contextlib.contextmanager
def using(loss_fn):
    """Within this block, the training tasks compute `loss_fn`."""
    translation.projected_label_smoothed_nll = lm.projected_label_smoothed_nll = loss_fn
    try:
        yield
    finally:
        translation.projected_label_smoothed_nll = lm.projected_label_smoothed_nll = projected_label_smoothed_nll


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9, help="timed passes per kernel cell (default 9)")
    add_recipe_options(p, "quickstart,rnnsearch-tiny,gpt-tiny", 60, 15)
    p.add_argument("--out", default=str(HERE / "results" / "loss_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    precisions = ["fp32", "bf16"] if runtime.cpu_has_bf16() else ["fp32"]

    kernels = []
    print(f"{'N, d, V':>20} {'precision':>9} {'separate ms':>12} {'blocks ms':>10} {'separate/blocks':>16}")
    for shape in [] if args.skip_kernels else SHAPES:
        for precision in precisions:
            whole = time_loss(separate, shape, precision, args.repeats)
            blocks = time_loss(projected_label_smoothed_nll, shape, precision, args.repeats)
            kernels.append({"shape": list(shape), "precision": precision, "separate_ms": round(whole, 1), "blocks_ms": round(blocks, 1)})
            print(f"{str(list(shape)):>20} {precision:>9} {whole:12.1f} {blocks:10.1f} {whole / blocks:15.2f}×", flush=True)

    recipes = recipes_from_args(args, {"separate": lambda: using(separate), "blocks": lambda: using(projected_label_smoothed_nll)})

    result = {
        "benchmark": "loss_cpu",
        "machine": runtime.machine(args.threads),
        "settings": {"repeats": args.repeats, "updates": args.updates, "skip": args.skip, "label_smoothing": 0.1},
        "kernels": kernels,
        "recipes": recipes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
