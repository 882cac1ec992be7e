"""How fast a DiT draws images on this machine in each precision of `aiayn sample --precision`
(and `aiayn serve --precision`): fp32, bf16 (autocast) and int8 (a quantized copy), the precisions
taking turns round by round, best of --rounds.

A dit-tiny-shaped model (28 × 28 × 1 in 4 × 4 patches, 6 layers of 128, 10 classes) with random
weights in every layer (the modulations too, which adaLN-Zero starts at zero: the products then
carry real values), --images images of the classes in turn, DDIM with --steps steps and guidance
--guidance (two model rows an image a step), batches of --batch. Also the mean absolute difference
of each precision's images from fp32's, in grey levels (0-255), from the same seed.

    .venv/bin/python benchmarks/dit_sampling.py              # ~2 minutes on a 2-core CPU

Prints a table and writes benchmarks/results/dit_sampling.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from common import write_record  # noqa: E402

from aiayn.generate.images import ImageGenerator  # noqa: E402
from aiayn.models.dit import DiT, DiTConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=HERE / "results" / "dit_sampling.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DiT(DiTConfig.preset("dit-tiny", in_channels=1, n_classes=10))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, parameter.size(1) ** -0.5)
    classes = [i % 10 for i in range(args.images)]
    spec = {"height": 28, "width": 28, "channels": 1}
    precisions = args.precisions.split(",")
    gens = {name: ImageGenerator(model, [str(i) for i in range(10)], spec, torch.device("cpu"), name) for name in precisions}

    def draw(name):
        return gens[name].sample(classes, args.steps, args.guidance, seed=0, batch=args.batch)[0]

    images = {name: draw(name) for name in precisions}  # warm-up, and the images to compare
    best = dict.fromkeys(precisions, float("inf"))
    for r in range(args.rounds):
        for name in precisions[r % len(precisions) :] + precisions[: r % len(precisions)]:
            started = time.perf_counter()
            draw(name)
            best[name] = min(best[name], time.perf_counter() - started)
    rows = []
    print(f"{'precision':<10} {'images/s':>9} {'vs fp32':>8} {'grey levels from fp32':>22}")
    for name in precisions:
        row = {"precision": name, "images_per_s": args.images / best[name], "seconds": best[name]}
        if "fp32" in images:
            row["vs_fp32"] = best["fp32"] / best[name]
            row["mean_abs_difference_from_fp32"] = float(np.abs(images[name].astype(float) - images["fp32"].astype(float)).mean())
        rows.append(row)
        print(
            f"{name:<10} {row['images_per_s']:9.1f} {row.get('vs_fp32', float('nan')):7.2f}x {row.get('mean_abs_difference_from_fp32', float('nan')):22.2f}"
        )
    write_record(args.output, args, rows, args.threads)


if __name__ == "__main__":
    main()
