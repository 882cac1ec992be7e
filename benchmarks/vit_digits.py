"""The digits recipe (configs/vit-digits.yaml) over seeds and precisions: how far its test accuracy
moves, and how long it takes, on this CPU.

scikit-learn's 8 × 8 digits (1,437 train / 180 valid / 180 test images, prepared with `aiayn prepare
--task images --dataset digits`); each run trains the recipe's fixed number of updates from its seed
in the given precision and is scored on valid and test (each image 0.56 points). --set KEY=VALUE
changes a key of the recipe for every run: a trial, judged on valid.

    .venv/bin/python benchmarks/vit_digits.py                                  # seeds 1-3, fp32 and bf16: ~5 minutes
    .venv/bin/python benchmarks/vit_digits.py --seeds 1,2,3,4,5 --precisions fp32 --set model.patch_stem=conv

Prints a table and writes benchmarks/results/vit_digits.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from aiayn.data.images import ImageSplit, prepare_images  # noqa: E402
from aiayn.io.checkpoint import load_model  # noqa: E402
from aiayn.runtime import machine  # noqa: E402
from aiayn.tasks.images import evaluate_split  # noqa: E402
from aiayn.train.config import load_config, merge, parse_overrides  # noqa: E402
from aiayn.train.trainer import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="vit-digits")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated training precisions (default fp32,bf16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the recipe (repeatable)")
    p.add_argument("--out", default=str(HERE / "results" / "vit_digits.json"))
    args = p.parse_args()
    if bad := [item for item in args.set if "=" not in item]:
        p.error(f"--set {bad[0]!r}: expected KEY=VALUE")
    overrides = parse_overrides([f"--{item}" for item in args.set])
    seeds = [int(s) for s in args.seeds.split(",")]
    precisions = args.precisions.split(",")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare_images("digits", data, log=lambda *a: None)
        splits = {name: ImageSplit(data, name) for name in ("valid", "test")}
        for precision in precisions:
            for seed in seeds:
                cfg = load_config(args.config, merge({"seed": seed, "precision": precision, "threads": args.threads}, overrides))
                run = Path(tmp) / f"run-{precision}-{seed}"
                started = time.time()
                Trainer(cfg, data, run, log=lambda *a: None, progress=False).train()
                seconds = time.time() - started
                model, _ = load_model(run)
                row = {"precision": precision, "seed": seed, "updates": cfg.max_updates, "train_seconds": round(seconds, 1)}
                for name, split in splits.items():
                    row[f"{name}_accuracy"] = round(
                        evaluate_split(model, split, split.meta["image"], torch.device("cpu"))["valid_accuracy"], 2
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'precision':>9} {'seed':>5} {'seconds':>8} {'valid %':>8} {'test %':>8}")
    for r in rows:
        print(f"{r['precision']:>9} {r['seed']:>5} {r['train_seconds']:>8.1f} {r['valid_accuracy']:>8.2f} {r['test_accuracy']:>8.2f}")
    summary = {}
    for precision in precisions:
        tests = [r["test_accuracy"] for r in rows if r["precision"] == precision]
        valids = [r["valid_accuracy"] for r in rows if r["precision"] == precision]
        summary[precision] = {
            "test_min": min(tests),
            "test_mean": round(sum(tests) / len(tests), 2),
            "valid_mean": round(sum(valids) / len(valids), 2),
            "seconds_max": max(r["train_seconds"] for r in rows if r["precision"] == precision),
        }
        s = summary[precision]
        print(
            f"{precision}: test min {s['test_min']:.2f}%, mean {s['test_mean']:.2f}%; valid mean {s['valid_mean']:.2f}%; slowest {s['seconds_max']:.1f} s"
        )
    result = {
        "benchmark": "vit_digits",
        "machine": machine(args.threads),
        "settings": {"config": args.config, "seeds": seeds, "precisions": precisions, "threads": args.threads, "set": overrides},
        "rows": rows,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(args.out).with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
