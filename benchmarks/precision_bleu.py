"""What int8 and bf16 decoding cost in quality, and what they gain in speed, on a trained model.

Translates a test set with one trained translation model (a run directory or weights file) at
each precision aiayn offers on this CPU (fp32, bf16 autocast where the CPU has bf16 units, int8),
and with a vocabulary shortlist (--shortlist, fp32 and int8), and with CTranslate2 float32 and int8
on the same weights, all with beam 4 (α = 0.6, GNMT length
penalty for aiayn, CTranslate2's own with the same α; aiayn's stopping rule by --early-stop), and reports sacreBLEU BLEU / chrF, the
number of outputs identical to aiayn fp32, and sentences/s (natural output lengths, 2 threads).

    .venv/bin/aiayn train --data DATA --config tiny --max-time 12 --out RUN && .venv/bin/aiayn average RUN --last 5 --out RUN/averaged.safetensors
    .venv/bin/python benchmarks/precision_bleu.py --model RUN --src ../shared/data/bible-en-es/test.en --ref ../shared/data/bible-en-es/test.es

Prints a table and writes benchmarks/results/precision_bleu.json.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory or weights file of a translation model")
    p.add_argument("--src", required=True, type=Path)
    p.add_argument("--ref", required=True, type=Path)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-ct2", action="store_true")
    p.add_argument("--shortlist", help="also decode with this vocabulary shortlist (the model's dataset directory)")
    p.add_argument("--shortlist-size", type=int, default=32)
    p.add_argument(
        "--early-stop",
        choices=["exact", "beam"],
        default="exact",
        help="aiayn's stopping rule: exact (its default) or beam (a sentence stops once `beam` hypotheses have finished, "
        "CTranslate2's rule where α ≠ 0: the same number of steps for both engines)",
    )
    p.add_argument("--output", type=Path, default=HERE / "results" / "precision_bleu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import sacrebleu

    from aiayn import runtime
    from aiayn.generate import Translator
    from aiayn.io.checkpoint import load_model, resolve_model_path

    path = resolve_model_path(args.model)
    model, ckpt = load_model(path)
    sources = args.src.read_text(encoding="utf-8").splitlines()
    refs = args.ref.read_text(encoding="utf-8").splitlines()
    systems = {}
    precisions = ["fp32", "int8"] + (["bf16"] if runtime.cpu_has_bf16() else [])
    for precision in precisions:
        translator = Translator(model, *ckpt.tokenizers, beam=args.beam, precision=precision, device="cpu", early_stop=args.early_stop)
        systems[f"aiayn {precision}"] = lambda tr=translator: [t.text for t in tr.translate(sources)]
    if args.shortlist:
        from aiayn.generate.shortlist import Shortlist

        shortlist = Shortlist.for_model(args.shortlist, model, *ckpt.tokenizers, k=args.shortlist_size)
        for precision in ("fp32", "int8"):
            translator = Translator(
                model, *ckpt.tokenizers, beam=args.beam, precision=precision, device="cpu", shortlist=shortlist, early_stop=args.early_stop
            )
            systems[f"aiayn {precision} shortlist"] = lambda tr=translator: [t.text for t in tr.translate(sources)]
    if not args.skip_ct2:
        from aiayn.interop.ctranslate2 import CTranslate2Translator, export_ctranslate2

        work = Path(tempfile.mkdtemp(prefix="aiayn-precision-"))
        for quant in ("float32", "int8"):
            out = export_ctranslate2(path, work / quant, quantization=None if quant == "float32" else quant)
            translator = CTranslate2Translator(out, device="cpu", compute_type=quant, beam=args.beam, threads=args.threads)
            systems[f"CTranslate2 {quant}"] = lambda tr=translator: [t.text for t in tr.translate(sources)]
    rows = {}
    for name, run in systems.items():
        run_start = time.perf_counter()
        hyps = run()
        seconds = time.perf_counter() - run_start
        rows[name] = {
            "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
            "sentences_per_s": round(len(sources) / seconds, 2),
            "seconds": round(seconds, 1),
            "hypotheses": hyps,
        }
        print(
            f"{name:<20} BLEU {rows[name]['bleu']:6.2f}  chrF {rows[name]['chrf']:6.2f}  {rows[name]['sentences_per_s']:7.2f} sent/s",
            flush=True,
        )
    base = rows["aiayn fp32"]
    print(f"\n{len(sources)} sentences, beam {args.beam}, {args.threads} threads, {runtime.cpu_info('model name')}")
    print(f"{'system':<24} {'BLEU':>6} {'ΔBLEU':>6} {'chrF':>6} {'same as fp32':>12} {'sent/s':>7} {'vs fp32':>7}")
    for name, r in rows.items():
        r["same_as_fp32"] = sum(a == b for a, b in zip(r["hypotheses"], base["hypotheses"]))
        r["speed_vs_aiayn_fp32"] = round(r["sentences_per_s"] / base["sentences_per_s"], 3)
        print(
            f"{name:<24} {r['bleu']:>6.2f} {r['bleu'] - base['bleu']:>+6.2f} {r['chrf']:>6.2f} {r['same_as_fp32']:>12} "
            f"{r['sentences_per_s']:>7.2f} {r['speed_vs_aiayn_fp32']:>7.2f}"
        )
    for r in rows.values():
        del r["hypotheses"]
    record = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": str(path),
        "sentences": len(sources),
        "beam": args.beam,
        "early_stop": args.early_stop,
        "vocabulary": model.config.tgt_vocab_size,
        "shortlist": {"path": args.shortlist, "k": args.shortlist_size} if args.shortlist else None,
        "machine": runtime.machine(args.threads),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
