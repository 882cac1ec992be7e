"""End-to-end training throughput on the Bible corpus: aiayn against Hugging Face, side by side.

For each model size (default: small and base), both libraries train for the same number of
updates on the same data, vocabulary and model dimensions, with their own batching as a user
would set it, and the same number of target tokens per update:
  * aiayn: `aiayn train` with token-bucket batches (max_tokens chosen so that a batch holds the
    same mean number of real target tokens as HF's),
  * HF: `Seq2SeqTrainer` + `MarianMTModel`, `DataCollatorForSeq2Seq`, length-grouped batches
    (benchmarks/hf_marian.py).
Data loading, collation, padding and the optimizer are all included; real (non-pad) source +
target tokens per second of training is the figure. The two runs of a size go back to back.

The figure is taken over updates skip+1 … updates, timed from the end of update `skip` to the end
of the last one, for both libraries alike. The first updates are left out because they hold
one-off costs (allocator warm-up, the first-touch of the optimizer state), and because HF's
length-grouped sampler deliberately puts its longest batch first (so that an out-of-memory error
shows at once): over a short run that batch would weigh far more than its share.

    .venv/bin/python benchmarks/train_throughput.py                      # small and base, 20 updates each
    .venv/bin/python benchmarks/train_throughput.py --sizes small --updates 10 --skip 2

Prints a table and writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "bible-en-es"


def aiayn_max_tokens(dataset: Path, tgt_tokens_per_update: float) -> tuple[int, float]:
    """The max_tokens whose token-bucket batches hold tgt_tokens_per_update real target tokens on
    average, and that average (over an epoch)."""
    from aiayn.data import ParallelDataset, TokenBucketSampler

    ds = ParallelDataset(dataset)
    real = float((ds.tgt_lengths + 1).sum())

    @functools.cache
    def batches(max_tokens: int) -> int:
        return len(TokenBucketSampler(ds.src_lengths, ds.tgt_lengths, max_tokens, seed=1).epoch_batches(0))

    # The number of batches falls as max_tokens grows: bisect for the smallest (in steps of 16)
    # whose batches hold enough target tokens on average.
    lo, hi = 0, int(tgt_tokens_per_update * 0.5) // 16  # max_tokens = target + 16·k
    if real / batches(int(tgt_tokens_per_update) + 16 * hi) < tgt_tokens_per_update:
        lo = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if real / batches(int(tgt_tokens_per_update) + 16 * mid) >= tgt_tokens_per_update:
            hi = mid
        else:
            lo = mid + 1
    max_tokens = int(tgt_tokens_per_update) + 16 * lo
    n = batches(max_tokens)
    return max_tokens, real / n


def window(ends: list[float], tokens: list[float], skip: int) -> dict:
    """Tokens per second over updates skip+1 … len(ends), and each update's seconds. ends[i]: seconds
    at the end of update i+1; tokens[i]: real source + target tokens of update i+1."""
    if len(ends) <= skip:
        raise SystemExit(f"only {len(ends)} updates ran; need more than --skip {skip}")
    seconds = ends[-1] - ends[skip - 1] if skip else ends[-1]
    n_tokens = sum(tokens[skip:])
    return {
        "window_updates": len(ends) - skip,
        "window_seconds": round(seconds, 2),
        "window_tokens": int(n_tokens),
        "tokens_per_s": n_tokens / seconds,
        "first_update_seconds": round(ends[0], 2),
        "update_seconds": [round(b - a, 3) for a, b in zip([0.0] + ends, ends)],
    }


def run_aiayn(
    dataset: Path,
    size: str,
    updates: int,
    skip: int,
    max_tokens: int,
    threads: int,
    work: Path,
    precision: str,
    device: str = "cpu",
    extra: tuple[str, ...] = (),
    name: str = "",
) -> dict:
    run = work / f"aiayn-{size}{name}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cmd = [
        sys.executable,
        "-m",
        "aiayn",
        "train",
        "--data",
        str(dataset),
        "--config",
        size,
        "--out",
        str(run),
        "--max-updates",
        str(updates),
        "--max-tokens",
        str(max_tokens),
        "--update-freq",
        "1",
        "--threads",
        str(threads),
        "--validate-every",
        "0",
        "--valid-bleu",
        "false",
        "--save-every",
        "1000000",
        "--log-every",
        "1",
        "--lr-schedule",
        "inverse_sqrt",
        "--lr",
        "0.001",
        "--warmup-steps",
        "400",
        "--precision",
        precision,
        "--device",
        device,
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [e for e in log if e.get("type") == "train"]
    if [e["step"] for e in train] != list(range(1, updates + 1)):
        raise SystemExit(f"expected a train record for each of {updates} updates in {run / 'log.jsonl'}")
    seen = [0] + [e["tokens_seen"] for e in train]
    tokens = [b - a for a, b in zip(seen, seen[1:])]
    return {"updates": len(train), "max_tokens": max_tokens, **window([e["time"] for e in train], tokens, skip)}


def run_hf(
    dataset: Path,
    size: str,
    updates: int,
    skip: int,
    tgt_tokens_per_update: int,
    threads: int,
    work: Path,
    device: str = "cpu",
    precision: str = "fp32",
    name: str = "",
) -> dict:
    import hf_marian
    import torch

    from aiayn.data import load_meta
    from aiayn.models import TransformerConfig

    cfg = TransformerConfig.preset(size, pre_norm=False, vocab_size=load_meta(dataset)["vocab"]["src"]["size"])
    torch.set_num_threads(threads)
    result = hf_marian.train_hf(
        dataset,
        work / f"hf-{size}{name}",
        cfg,
        minutes=None,
        max_steps=updates,
        tgt_tokens_per_update=tgt_tokens_per_update,
        lr=1e-3,
        warmup_steps=400,
        threads=threads,
        device=device,
        precision=precision,
        log=lambda *a: None,
    )
    tokens = [src + tgt for src, tgt in result["step_tokens"]]
    window_tgt = sum(tgt for _, tgt in result["step_tokens"][skip:])
    return {
        "updates": result["updates"],
        "batch_size": result["batch_size"],
        "tgt_tokens_per_update": round(window_tgt / max(1, result["updates"] - skip), 1),
        **window(result["step_ends"], tokens, skip),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--sizes", default="small,base")
    p.add_argument("--updates", type=int, default=20, help="updates per run")
    p.add_argument("--skip", type=int, default=3, help="leading updates left out of the timing")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tgt-tokens-per-update", type=int, default=4096)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--precision", default="fp32", help="aiayn's precision (fp32 for a like-for-like comparison)")
    p.add_argument("--work", type=Path, default=Path("/tmp/aiayn-train-throughput"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = args.work / f"data-bpe{args.vocab_size}"
    if not (dataset / "meta.json").is_file():
        splits = sum(([f"--{s}-src", str(args.data / f"{s}.en"), f"--{s}-tgt", str(args.data / f"{s}.es")] for s in ("train", "valid")), [])
        subprocess.run(
            [sys.executable, "-m", "aiayn", "prepare", *splits, "--out", str(dataset), "--vocab-size", str(args.vocab_size), "--force"],
            check=True,
        )
    max_tokens, aiayn_tgt_per_update = aiayn_max_tokens(dataset, args.tgt_tokens_per_update)
    rows = []
    for size in args.sizes.split(","):
        a = run_aiayn(dataset, size, args.updates, args.skip, max_tokens, args.threads, args.work, args.precision)
        a["tgt_tokens_per_update"] = round(aiayn_tgt_per_update, 1)  # the epoch's mean (aiayn's log keeps src+tgt per update)
        h = run_hf(dataset, size, args.updates, args.skip, args.tgt_tokens_per_update, args.threads, args.work)
        rows.append({"size": size, "aiayn": a, "hf": h, "ratio": a["tokens_per_s"] / h["tokens_per_s"]})
        print(
            f"{size}: aiayn {a['tokens_per_s']:.0f} tok/s ({a['window_updates']} updates in {a['window_seconds']:.0f} s), "
            f"HF {h['tokens_per_s']:.0f} tok/s ({h['window_updates']} updates in {h['window_seconds']:.0f} s)",
            flush=True,
        )
    print(
        f"\nTraining throughput on the Bible corpus (src+tgt real tokens/s, {args.threads} CPU threads, updates {args.skip + 1}–{args.updates} of each run)"
    )
    print(f"{'size':<6} {'aiayn tok/s':>12} {'HF tok/s':>10} {'ratio':>6}   {'src+tgt tok/update aiayn / HF':>30}")
    for r in rows:
        print(
            f"{r['size']:<6} {r['aiayn']['tokens_per_s']:>12.0f} {r['hf']['tokens_per_s']:>10.0f} {r['ratio']:>6.2f}   "
            f"{r['aiayn']['window_tokens'] / r['aiayn']['window_updates']:>16.0f} / {r['hf']['window_tokens'] / r['hf']['window_updates']:<12.0f}"
        )
    goal = all(r["ratio"] >= 1.5 for r in rows)
    print(f"goal ≥ 1.5× HF's tokens/s: {'PASS' if goal else 'FAIL'}")
    from aiayn.runtime import machine

    record = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
        "updates": args.updates,
        "skip": args.skip,
        "machine": machine(args.threads),
        "precision": args.precision,
        "rows": rows,
        "goal_1_5x": goal,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_throughput.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {HERE / 'results' / 'train_throughput.json'}")


if __name__ == "__main__":
    main()
