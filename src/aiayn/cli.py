"""`aiayn <command>`: the one command-line entry point.

Each command's work lives in its module; this file only reads the arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
aiayn: the Transformer of "Attention Is All You Need", exact and fast.

A translation model in five steps:
  aiayn prepare --train-src train.en --train-tgt train.es --valid-src valid.en --valid-tgt valid.es --out data/
  aiayn train --data data/ --config small --out run/ --max-time 30
  aiayn average run/ --last 5 --out run/averaged.safetensors
  aiayn translate --model run/averaged.safetensors --input test.en --output test.hyp.es
  aiayn evaluate --hyp test.hyp.es --ref test.es
Try it first: aiayn quickstart  (a tiny English→Spanish model on a shipped corpus, a few minutes on a CPU)
"""


class UserError(Exception):
    """Something the user can fix; printed without a traceback."""


def _add_prepare(sub):
    p = sub.add_parser(
        "prepare",
        help="check and clean parallel text, learn a sentencepiece vocabulary, binarize",
        description="Check and clean parallel text, learn a sentencepiece vocabulary and write a binarized dataset. "
        "Give each split as two files (one sentence a line) or one TSV file (source<TAB>target).",
    )
    for split in ("train", "valid", "test"):
        p.add_argument(f"--{split}-src", metavar="FILE", help=f"{split} source sentences")
        p.add_argument(f"--{split}-tgt", metavar="FILE", help=f"{split} target sentences")
        p.add_argument(f"--{split}-tsv", metavar="FILE", help=f"{split} pairs as source<TAB>target lines")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create")
    p.add_argument("--vocab-size", type=int, default=8000, help="subword vocabulary size (default 8000; ~37000 for WMT-scale data)")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="sentencepiece model type (default bpe)")
    p.add_argument("--separate-vocab", action="store_true", help="one vocabulary per language instead of a joint one")
    p.add_argument("--max-len", type=int, default=256, help="drop training pairs with more subwords on a side (0: keep all)")
    p.add_argument("--max-ratio", type=float, default=3.0, help="drop training pairs whose length ratio exceeds this (0: off)")
    p.add_argument("--skip-bad", action="store_true", help="drop bad lines (counted by kind) instead of stopping")
    p.add_argument("--normalize", choices=["NFC", "NFKC"], help="Unicode normalisation applied first")
    p.add_argument("--spm-normalization", default="nmt_nfkc", help="sentencepiece normalisation rule (default nmt_nfkc; identity keeps text exact)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args):
    from aiayn.data.binarize import PrepareOptions, prepare

    splits = {}
    for split in ("train", "valid", "test"):
        src, tgt, tsv = (getattr(args, f"{split}_{k}") for k in ("src", "tgt", "tsv"))
        if tsv and (src or tgt):
            raise UserError(f"give --{split}-tsv or --{split}-src/--{split}-tgt, not both")
        if bool(src) != bool(tgt):
            raise UserError(f"--{split}-src and --{split}-tgt go together")
        if tsv:
            splits[split] = (tsv,)
        elif src:
            splits[split] = (src, tgt)
    if "train" not in splits:
        raise UserError("a training set is needed: --train-src/--train-tgt or --train-tsv")
    opts = PrepareOptions(
        vocab_size=args.vocab_size, model_type=args.model_type, joint_vocab=not args.separate_vocab,
        max_len=args.max_len, max_ratio=args.max_ratio, skip_bad=args.skip_bad, normalize=args.normalize,
        spm_normalization=args.spm_normalization, workers=args.workers,
    )
    meta = prepare(splits, args.out, opts, force=args.force)
    counts = ", ".join(f"{name} {s['pairs']}" for name, s in meta["splits"].items())
    print(f"wrote {args.out}: {counts} pairs; vocabulary {meta['vocab']['src']['size']} in {meta['seconds']}s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiayn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(title="commands", metavar="<command>")
    _add_prepare(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        sys.exit(1)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("aiayn: interrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, KeyError, OSError) as e:
        if args.debug or os.environ.get("AIAYN_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"aiayn {sys.argv[1] if len(sys.argv) > 1 else ''}: error: {message}", file=sys.stderr)
        sys.exit(2)
