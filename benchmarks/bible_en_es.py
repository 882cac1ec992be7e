"""The Bible English→Spanish benchmark: aiayn against Hugging Face at the same CPU budget.

On ../shared/data/bible-en-es (28,006 / 1,000 / 1,000 verse pairs), the full pipeline:
  1. aiayn prepare: a joint sentencepiece BPE vocabulary (8,000 by default) and binarized splits;
  2. aiayn train: the `tiny` config (--config) on the CPU with 2 threads for a fixed wall-clock budget;
  3. aiayn average: the last checkpoints;
  4. aiayn translate: the test set with beam 4 (α = 0.6), sacreBLEU BLEU and chrF;
and, side by side with the same budget, vocabulary and splits, Hugging Face `Seq2SeqTrainer` on
a `MarianMTModel` of the same size with its usual settings (benchmarks/hf_marian.py).
Hyper-parameters were chosen on the valid set, never on test. At a CPU budget of minutes the
model size that learns fastest is small: after 6 minutes on this corpus (BPE 8k, 2 threads, greedy
BLEU on 300 valid verses) `tiny` (2+2 layers, d_model 128; 1,867 updates) reached 18.3 and
`small` cut to 3+3 layers (d_model 256; 719 updates) 12.2, so `tiny` is the default here; the
Hugging Face model copies the dimensions of whatever aiayn trained.

    .venv/bin/python benchmarks/bible_en_es.py                 # 30 minutes each
    .venv/bin/python benchmarks/bible_en_es.py --minutes 10 --skip-hf

Prints a table and writes benchmarks/results/bible_en_es.json (and the runs under --work).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bible-en-es"


def sh(args: list, log: Path | None = None) -> str:
    """Run an aiayn command, echoing what it prints; fail loudly."""
    cmd = [sys.executable, "-m", "aiayn", *map(str, args)]
    print("$ aiayn " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if log:
        log.write_text(output)
    if proc.returncode:
        print(output[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return output


def prepare(data: Path, work: Path, vocab_size: int) -> Path:
    out = work / f"data-bpe{vocab_size}"
    if not (out / "meta.json").is_file():
        splits = []
        for split in ("train", "valid", "test"):
            splits += [f"--{split}-src", data / f"{split}.en", f"--{split}-tgt", data / f"{split}.es"]
        sh(["prepare", *splits, "--out", out, "--vocab-size", vocab_size, "--force"])
    return out


def run_aiayn(dataset: Path, work: Path, args) -> dict:
    run = work / "aiayn-run"
    train_seconds = None
    if not args.reuse_aiayn_run:
        if run.exists():
            import shutil

            shutil.rmtree(run)
        train_args = [
            "train",
            "--data",
            dataset,
            "--config",
            args.config,
            "--out",
            run,
            "--max-time",
            args.minutes,
            "--threads",
            args.threads,
            "--precision",  # fp32, as Hugging Face trains here (aiayn's auto is bf16 on CPUs with bf16 units)
            "fp32",
            *args.aiayn_overrides,
        ]
        started = time.time()
        sh(train_args, work / "aiayn-train.log")
        train_seconds = round(time.time() - started, 1)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    end = [e for e in log if e.get("type") == "end"][-1]
    averaged = run / "averaged.safetensors"
    sh(["average", run, "--last", args.average, "--out", averaged])
    hyp = work / "aiayn.test.hyp.es"
    t0 = time.time()
    sh(["translate", "--model", averaged, "--input", dataset / "test.src.txt", "--output", hyp, "--beam", 4, "--alpha", 0.6])
    translate_seconds = time.time() - t0
    from aiayn.evaluate import evaluate_files

    scores = evaluate_files(hyp, dataset / "test.tgt.txt")
    return {
        "system": "aiayn",
        "config": args.config,
        "overrides": args.aiayn_overrides,
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "bleu_signature": scores["bleu_signature"],
        "updates": end["updates"],
        "tokens_seen": end["tokens_seen"],
        "tokens_per_s": end["tokens_seen"] / end["time"],
        "train_seconds_logged": end["time"],
        "train_wall_seconds": train_seconds,
        "translate_seconds": round(translate_seconds, 1),
        "averaged_last": args.average,
        "curves_png": str(run / "curves.png"),
        "valid": [e for e in log if e.get("type") == "valid"],
    }


def run_hf(dataset: Path, work: Path, args) -> dict:
    sys.path.insert(0, str(HERE))
    import hf_marian
    import torch

    from aiayn.models import TransformerConfig

    aiayn_config = work / "aiayn-run" / "config.yaml"
    if aiayn_config.is_file():  # the same model as aiayn's run: dimensions and dropout
        import yaml

        cfg = TransformerConfig.from_dict(yaml.safe_load(aiayn_config.read_text())["model"])
        # Marian has post-norm layers only: the HF model gets aiayn's dimensions in its own form.
        cfg = dataclasses.replace(cfg, pre_norm=False)
    else:
        vocab = json.loads((dataset / "meta.json").read_text())["vocab"]["src"]["size"]
        cfg = TransformerConfig.preset(args.hf_preset or "small", pre_norm=False, vocab_size=vocab)
    model_config = hf_marian.marian_config(cfg)
    out = work / "hf-run"
    torch.set_num_threads(args.threads)
    result = hf_marian.train_hf(
        dataset,
        out,
        model_config,
        minutes=args.minutes,
        tgt_tokens_per_update=args.hf_tokens_per_update,
        lr=args.hf_lr,
        warmup_steps=args.hf_warmup,
        threads=args.threads,
    )
    tokenizer = hf_marian.marian_tokenizer(dataset, out / "tokenizer")
    src = (dataset / "test.src.txt").read_text(encoding="utf-8").splitlines()
    ref = (dataset / "test.tgt.txt").read_text(encoding="utf-8").splitlines()
    t0 = time.time()
    hyps = hf_marian.translate_hf(result["model_dir"], tokenizer, src, beam=4, length_penalty=0.6)
    translate_seconds = time.time() - t0
    (work / "hf.test.hyp.es").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    from aiayn.evaluate import evaluate

    scores = evaluate(hyps, ref)
    return {
        "system": "Hugging Face Seq2SeqTrainer + MarianMTModel",
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "bleu_signature": scores["bleu_signature"],
        "updates": result["updates"],
        "tokens_seen": result["src_tokens"] + result["tgt_tokens"],
        "tokens_per_s": result["tokens_per_s"],
        "translate_seconds": round(translate_seconds, 1),
        **{k: v for k, v in result.items() if k not in ("updates", "tokens_per_s")},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the bible-en-es folder")
    p.add_argument("--work", type=Path, default=HERE / "results" / "bible_en_es", help="runs and translations go here")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per system (wall clock)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--config", default="tiny", help="aiayn config (tiny: chosen on valid, see the docstring)")
    p.add_argument("--average", type=int, default=5, help="average the last K checkpoints")
    p.add_argument("--aiayn-overrides", nargs=argparse.REMAINDER, default=[], help="extra '--key value' for aiayn train (last on the line)")
    p.add_argument(
        "--reuse-aiayn-run", action="store_true", help="do not train: average, translate and score the finished run in WORK/aiayn-run"
    )
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-aiayn", action="store_true")
    p.add_argument("--hf-preset", help="model preset for HF when there is no aiayn run to copy the model from (default small)")
    p.add_argument("--hf-tokens-per-update", type=int, default=4096)
    p.add_argument("--hf-lr", type=float, default=1e-3)
    p.add_argument("--hf-warmup", type=int, default=400)
    args = p.parse_args()
    if not (args.data / "train.en").is_file():
        raise SystemExit(f"no Bible corpus at {args.data}")
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = prepare(args.data, args.work, args.vocab_size)
    # Each system's result is kept in --work, so one half can be rerun (--skip-aiayn / --skip-hf)
    # and the table still shows both.
    results = []
    for name, skip, run in (("aiayn", args.skip_aiayn, run_aiayn), ("hf", args.skip_hf, run_hf)):
        saved = args.work / f"{name}.result.json"
        if not skip:
            saved.write_text(json.dumps({"minutes": args.minutes, **run(dataset, args.work, args)}, indent=2))
        if saved.is_file():
            result = json.loads(saved.read_text())
            if result.pop("minutes", None) != args.minutes:
                print(f"note: {saved} is from a run with another --minutes; left out")
                continue
            results.append(result)
    print(f"\nBible en→es, test set (1,000 verses), beam 4, {args.minutes:g} minutes of training on {args.threads} CPU threads each")
    print(f"{'system':<46} {'BLEU':>6} {'chrF':>6} {'updates':>8} {'tokens/s':>9}")
    for r in results:
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-"
        print(f"{r['system']:<46} {r['bleu']:>6.2f} {r['chrf']:>6.2f} {r['updates']:>8} {tps:>9}")
    from aiayn.runtime import machine

    record = {
        "command": " ".join(sys.argv),
        "minutes": args.minutes,
        "threads": args.threads,
        "vocab_size": args.vocab_size,
        "machine": machine(args.threads),
        "results": results,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = HERE / "results" / "bible_en_es.json"
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
