"""Translation quality per CPU-minute: aiayn's recipe against Hugging Face at budgets of 3, 10 and 30 minutes.

For each budget, the Bible English→Spanish pipeline of benchmarks/bible_en_es.py (../shared's
corpus: 28,006 / 1,000 / 1,000 verse pairs, one joint BPE vocabulary, 2 CPU threads per system,
one system at a time): `aiayn train --config CONFIG --max-time M` with the last checkpoints
averaged, against Hugging Face `Seq2SeqTrainer` + `MarianMTModel` of the same dimensions and
budget; the 1,000 test verses translated with beam 4 and scored with sacreBLEU (BLEU, chrF).
The configs were chosen on the valid set (benchmarks/tune_recipe.py), never on test.

    .venv/bin/python benchmarks/budget_curve.py                              # 3, 10, 30 min: ~100 min
    .venv/bin/python benchmarks/budget_curve.py --minutes 3 10 --skip-hf
    .venv/bin/python benchmarks/budget_curve.py --minutes 30 --skip-hf --tag zen4 --keep-other-rows   # rerun one cell

Prints a table, writes benchmarks/results/budget_curve[-TAG].json (with the CPU's lscpu model, flags and
measured fp32 matmul peak), docs/budget_curve[-TAG].png, and src/aiayn/assets/budget_curve.json: the
figures `aiayn quickstart` cites as what a longer budget gives.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bible_en_es  # noqa: E402

from aiayn.runtime import machine  # noqa: E402


def matmul_peak(threads: int, n: int = 1024, seconds: float = 3.0) -> float:
    """fp32 GFLOP/s of an n×n×n product on `threads` threads, best of repeated timings."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, end = float("inf"), time.time() + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for system, style in (("aiayn", "o-"), ("hf", "s--")):
        points = sorted((r["minutes"], r["bleu"]) for r in rows if r["key"] == system)
        if points:
            label = "aiayn" if system == "aiayn" else "Hugging Face Seq2SeqTrainer + MarianMTModel"
            ax.plot(*zip(*points), style, label=label)
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = sorted({r["minutes"] for r in rows})
    ax.set_xticks(ticks, [f"{m:g}" for m in ticks])
    ax.set_xlabel("minutes of training (2 CPU threads)")
    ax.set_ylabel("test BLEU (beam 4)")
    ax.set_title("Bible en→es: quality per CPU-minute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def write_asset(record: dict, asset: Path) -> None:
    """The figures `aiayn quickstart` cites as what a longer budget gives: this run's aiayn rows, and the
    shipped rows of budgets this run did not measure, each of those with its own date and machine."""
    keep = ("key", "minutes", "bleu", "chrf", "updates", "tokens_per_s", "date", "machine")
    rows = [{k: r[k] for k in keep if k in r} for r in record["rows"] if r["key"] == "aiayn"]
    measured = {r["minutes"] for r in rows}
    if asset.is_file():
        earlier = json.loads(asset.read_text())
        for r in earlier["rows"]:
            if r["key"] == "aiayn" and r["minutes"] not in measured:
                rows.append({**r, "date": r.get("date", earlier["date"]), "machine": r.get("machine", earlier["machine"])})
    rows.sort(key=lambda r: r["minutes"])
    shipped = {k: record[k] for k in ("command", "machine", "vocab_size", "config", "test_sentences", "date")}
    tmp = asset.with_suffix(".tmp")
    tmp.write_text(json.dumps({**shipped, "rows": rows}, indent=1) + "\n")
    tmp.replace(asset)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=bible_en_es.DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=Path("/tmp/aiayn-budget-curve"))
    p.add_argument("--minutes", type=float, nargs="+", default=[3.0, 10.0, 30.0])
    p.add_argument("--config", default="quickstart", help="aiayn's config at every budget (the quickstart's recipe)")
    p.add_argument("--vocab-size", type=int, default=4000, help="the joint BPE size (the quickstart's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--average", type=int, default=5)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-aiayn", action="store_true", help="Hugging Face alone, with the dimensions of aiayn's run already in --work")
    p.add_argument("--hf-tokens-per-update", type=int, default=4096)
    p.add_argument("--hf-lr", type=float, default=1e-3)
    p.add_argument("--hf-warmup", type=int, default=400)
    p.add_argument(
        "--tag",
        default="",
        help="a suffix for the results and the plot (e.g. the machine): budget_curve-TAG.json; the quickstart's asset is written in any case",
    )
    p.add_argument(
        "--keep-other-rows",
        action="store_true",
        help="keep the rows of the existing budget_curve[-TAG].json (same CPU model and flags) for the budgets and systems not rerun, each with its date",
    )
    p.add_argument("--aiayn-overrides", nargs=argparse.REMAINDER, default=[], help="extra '--key value' for aiayn train (last on the line)")
    args = p.parse_args()
    if not (args.data / "train.en").is_file():
        raise SystemExit(f"no Bible corpus at {args.data}")
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = bible_en_es.prepare(args.data, args.work, args.vocab_size)
    record = {
        "command": " ".join(sys.argv),
        "machine": {**machine(args.threads), "fp32_matmul_gflops": round(matmul_peak(args.threads), 1)},
        "vocab_size": args.vocab_size,
        "config": args.config,
        "test_sentences": len((args.data / "test.en").read_text(encoding="utf-8").splitlines()),
        "rows": [],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    suffix = f"-{args.tag}" if args.tag else ""
    out = HERE / "results" / f"budget_curve{suffix}.json"
    if args.keep_other_rows and out.is_file():
        earlier = json.loads(out.read_text())
        same = ("cpu", "flags", "threads")
        if any(earlier["machine"].get(k) != record["machine"].get(k) for k in same):
            raise SystemExit(f"--keep-other-rows: {out} was measured on another machine ({earlier['machine']}); use another --tag")
        systems_now = (set() if args.skip_aiayn else {"aiayn"}) | (set() if args.skip_hf else {"hf"})
        record["rows"] = [
            {**r, "date": r.get("date", earlier["date"])}
            for r in earlier["rows"]
            if not (r["minutes"] in args.minutes and r["key"] in systems_now)
        ]
    for minutes in args.minutes:
        work = args.work / f"{minutes:g}min"
        work.mkdir(parents=True, exist_ok=True)
        run_args = argparse.Namespace(
            minutes=minutes,
            threads=args.threads,
            config=args.config,
            average=args.average,
            aiayn_overrides=args.aiayn_overrides,
            reuse_aiayn_run=False,
            hf_preset=None,
            hf_tokens_per_update=args.hf_tokens_per_update,
            hf_lr=args.hf_lr,
            hf_warmup=args.hf_warmup,
        )
        systems = ([] if args.skip_aiayn else [("aiayn", bible_en_es.run_aiayn)]) + ([] if args.skip_hf else [("hf", bible_en_es.run_hf)])
        if args.skip_aiayn and not (work / "aiayn-run" / "config.yaml").is_file():
            raise SystemExit(f"--skip-aiayn: no aiayn run in {work} to take the dimensions from; run aiayn at {minutes:g} minutes first")
        for key, run in systems:
            result = run(dataset, work, run_args)
            row = {"key": key, "minutes": minutes, "date": record["date"], **{k: v for k, v in result.items() if k != "valid"}}
            record["rows"].append(row)
            record["rows"].sort(key=lambda r: (r["minutes"], r["key"]))
            print(f"{minutes:g} min  {key:<6} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  {row['updates']} updates", flush=True)
            out.write_text(json.dumps(record, indent=2))
    m = record["machine"]
    print(
        f"\nBible en→es test ({record['test_sentences']:,} verses), beam 4; {m.get('cpu')} ({', '.join(m.get('flags', []))}), {args.threads} threads, fp32 matmul {m['fp32_matmul_gflops']} GFLOP/s"
    )
    print(f"{'minutes':>7} {'system':<8} {'BLEU':>6} {'chrF':>6} {'updates':>8} {'tokens/s':>9}  date")
    for r in record["rows"]:
        print(
            f"{r['minutes']:>7g} {r['key']:<8} {r['bleu']:>6.2f} {r['chrf']:>6.2f} {r['updates']:>8} {r['tokens_per_s']:>9.0f}  {r.get('date', '')}"
        )
    for minutes in sorted({r["minutes"] for r in record["rows"]}):
        pair = {r["key"]: r["bleu"] for r in record["rows"] if r["minutes"] == minutes}
        if len(pair) == 2:
            print(f"{minutes:g} min: aiayn − HF = {pair['aiayn'] - pair['hf']:+.2f} BLEU")
    write_asset(record, HERE.parent / "src" / "aiayn" / "assets" / "budget_curve.json")
    png = HERE.parent / "docs" / f"budget_curve{suffix}.png"
    plot(record["rows"], png)
    print(f"wrote {out}, src/aiayn/assets/budget_curve.json and {png}")


if __name__ == "__main__":
    main()
