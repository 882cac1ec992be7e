"""What bf16 autocast gains in training speed on this CPU, preset by preset: the same recipe and
data trained for the same updates in fp32 and in bf16, back to back.

Each preset trains on its own kind of data, prepared once: the shipped Bible corpus (joint BPE of
4,000 pieces) for the translation and language models, Debian's dataset-fashion-mnist for ViT and
DiT (skipped where it is not installed), the generated shapes scenes for CLIP. The figure is
items per second (real tokens, or images, or image-caption pairs) between the log line at
--skip updates and the last one (no checkpoint or validation falls between them), and the loss at
the end, to show that both runs learn alike.

    .venv/bin/python benchmarks/precision_train.py                    # every preset, 200 updates each way
    .venv/bin/python benchmarks/precision_train.py --configs gpt-tiny,small --updates 100

Prints a table and writes benchmarks/results/precision_train.json. On a CPU without bf16 units
(`aiayn.runtime.cpu_has_bf16`) bf16 runs at about a quarter of fp32's speed: the script says so
and stops unless given --force.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from aiayn.runtime import cpu_has_bf16, machine  # noqa: E402

DATA = {  # config -> the kind of data it trains on
    "quickstart": "translation",
    "small": "translation",
    "rnnsearch-tiny": "translation",
    "gpt-tiny": "text",
    "vit-tiny": "fashion-mnist",
    "dit-tiny": "fashion-mnist",
    "clip-tiny": "shapes",
}
FASHION = Path("/usr/share/datasets/fashion-mnist")


def prepare(kind: str, work: Path) -> Path | None:
    out = work / kind
    if (out / "meta.json").exists():
        return out
    if kind in ("translation", "text"):
        from aiayn.data.binarize import PrepareOptions
        from aiayn.data.binarize import prepare as prepare_parallel
        from aiayn.data.shipped import write_shipped_corpus
        from aiayn.data.text import TextOptions, prepare_text

        corpus = write_shipped_corpus(work / "corpus")
        if kind == "translation":
            options = PrepareOptions(vocab_size=4000, progress=False)
            prepare_parallel({"train": corpus["train"], "valid": corpus["valid"]}, out, options, force=True, log=lambda m: None)
        else:
            prepare_text({"train": [corpus["train"][0]], "valid": [corpus["valid"][0]]}, out, TextOptions(vocab_size=4000, progress=False))
        return out
    if kind == "fashion-mnist" and not FASHION.exists():
        return None
    import subprocess

    task = "images" if kind == "fashion-mnist" else "image-text"
    command = [sys.executable, "-m", "aiayn", "prepare", "--task", task, "--dataset", kind, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"aiayn prepare --dataset {kind} failed:\n{done.stderr}")
    return out


def train(config: str, data: Path, run: Path, precision: str, updates: int, skip: int, threads: int) -> dict:
    from aiayn.train.config import load_config
    from aiayn.train.trainer import Trainer

    shutil.rmtree(run, ignore_errors=True)
    overrides = {
        "max_updates": updates,
        "max_time": 0,
        "validate_every": 0,
        "save_every": 0,
        "log_every": skip,
        "precision": precision,
        "threads": threads,
    }
    cfg = load_config(config, overrides)
    trainer = Trainer(cfg, data, run, log=lambda *a: None, progress=False)
    trainer.train()
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    logged = [e for e in lines if e["type"] == "train" and e["step"] >= skip]
    first, last = logged[0], logged[-1]
    seconds = last["time"] - first["time"]
    return {
        "precision": trainer.precision,
        "updates": last["step"] - first["step"],
        "items_per_s": round((last["tokens_seen"] - first["tokens_seen"]) / seconds, 1),
        "ms_per_update": round(1000 * seconds / (last["step"] - first["step"]), 1),
        "final_loss": last["loss"],
    }


def add_recipe_options(p, configs: str, updates: int, skip: int) -> None:
    """The options of a benchmark that also trains recipes each way (recipes_from_args)."""
    p.add_argument("--configs", default=configs, help="recipes to train each way ('' for none; default %(default)s)")
    p.add_argument("--updates", type=int, default=updates, help="updates per recipe run (default %(default)s)")
    p.add_argument("--skip", type=int, default=skip, help="updates left out of the timing at the start (default %(default)s)")
    p.add_argument("--skip-kernels", action="store_true", help="time the recipes only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", help="directory for the recipes' data and runs (default: a temporary one)")


def recipes_from_args(args, ways: dict) -> list[dict]:
    """recipes_each_way for the recipes add_recipe_options asked for, in --work (or a temporary
    directory); prints their table."""
    configs = [c for c in args.configs.split(",") if c]
    if not configs:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = recipes_each_way(configs, ways, work, args.updates, args.skip, args.threads)
    print_recipes(rows, ways)
    return rows


def recipes_each_way(configs: list[str], ways: dict, work: Path, updates: int, skip: int, threads: int) -> list[dict]:
    """Train each recipe in its own precision once per way, back to back. `ways` maps a name to a
    function returning a context manager that sets the way up (the first way is the baseline).
    Returns a row per recipe: items per second each way and the last way over the first."""
    from aiayn.train.config import load_config

    rows = []
    for config in configs:
        data = prepare(DATA[config], work)
        if data is None:
            print(f"{config}: skipped ({FASHION} is not installed)", flush=True)
            continue
        runs = {}
        for way, setup in ways.items():
            with setup():
                runs[way] = train(config, data, work / f"run-{config}-{way}", load_config(config).precision, updates, skip, threads)
        first, last = runs[next(iter(ways))], runs[way]
        rows.append(
            {
                "config": config,
                "precision": last["precision"],
                **{f"{name}_items_per_s": run["items_per_s"] for name, run in runs.items()},
                "speedup": round(last["items_per_s"] / first["items_per_s"], 3),
            }
        )
    return rows


def print_recipes(rows: list[dict], ways: dict) -> None:
    print(f"\n{'recipe':>15} {'precision':>9}" + "".join(f" {name + ' items/s':>18}" for name in ways) + f" {'ratio':>7}")
    for r in rows:
        each = "".join(f" {r[f'{name}_items_per_s']:18,.0f}" for name in ways)
        print(f"{r['config']:>15} {r['precision']:>9}{each} {r['speedup']:6.2f}×")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(DATA), help="comma-separated recipes (default: %(default)s)")
    p.add_argument("--updates", type=int, default=200, help="updates per run (default 200)")
    p.add_argument("--skip", type=int, default=20, help="updates left out of the timing at the start (default 20)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true", help="run bf16 even where the CPU has no bf16 units")
    p.add_argument("--work", help="directory for the data and runs (default: a temporary one)")
    p.add_argument("--out", default=str(HERE / "results" / "precision_train.json"))
    args = p.parse_args()
    unknown = [c for c in args.configs.split(",") if c not in DATA]
    if unknown:
        p.error(f"--configs {','.join(unknown)}: this benchmark knows {', '.join(DATA)}")
    if args.skip < 1 or args.updates < 2 * args.skip:
        p.error("--updates must be at least twice --skip (the timing runs from the log line at --skip to the last one)")
    if not cpu_has_bf16() and not args.force:
        sys.exit("this CPU has no bf16 units (AVX-512 BF16 or AMX): bf16 would run at about 0.25× fp32; --force runs it anyway")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for config in args.configs.split(","):
            data = prepare(DATA[config], work)
            if data is None:
                print(f"{config}: skipped ({FASHION} is not installed)", flush=True)
                continue
            runs = {}
            for precision in ("fp32", "bf16"):
                started = time.time()
                runs[precision] = train(config, data, work / f"run-{config}-{precision}", precision, args.updates, args.skip, args.threads)
                print(f"{config} {precision}: {runs[precision]['items_per_s']:,.0f}/s ({time.time() - started:.0f} s)", flush=True)
            rows.append(
                {
                    "config": config,
                    "data": DATA[config],
                    **runs,
                    "speedup": round(runs["bf16"]["items_per_s"] / runs["fp32"]["items_per_s"], 3),
                }
            )

    print(f"\n{'config':16} {'items/s fp32':>13} {'items/s bf16':>13} {'bf16/fp32':>10} {'loss fp32':>10} {'loss bf16':>10}")
    for r in rows:
        f, b = r["fp32"], r["bf16"]
        print(
            f"{r['config']:16} {f['items_per_s']:>13,.0f} {b['items_per_s']:>13,.0f} {r['speedup']:>9.2f}× {f['final_loss']:>10.4f} {b['final_loss']:>10.4f}"
        )
    result = {
        "benchmark": "precision_train",
        "machine": machine(args.threads),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
