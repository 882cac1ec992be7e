"""Choose a CPU recipe for a fixed training budget on the valid set (never on test).

Each trial trains the shipped Bible corpus (the quickstart's data: joint BPE, 28,006 verse
pairs) for --minutes of wall clock with `aiayn train --config BASE` plus the trial's overrides,
averages the last checkpoints, translates the first --valid-sentences valid verses with beam 4
and scores them with sacreBLEU. One trial at a time (2 CPU threads each).

    .venv/bin/python benchmarks/tune_recipe.py --minutes 3 \\
        --trial inverse_sqrt: \\
        --trial cosine:lr_schedule=cosine \\
        --trial cosine-v2k:lr_schedule=cosine,vocab=2000

A trial is NAME:KEY=VALUE,... with the keys of `aiayn train` (lr, max_tokens, model.d_model, ...)
and `vocab` (the BPE size, prepared once per size). Prints a table and appends every trial to
--out (JSON), with the machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prepared(work: Path, vocab: int) -> Path:
    from aiayn.data.binarize import PrepareOptions, prepare
    from aiayn.data.shipped import write_shipped_corpus

    out = work / f"data-bpe{vocab}"
    if not (out / "meta.json").is_file():
        corpus = write_shipped_corpus(work / "corpus")
        prepare({"train": corpus["train"], "valid": corpus["valid"]}, out, PrepareOptions(vocab_size=vocab, progress=False), force=True)
    return out


def parse_trial(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = value.strip()
    return name, overrides


def run_trial(name: str, overrides: dict, args) -> dict:
    from aiayn.evaluate import evaluate
    from aiayn.generate.translate import Translator
    from aiayn.io.checkpoint import average_checkpoints, list_checkpoints, load_model

    overrides = dict(overrides)
    vocab = int(overrides.pop("vocab", args.vocab))
    average = int(overrides.pop("average", args.average))
    data = prepared(args.work, vocab)
    run = args.work / "runs" / name
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cmd = [sys.executable, "-m", "aiayn", "train", "--data", str(data), "--config", args.config, "--out", str(run)]
    cmd += ["--max-time", str(args.minutes), "--threads", str(args.threads), "--validate-every", "0", "--valid-bleu", "false"]
    cmd += ["--precision", "fp32"]  # the trials' figures in one precision on every CPU (a trial may override it)
    for key, value in overrides.items():
        cmd += [f"--{key.replace('_', '-')}" if "." not in key else f"--{key}", value]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (args.work / f"{name}.train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        print((proc.stdout + proc.stderr)[-3000:])
        raise SystemExit(f"trial {name} failed")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    end = [e for e in log if e.get("type") == "end"][-1]
    steps = [p for _, p in list_checkpoints(run)][-average:]
    averaged = run / "averaged.safetensors"
    average_checkpoints(steps, averaged)
    model, ckpt = load_model(averaged)
    translator = Translator(model, *ckpt.tokenizers, beam=4)

    def score(src: Path, ref: Path, limit: int | None = None) -> tuple[dict, list[str]]:
        sources = src.read_text(encoding="utf-8").splitlines()[:limit]
        hyps = [t.text for t in translator.translate(sources)]
        return evaluate(hyps, ref.read_text(encoding="utf-8").splitlines()[:limit]), hyps

    scores, hyps = score(data / "valid.src.txt", data / "valid.tgt.txt", args.valid_sentences)
    valid = [e for e in log if e.get("type") == "valid"]
    test = {}
    if args.test:  # for the record once a trial has been chosen on valid; never a ground for the choice
        test_scores, test_hyps = score(args.work / "corpus" / "test.en", args.work / "corpus" / "test.es")
        test = {"test_bleu": round(test_scores["bleu"], 2), "test_chrf": round(test_scores["chrf"], 2), "test_sentences": len(test_hyps)}
    return {
        "trial": name,
        "overrides": overrides,
        "vocab": vocab,
        "averaged": len(steps),
        "minutes": args.minutes,
        "updates": end["updates"],
        "tokens_per_s": round(end["tokens_seen"] / end["time"]),
        "valid_nll": valid[-1].get("nll") if valid else None,
        "valid_bleu": round(scores["bleu"], 2),
        "valid_chrf": round(scores["chrf"], 2),
        "examples": hyps[:3],
        **test,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trial", action="append", required=True, help="NAME:KEY=VALUE,... (repeatable)")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--config", default="tiny", help="the config the overrides apply to")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--average", type=int, default=5, help="average the last K checkpoints")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--valid-sentences", type=int, default=500)
    p.add_argument("--test", action="store_true", help="also score the test verses (beam 4), for the record: choose on valid")
    p.add_argument("--work", type=Path, default=Path("/tmp/aiayn-tune"))
    p.add_argument("--out", type=Path, default=HERE / "results" / "tune_recipe.json")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    record = json.loads(args.out.read_text()) if args.out.is_file() else {"trials": []}
    from aiayn.runtime import machine

    record["machine"] = machine()
    rows = []
    for text in args.trial:
        name, overrides = parse_trial(text)
        row = {
            **run_trial(name, overrides, args),
            "config": args.config,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": record["machine"],
        }
        rows.append(row)
        record["trials"].append(row)
        args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False))
        print(
            f"{name:<28} {row['updates']:>6} updates {row['tokens_per_s']:>6} tok/s  valid BLEU {row['valid_bleu']:6.2f} chrF {row['valid_chrf']:6.2f}"
            + (f"  (test BLEU {row['test_bleu']:.2f} chrF {row['test_chrf']:.2f})" if "test_bleu" in row else ""),
            flush=True,
        )
    print(
        f"\n{args.minutes:g} minutes, config {args.config}, valid (first {args.valid_sentences} verses), beam 4; {record['machine'].get('cpu')}"
    )
    print(f"{'trial':<28} {'updates':>8} {'tok/s':>7} {'BLEU':>6} {'chrF':>6}")
    for r in rows:
        print(f"{r['trial']:<28} {r['updates']:>8} {r['tokens_per_s']:>7} {r['valid_bleu']:>6.2f} {r['valid_chrf']:>6.2f}")


if __name__ == "__main__":
    main()
