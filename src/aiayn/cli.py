"""`aiayn <command>`: the one command-line entry point.

Each command's work lives in its module; this file only reads the arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aiayn import schema as S

PRECISIONS = ["auto", "fp32", "bf16", "fp16", "int8"]
ENCODER_PRECISION_HELP = "arithmetic: fp32 (default); bf16 or fp16 (autocast); int8 (CPU, a quantized copy); auto (as decoding chooses)"
PRECISION_HELP = (
    "arithmetic of decoding: fp32 (default); bf16 or fp16 (autocast); int8 (CPU: weights int8 per output channel, "
    "activations quantized per step); auto (bf16 on a GPU, and on a CPU where bf16 measures faster, else fp32). "
    "A model exported with --format int8 always decodes in int8"
)

DESCRIPTION = """\
aiayn: the Transformer of "Attention Is All You Need", exact and fast.

A language model (GPT):  aiayn prepare --task lm --train-text book.txt --valid-text valid.txt --out lm/
                          aiayn train --data lm/ --config gpt-tiny --out lm-run/ --max-time 10
                          aiayn generate --model lm-run/ --prompt "In the beginning"
Images and captions (CLIP): aiayn prepare --task image-text --dataset shapes --out shapes/
                          aiayn train --data shapes/ --config clip-tiny --out clip-run/ --max-time 30
                          aiayn zero-shot --model clip-run/ --labels "red circle,blue square" scene.png
Images from noise (DiT):  aiayn prepare --task images --dataset fashion-mnist --out fashion/
                          aiayn train --data fashion/ --config dit-tiny --out dit-run/ --max-time 30
                          aiayn sample --model dit-run/ --class sneaker --n 64 --guidance 2 --out sneakers.png
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
        "Give each split as two files (one sentence a line) or one TSV file (source<TAB>target). "
        "With --task lm: plain text for a language model (GPT), --train-text FILE... --valid-text FILE...; "
        "without text files, the English side of the shipped Bible corpus. "
        "With --task images: labelled images (ViT). With --task image-text: images with captions (CLIP), "
        "--pairs FILE.tsv or --dataset shapes|emoji.",
    )
    p.add_argument(
        "--task",
        choices=["translation", "lm", "images", "image-text"],
        default="translation",
        help="translation (default), lm (a GPT's text), images (a ViT's) or image-text (a CLIP's)",
    )
    for split in ("train", "valid", "test"):
        p.add_argument(f"--{split}-src", metavar="FILE", help=f"{split} source sentences")
        p.add_argument(f"--{split}-tgt", metavar="FILE", help=f"{split} target sentences")
        p.add_argument(f"--{split}-tsv", metavar="FILE", help=f"{split} pairs as source<TAB>target lines")
    g = p.add_argument_group("language-model text (--task lm)")
    for split in ("train", "valid", "test"):
        g.add_argument(f"--{split}-text", nargs="+", metavar="FILE", help=f"{split} text: UTF-8 files")
    g.add_argument("--char", action="store_true", help="one token per character instead of a BPE vocabulary")
    g.add_argument(
        "--documents",
        choices=["blank-line", "file"],
        default="blank-line",
        help="what a document is: blank-line separated (default), or a whole file",
    )
    g = p.add_argument_group("labelled images (--task images)")
    g.add_argument(
        "--dataset",
        metavar="NAME|DIR",
        help="fashion-mnist (Debian's dataset-fashion-mnist), digits (scikit-learn's 8×8 digits), or a directory with a folder of images per class",
    )
    g.add_argument("--image-size", type=S.int_at_least(1), default=0, help="resize every image to this square size (default: keep)")
    g.add_argument(
        "--valid-fraction",
        type=S.number(low=0, high=0.5),
        default=None,
        help="training images held out for validation (default 0.1; image-text 0.05)",
    )
    g = p.add_argument_group("images with captions (--task image-text)")
    g.add_argument(
        "--pairs", metavar="FILE.tsv", help="image path<TAB>caption lines (paths relative to the file); or --dataset shapes|emoji"
    )
    g.add_argument(
        "--context", type=S.int_at_least(3), default=77, help="the longest caption in tokens, start and end included (default 77)"
    )
    g.add_argument(
        "--shapes-train", type=S.int_at_least(1), default=40000, help="training scenes to generate (--dataset shapes; default 40000)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create")
    p.add_argument(
        "--vocab-size",
        type=S.int_at_least(1),
        default=None,
        help="subword vocabulary size (default 8000 for translation, ~37000 for WMT-scale data; 4000 for lm)",
    )
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="sentencepiece model type (default bpe)")
    p.add_argument("--separate-vocab", action="store_true", help="one vocabulary per language instead of a joint one")
    p.add_argument(
        "--vocab-from",
        metavar="MODEL",
        help="learn no vocabulary: use this model's (a checkpoint or model directory, "
        "e.g. from 'aiayn import-hf', a dataset, or a sentencepiece .model), to fine-tune it with train --init-from",
    )
    p.add_argument("--max-len", type=S.int_at_least(0), default=256, help="drop training pairs with more subwords on a side (0: keep all)")
    p.add_argument("--max-ratio", type=S.number(low=0), default=3.0, help="drop training pairs whose length ratio exceeds this (0: off)")
    p.add_argument("--skip-bad", action="store_true", help="drop bad lines (counted by kind) instead of stopping")
    p.add_argument("--normalize", choices=["NFC", "NFKC"], help="Unicode normalisation applied first")
    p.add_argument(
        "--max-spm-sentences",
        type=S.int_at_least(1),
        default=300_000,
        help="lines sampled to learn the vocabulary (default 300000; bounds memory)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of that sample (default 1)")
    p.add_argument(
        "--spm-normalization", default="nmt_nfkc", help="sentencepiece normalisation rule (default nmt_nfkc; identity keeps text exact)"
    )
    p.add_argument("--workers", type=S.int_at_least(1), default=os.cpu_count() or 1, help="encoding processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args):
    from aiayn.data.binarize import PrepareOptions, prepare

    if args.task == "lm":
        return _prepare_text(args)
    if args.task == "images":
        return _prepare_images(args)
    if args.task == "image-text":
        return _prepare_image_text(args)
    if args.pairs:
        raise UserError("--pairs goes with --task image-text")
    if args.dataset:
        raise UserError("--dataset goes with --task images")
    if any(getattr(args, f"{s}_text") for s in ("train", "valid", "test")) or args.char:
        raise UserError("--train-text/--valid-text/--test-text and --char go with --task lm")
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
        vocab_size=args.vocab_size or 8000,
        model_type=args.model_type,
        joint_vocab=not args.separate_vocab,
        max_len=args.max_len,
        max_ratio=args.max_ratio,
        skip_bad=args.skip_bad,
        normalize=args.normalize,
        spm_normalization=args.spm_normalization,
        max_spm_sentences=args.max_spm_sentences,
        seed=args.seed,
        workers=args.workers,
        vocab_from=args.vocab_from,
    )
    meta = prepare(splits, args.out, opts, force=args.force)
    counts = ", ".join(f"{name} {s['pairs']}" for name, s in meta["splits"].items())
    print(f"wrote {args.out}: {counts} pairs; vocabulary {meta['vocab']['src']['size']} in {meta['seconds']}s")


def _prepare_images(args):
    from aiayn.data.images import ImageOptions, prepare_images

    if args.pairs:
        raise UserError("--pairs goes with --task image-text")
    if not args.dataset:
        raise UserError("--task images needs --dataset fashion-mnist, digits, or a directory of class folders")
    valid = 0.1 if args.valid_fraction is None else args.valid_fraction
    opts = ImageOptions(valid_fraction=valid, image_size=args.image_size, skip_bad=args.skip_bad, seed=args.seed)
    meta = prepare_images(args.dataset, args.out, opts, force=args.force)
    counts = ", ".join(f"{name} {s['images']}" for name, s in meta["splits"].items())
    img = meta["image"]
    print(
        f"wrote {args.out}: {counts} images of {img['width']}×{img['height']}×{img['channels']}, {len(meta['classes'])} classes, in {meta['seconds']}s"
    )


def _prepare_image_text(args):
    from aiayn.data.image_text import ImageTextOptions, prepare_image_text

    if bool(args.pairs) == bool(args.dataset):
        raise UserError("--task image-text needs --pairs FILE.tsv or --dataset shapes|emoji (one of them)")
    opts = ImageTextOptions(
        image_size=args.image_size,
        vocab_size=args.vocab_size or 1000,
        context=args.context,
        valid_fraction=0.05 if args.valid_fraction is None else args.valid_fraction,
        skip_bad=args.skip_bad,
        seed=args.seed,
        shapes_train=args.shapes_train,
    )
    meta = prepare_image_text(args.dataset, args.pairs, args.out, opts, force=args.force)
    counts = ", ".join(f"{name} {s['images']}" for name, s in meta["splits"].items())
    img = meta["image"]
    print(
        f"wrote {args.out}: {counts} images of {img['width']}×{img['height']}×{img['channels']} with "
        f"{sum(s['pairs'] for s in meta['splits'].values())} captions; vocabulary {meta['vocab']['size']}, context {meta['context']}, in {meta['seconds']}s"
    )


def _prepare_text(args):
    import tempfile

    from aiayn.data.text import TextOptions, prepare_text

    if any(getattr(args, f"{s}_{k}") for s in ("train", "valid", "test") for k in ("src", "tgt", "tsv")):
        raise UserError("--task lm takes --train-text/--valid-text/--test-text, not parallel files")
    opts = TextOptions(
        vocab_size=args.vocab_size or 4000,
        char=args.char,
        documents=args.documents,
        skip_bad=args.skip_bad,
        max_spm_sentences=args.max_spm_sentences,
        seed=args.seed,
        vocab_from=args.vocab_from,
        workers=args.workers,
    )
    splits = {s: getattr(args, f"{s}_text") for s in ("train", "valid", "test") if getattr(args, f"{s}_text")}
    with tempfile.TemporaryDirectory() as tmp:
        if not splits:
            from aiayn.data.shipped import write_shipped_corpus

            print("no --train-text: using the English side of the shipped Bible corpus (one verse a line)")
            splits = {name: [en] for name, (en, _es) in write_shipped_corpus(tmp).items()}
        meta = prepare_text(splits, args.out, opts, force=args.force)
    counts = ", ".join(f"{name} {s['tokens']}" for name, s in meta["splits"].items())
    print(f"wrote {args.out}: {counts} tokens; vocabulary {meta['vocab']['size']} ({meta['vocab']['kind']}) in {meta['seconds']}s")


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a model on a prepared dataset (the paper's recipe; resumable; torchrun for several GPUs)",
        description="Train a Transformer on a dataset made by 'aiayn prepare'. Any config key can be set with "
        "--key value (e.g. --max-tokens 2048 --warmup-steps 1000 --model.dropout 0.2); 'aiayn train --help-config' "
        "lists them. Several GPUs or nodes: torchrun --nproc_per_node=N -m aiayn train ...",
    )
    p.add_argument("--data", metavar="DIR", help="dataset directory from 'aiayn prepare'")
    p.add_argument(
        "--config",
        default=None,
        metavar="NAME|FILE",
        help="a recipe of configs/ (base, big, small, tiny, rnnsearch-tiny, gpt-tiny, vit-tiny, clip-tiny, ...) or a YAML file (default base)",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (checkpoints, logs, curves)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--init-from", metavar="CKPT", help="start from these weights with a fresh optimizer (fine-tuning)")
    p.add_argument("--max-updates", type=S.int_at_least(0), help="stop after this many updates")
    p.add_argument("--max-epochs", type=S.int_at_least(0), help="stop after this many epochs")
    p.add_argument("--max-time", type=S.number(low=0), metavar="MINUTES", help="stop after this much wall-clock time")
    p.add_argument("--save-every", type=S.int_at_least(0), metavar="N", help="save a checkpoint every N updates")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default, then exit")
    p.set_defaults(run=_run_train, takes_overrides=True)


def _run_train(args, extra):

    import yaml

    from aiayn.train.config import TrainConfig, load_config, merge, parse_overrides
    from aiayn.train.trainer import Trainer

    if args.help_config:
        import inspect
        import re

        from aiayn.models import PRESETS

        source = inspect.getsource(TrainConfig)
        print(source[: re.search(r"\n    (def |@)", source).start()].rstrip())  # the keys with their defaults and comments, not the methods
        print(
            "\na config file may end with budgets: a list of {minutes: M, key: value, ...}; the entry with the largest M"
            " at or under --max-time applies over the file (the command line over both; see configs/quickstart.yaml)"
        )
        print(f"\nmodel presets (model.preset): {', '.join(PRESETS)}; any field of a preset's config is a model.KEY too")
        return
    if not args.data or not args.out:
        raise UserError("--data and --out are required")
    overrides = parse_overrides(extra)
    for key in ("max_updates", "max_epochs", "max_time", "save_every"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise UserError(f"--resume: {saved} not found; is {args.out} a run directory?")
        values = yaml.safe_load(saved.read_text())["train"]
        cfg = TrainConfig.from_dict(merge(values, overrides))
    else:
        cfg = load_config(args.config or "base", overrides)
    summary = Trainer(cfg, args.data, args.out, resume=args.resume, init_from=args.init_from).train()
    if summary["reason"] == "signal":
        print(f"stopped by a signal at update {summary['updates']}; the checkpoint is saved: continue with --resume")
    else:
        print(f"done ({summary['reason']}): {summary['updates']} updates; checkpoints in {args.out}/checkpoints")


def _add_average(sub):
    p = sub.add_parser(
        "average",
        help="average the last K checkpoints of a run (§6.1)",
        description="Average checkpoints element-wise (the paper averages the last 5 for base models, 20 for big).",
    )
    p.add_argument("run_dir", nargs="?", help="run directory")
    p.add_argument("--last", type=S.int_at_least(1), default=5, help="how many of the latest checkpoints (default 5)")
    p.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="average these files instead")
    p.add_argument("--out", required=True, help="averaged weights file (.safetensors)")
    p.set_defaults(run=_run_average)


def _run_average(args):
    from aiayn.io.checkpoint import average_checkpoints, list_checkpoints

    if args.checkpoints:
        paths = args.checkpoints
    elif args.run_dir:
        steps = list_checkpoints(args.run_dir)
        if not steps:
            raise UserError(f"{args.run_dir} holds no step checkpoints")
        paths = [p for _, p in steps[-args.last :]]
        if len(paths) < args.last:
            print(f"note: only {len(paths)} checkpoints in {args.run_dir}; averaging those")
    else:
        raise UserError("give a run directory or --checkpoints")
    average_checkpoints(paths, args.out)
    print(f"averaged {len(paths)} checkpoints into {args.out}: {', '.join(Path(p).name for p in paths)}")


def _add_search_options(p):
    g = p.add_argument_group("search")
    g.add_argument("--beam", type=S.int_at_least(1), default=4, help="beam size (default 4, as in §6.1); 1 is greedy")
    g.add_argument("--alpha", type=S.number(), default=0.6, help="length penalty α (default 0.6, as in §6.1)")
    g.add_argument(
        "--lp-style", choices=["gnmt", "power"], default="gnmt", help="gnmt: ((5+|Y|)/6)^α, the paper's; power: |Y|^α (fairseq/HF)"
    )
    g.add_argument("--max-len-a", type=S.number(low=0), default=1.0, help="output length cap a·source length + b (default a=1)")
    g.add_argument("--max-len-b", type=S.int_at_least(0), default=50, help="(default b=50, as in §6.1)")
    g.add_argument("--min-len", type=S.int_at_least(0), default=0, help="at least this many output subwords before EOS")
    g.add_argument("--nbest", type=S.int_at_least(1), default=1, help="print the N best hypotheses with scores")
    g.add_argument(
        "--early-stop",
        nargs="?",
        const="nbest",
        choices=["nbest", "beam", "hf"],
        metavar="RULE",
        help="stop a sentence early instead of when no live hypothesis can beat the finished ones: once nbest have "
        "finished (RULE nbest, the default), once beam-size have (beam: HF early_stopping=True, CTranslate2), or by "
        "Hugging Face generate's default heuristic (hf: identical results to MarianMTModel.generate)",
    )
    g.add_argument(
        "--no-repeat-ngram",
        type=S.int_at_least(0),
        default=0,
        metavar="N",
        help="never output the same N subwords in a row twice (fairseq's --no-repeat-ngram-size; default 0: off)",
    )
    g.add_argument("--sampling", action="store_true", help="sample instead of searching")
    g.add_argument("--temperature", type=S.number(low=0, open_low=True), default=1.0)
    g.add_argument("--top-k", type=S.int_at_least(0), default=0)
    g.add_argument("--top-p", type=S.number(low=0, high=1, open_low=True), default=1.0)
    g.add_argument("--seed", type=S.any_int, default=0, help="seed for sampling")
    g.add_argument(
        "--max-tokens",
        type=S.int_at_least(1),
        default=None,
        help="source tokens × beam per batch (default 4096 on a CPU, 32768 on a GPU, 4096 with --engine ctranslate2)",
    )
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    g.add_argument(
        "--shortlist",
        metavar="FILE",
        help="restrict each batch's output vocabulary to what its source words suggest: a dataset's shortlist.safetensors "
        "(or the dataset directory), learned by 'aiayn prepare' with the model's vocabulary; faster for large vocabularies",
    )
    g.add_argument("--shortlist-size", type=S.int_between(1, 64), default=32, help="target candidates per source piece (default 32)")


def _search_options(args):
    from aiayn.generate.translate import SearchOptions

    return SearchOptions(
        beam=args.beam,
        alpha=args.alpha,
        lp_style=args.lp_style,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        min_len=args.min_len,
        nbest=args.nbest,
        early_stop=args.early_stop or False,
        no_repeat_ngram=args.no_repeat_ngram,
        sampling=args.sampling,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _translator(args, models: list[str]):
    from aiayn import runtime
    from aiayn.generate.translate import Translator
    from aiayn.io.checkpoint import load_model
    from aiayn.tasks.translation import vocabulary_id

    device = runtime.device(args.device)
    loaded = [load_model(m, device) for m in models]
    first = loaded[0][1]
    for _, ckpt in loaded[1:]:
        if vocabulary_id(*ckpt.tokenizers) != vocabulary_id(*first.tokenizers):
            raise UserError(f"{ckpt.path} has another vocabulary than {first.path}: an ensemble needs one vocabulary")
    shortlist = None
    if args.shortlist:
        from aiayn.generate.shortlist import Shortlist

        try:
            shortlist = Shortlist.for_model(args.shortlist, loaded[0][0], *first.tokenizers, k=args.shortlist_size)
        except (OSError, ValueError) as e:
            raise UserError(str(e)) from None
    return Translator(
        [m for m, _ in loaded],
        *first.tokenizers,
        options=_search_options(args),
        max_tokens=args.max_tokens,
        device=device,
        precision=args.precision,
        shortlist=shortlist,
        warn=_warn,
    )


def _ctranslate2_translator(args):
    try:
        from aiayn.interop.ctranslate2 import CTranslate2Translator
    except ImportError as e:
        raise UserError(f"--engine ctranslate2 needs CTranslate2 ({e}): pip install 'aiayn[interop]'") from None
    if len(args.model) > 1:
        raise UserError("--engine ctranslate2 translates with one model, not an ensemble")
    if args.print_alignment is not None:
        raise UserError("--print-alignment is not available with --engine ctranslate2")
    if args.shortlist:
        raise UserError("--shortlist is aiayn's own; CTranslate2 takes a vocabulary map at conversion (its vmap)")
    compute_type = {"fp32": "default", "bf16": "bfloat16", "fp16": "float16", "int8": "int8", "auto": "auto"}[args.precision]
    return CTranslate2Translator(
        args.model[0],
        options=_search_options(args),
        device=args.device,
        compute_type=compute_type,
        max_tokens=args.max_tokens or 4096,
        warn=_warn,
    )


def _add_translate(sub):
    p = sub.add_parser(
        "translate",
        help="translate text with a trained model (beam search, KV cache)",
        description="Translate raw text, one sentence a line, keeping the input order. "
        "--model may be a weights file or a run directory (averaged, else best, else latest checkpoint); "
        "give --model several times for an ensemble.",
    )
    p.add_argument("--model", action="append", required=True, metavar="CKPT", help="weights file or run directory")
    p.add_argument("--input", default="-", help="input file (default: standard input)")
    p.add_argument("--output", default="-", help="output file (default: standard output)")
    p.add_argument("--ref", help="also score the translations against this reference file")
    p.add_argument(
        "--print-alignment",
        nargs="?",
        const=-1,
        type=int,
        metavar="LAYER",
        help="append, per output subword, the source subword it attends to most (cross-attention of LAYER, default the last, averaged over heads) as src-tgt pairs",
    )
    p.add_argument("--scores", action="store_true", help="append each translation's score")
    p.add_argument("--chunk", type=S.int_at_least(1), default=10000, help="lines read and sorted together (bounds memory)")
    p.add_argument(
        "--engine",
        choices=["native", "ctranslate2"],
        default="native",
        help="decoding engine: native, or ctranslate2 for a model from 'aiayn export --format ctranslate2' (--model is its directory)",
    )
    _add_search_options(p)
    p.set_defaults(run=_run_translate)


def _read_input(path: str):
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for number, raw in enumerate(stream, start=1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                print(f"warning: {path}, line {number}: invalid UTF-8, bad bytes replaced", file=sys.stderr)
                yield raw.decode("utf-8", errors="replace")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _write_failed(e: OSError, output, written: int) -> UserError:
    from aiayn.io.checkpoint import cause_of, disk_full

    full = " (is the disk full?)" if disk_full(e) else ""
    return UserError(f"could not write {output or 'the output'}: {cause_of(e)}{full}; it holds the first {written} translations")


def _run_translate(args):
    import itertools
    import time

    translator = _ctranslate2_translator(args) if args.engine == "ctranslate2" else _translator(args, args.model)
    output = None if args.output == "-" else Path(args.output)
    if output is not None and output.is_dir():
        raise UserError(f"--output {output} is a directory; give a file")
    if output is not None and not output.parent.is_dir():
        raise UserError(f"--output {output}: the directory {output.parent} does not exist")
    out = sys.stdout if output is None else open(output, "w", encoding="utf-8")  # streamed: each chunk is flushed
    chunk = 1 if args.input == "-" and sys.stdin.isatty() else args.chunk
    hyps, started, n_tokens, written = [], time.time(), 0, 0
    lines = _read_input(args.input)

    def emit(text: str) -> None:
        try:
            out.write(text)
        except OSError as e:
            raise _write_failed(e, output, written) from None

    try:
        while batch := list(itertools.islice(lines, chunk)):
            results = translator.translate(batch, alignment_layer=args.print_alignment)
            for tr in results:
                n_tokens += len(tr.tokens)
                if args.nbest > 1:
                    for text, score in tr.nbest or [(tr.text, tr.score)]:
                        emit(f"{text}\t{score:.4f}\n")
                    continue
                fields = [tr.text]
                if args.scores:
                    fields.append(f"{tr.score:.4f}")
                if args.print_alignment is not None:
                    fields.append(" ".join(f"{s}-{t}" for t, s in enumerate(tr.alignment or [])))
                emit("\t".join(fields) + "\n")
                hyps.append(tr.text)
            try:
                out.flush()
            except OSError as e:
                raise _write_failed(e, output, written) from None
            written = len(hyps)
    finally:
        if out is not sys.stdout:
            try:
                out.close()
            except OSError as e:
                raise _write_failed(e, output, written) from None
    seconds = time.time() - started
    print(
        f"translated {len(hyps)} lines, {n_tokens} subwords in {seconds:.1f}s ({n_tokens / max(seconds, 1e-9):.0f} subwords/s)",
        file=sys.stderr,
    )
    if args.ref:
        from aiayn.evaluate import evaluate, read_lines

        refs = read_lines(args.ref)
        if len(refs) != len(hyps):
            raise UserError(f"{args.ref} has {len(refs)} lines but {len(hyps)} lines were translated")
        result = evaluate(hyps, refs)
        print(
            f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}\n  {result['bleu_detail']}\n  BLEU signature: {result['bleu_signature']}\n  chrF signature: {result['chrf_signature']}",
            file=sys.stderr,
        )


def _add_generate(sub):
    p = sub.add_parser(
        "generate",
        help="continue text with a language model (GPT): sampling, greedy or beam, streamed",
        description="Continue a prompt (or each line of --prompts FILE, batched) with a language model trained by "
        "'aiayn train' on an lm dataset or imported with 'aiayn import-hf'. One prompt streams to the terminal as it is generated.",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="weights file, run directory or model directory")
    p.add_argument("--prompt", help="the text to continue (default: start a new document)")
    p.add_argument("--prompts", metavar="FILE", help="one prompt a line (\\n in a line stands for a newline); continuations as JSON lines")
    p.add_argument("--max-new-tokens", type=S.int_at_least(1), default=200, help="tokens to generate at most (default 200)")
    p.add_argument("--temperature", type=S.number(low=0), default=0.8, help="softmax temperature (default 0.8; 0 is greedy)")
    p.add_argument("--top-k", type=S.int_at_least(0), default=0, help="sample from the k most probable tokens (0: off)")
    p.add_argument("--top-p", type=S.number(low=0, high=1, open_low=True), default=1.0, help="nucleus sampling (default 1: off)")
    p.add_argument(
        "--min-p", type=S.number(low=0, high=1, open_high=True), default=0.0, help="drop tokens below min-p × the top one's probability"
    )
    p.add_argument("--repetition-penalty", type=S.number(low=0, open_low=True), default=1.0, help="> 1 makes repeating tokens less likely")
    p.add_argument("--beam", type=S.int_at_least(1), default=1, help="beam search with this beam (default 1: sample or greedy)")
    p.add_argument("--stop", action="append", default=[], metavar="STRING", help="end a continuation at this string (repeatable)")
    p.add_argument("--seed", type=S.int_at_least(0), help="seed for sampling (reproducible output)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.add_argument("--batch-size", type=S.int_at_least(1), default=16, help="prompts generated together (default 16)")
    p.set_defaults(run=_run_generate)


def _run_generate(args):
    import json
    import time

    from aiayn.generate.complete import GenerationOptions, Generator
    from aiayn.io.checkpoint import load_model

    if args.prompt is not None and args.prompts:
        raise UserError("give --prompt or --prompts, not both")
    model, ckpt = load_model(args.model, task="lm", what="a language model (generate needs one; translate a translation model)")
    gen = Generator(model, ckpt.tokenizer, device=args.device, precision=args.precision)
    options = GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        beam=args.beam,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    started, n_tokens = time.time(), 0
    if args.prompts:
        prompts = [line.replace("\\n", "\n") for line in _read_input(args.prompts)]
        for i in range(0, len(prompts), args.batch_size):
            for c in gen.generate(prompts[i : i + args.batch_size], options):
                n_tokens += len(c.tokens)
                print(json.dumps({"prompt": c.prompt, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False), flush=True)
    else:
        prompt = args.prompt or ""
        sys.stdout.write(prompt)
        sys.stdout.flush()

        def show(_row: int, text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        (c,) = gen.generate([prompt], options, on_text=show)
        n_tokens = len(c.tokens)
        sys.stdout.write("\n")
    seconds = time.time() - started
    print(f"generated {n_tokens} tokens in {seconds:.1f}s ({n_tokens / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)


def _add_classify(sub):
    p = sub.add_parser(
        "classify",
        help="classify image files with an image model (ViT)",
        description="Print each image's path and its most probable classes. A file that is not a readable image gets a one-line error; the others are still classified.",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="weights file or run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--top-k", type=S.int_at_least(1), default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=ENCODER_PRECISION_HELP)
    p.set_defaults(run=_run_classify)


def _run_classify(args):
    import json

    from aiayn.data.images import load_image
    from aiayn.vision import Classifier

    clf = Classifier.load(args.model, args.device, args.precision)
    failed = 0
    for path in args.images:
        try:
            image = load_image(path, clf.spec)
        except (ValueError, FileNotFoundError) as e:
            print(f"aiayn classify: error: {e}", file=sys.stderr)
            failed += 1
            continue
        (top,) = clf.classify(image[None], args.top_k)
        if args.json:
            print(json.dumps({"path": path, "labels": [{"label": c, "probability": round(p, 6)} for c, p in top]}, ensure_ascii=False))
        else:
            print(f"{path}\t" + "  ".join(f"{c} {p:.3f}" for c, p in top))
    if failed:
        raise UserError(f"{failed} of {len(args.images)} files could not be read as images")


def _add_zero_shot(sub):
    p = sub.add_parser(
        "zero-shot",
        help="classify images by class names alone, with an image-text model (CLIP)",
        description="Print each image's most probable labels among --labels, each label turned into captions by the "
        "prompt templates and their embeddings averaged (CLIP's prompt ensembling). Without --labels: the classes "
        "the model's dataset named (e.g. the shapes set's colour–shape names).",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="weights file or run directory of an image-text model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--labels", metavar="A,B,...", help="comma-separated class names")
    p.add_argument("--templates", metavar="FILE", help="prompt templates, one a line, '{}' where the label goes (default: the model's)")
    p.add_argument("--top-k", type=S.int_at_least(1), default=3, help="labels to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=ENCODER_PRECISION_HELP)
    p.set_defaults(run=_run_zero_shot)


def _read_templates(path: str | None) -> list[str] | None:
    if not path:
        return None
    try:
        lines = [t.strip() for t in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--templates {path}: cannot read it ({e})") from None
    for number, t in enumerate(lines, 1):
        if t and "{}" not in t:
            raise UserError(f"{path}:{number}: a template needs '{{}}' where the label goes: {t!r}")
    templates = [t for t in lines if t]
    if not templates:
        raise UserError(f"--templates {path}: no templates in it")
    return templates


def _load_images(paths: list[str], spec: dict, command: str) -> tuple[list[str], "object"]:
    """The readable images among paths (a one-line error for each other) as uint8 [N, H, W, C]."""
    import numpy as np

    from aiayn.data.images import load_image

    kept, arrays = [], []
    for path in paths:
        try:
            arrays.append(load_image(path, spec))
            kept.append(path)
        except (ValueError, FileNotFoundError) as e:
            print(f"aiayn {command}: error: {e}", file=sys.stderr)
    return kept, (np.stack(arrays) if arrays else None)


def _run_zero_shot(args):
    import json

    from aiayn.zero_shot import DualEncoder

    enc = DualEncoder.load(args.model, args.device, args.precision)
    if args.labels:
        labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    else:
        labels = (enc.zero_shot or {}).get("classes")
        if not labels:
            raise UserError("give --labels A,B,...: the model's dataset named no classes")
    if len(set(labels)) != len(labels):
        raise UserError("--labels names a class twice")
    paths, images = _load_images(args.images, enc.spec, "zero-shot")
    if images is not None:
        probs = enc.classify(images, labels, _read_templates(args.templates))
        top = probs.topk(min(args.top_k, len(labels)), dim=-1)
        for path, ps, idx in zip(paths, top.values.tolist(), top.indices.tolist()):
            if args.json:
                print(
                    json.dumps(
                        {"path": path, "labels": [{"label": labels[i], "probability": round(p, 6)} for p, i in zip(ps, idx)]},
                        ensure_ascii=False,
                    )
                )
            else:
                print(f"{path}\t" + "  ".join(f"{labels[i]} {p:.3f}" for p, i in zip(ps, idx)))
    if len(paths) < len(args.images):
        raise UserError(f"{len(args.images) - len(paths)} of {len(args.images)} files could not be read as images")


def _add_sample(sub):
    p = sub.add_parser(
        "sample",
        help="draw images from an image generator (DiT)",
        description="Draw images of the given classes from a DiT with DDIM (or DDPM) and classifier-free guidance, "
        "into one grid PNG or (--out ending in /) one PNG per image. The same --seed draws the same images.",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="weights file or run directory")
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="NAME|INDEX",
        help="a class to draw, by name or index; repeat or separate by commas (default: every class in turn)",
    )
    p.add_argument("--n", type=S.int_at_least(1), default=64, help="images in all (default 64), the classes in turn")
    p.add_argument("--steps", type=S.int_at_least(1), default=50, help="DDIM steps (default 50; ddpm takes every step)")
    p.add_argument("--guidance", type=S.number(low=0), default=2.0, help="classifier-free guidance scale (default 2; 1: none)")
    p.add_argument(
        "--guidance-interval",
        nargs=2,
        type=S.number(low=0),
        metavar=("LOW", "HIGH"),
        help="guide only the steps whose noise-to-signal ratio √((1 − ᾱ_t)/ᾱ_t) lies in (LOW, HIGH], the conditional "
        "model alone elsewhere (e.g. 0.28 5.42; default: every step)",
    )
    p.add_argument("--eta", type=S.number(low=0), default=0.0, help="DDIM's η: 0 deterministic (default), 1 DDPM's noise")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--columns", type=S.int_at_least(1), help="images per grid row (default: about the square root of --n)")
    p.add_argument("--scale", type=S.int_at_least(1), default=1, help="enlarge the grid this many times (nearest neighbour)")
    p.add_argument(
        "--steps-out",
        metavar="PNG",
        help="also draw the denoising (DDIM): each image's estimate of itself as the steps go, one row per image (at most 16)",
    )
    p.add_argument("--out", required=True, metavar="PNG|DIR/", help="the grid PNG, or a directory (ending in /) for one PNG per image")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=ENCODER_PRECISION_HELP)
    p.set_defaults(run=_run_sample)


def _run_sample(args):
    import math

    from aiayn import diffusion
    from aiayn.generate.images import ImageGenerator, grid
    from aiayn.io.checkpoint import atomic_write

    gen = ImageGenerator.load(args.model, args.device, args.precision)
    names = [c for spec in (args.classes or []) for c in spec.split(",") if c.strip()]
    try:
        wanted = [gen.class_index(c) for c in names] or list(range(len(gen.classes)))
    except ValueError as e:
        raise UserError(str(e)) from None
    classes = [wanted[i % len(wanted)] for i in range(args.n)]
    trajectory = bool(args.steps_out)
    if trajectory and args.sampler != "ddim":
        raise UserError("--steps-out draws DDIM's steps: use --sampler ddim")
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    if interval:
        try:
            diffusion.check_guidance_interval(interval)
        except ValueError as e:
            raise UserError(f"--guidance-interval: {e}") from None
    images, steps = gen.sample(
        classes, args.steps, args.guidance, args.eta, args.seed, args.sampler, trajectory=trajectory, guidance_interval=interval
    )
    columns = args.columns or max(1, math.ceil(math.sqrt(args.n)))

    def save(picture, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))

    if args.out.endswith("/"):
        from PIL import Image

        out = Path(args.out)
        for i, (image, c) in enumerate(zip(images, classes)):
            save(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image), out / f"{i:04d}-{gen.classes[c]}.png")
        print(f"wrote {len(images)} images to {out}/")
    else:
        save(grid(images, columns, scale=args.scale), Path(args.out))
        print(f"wrote {args.out}: {len(images)} images ({', '.join(sorted({gen.classes[c] for c in classes}))})")
    if trajectory:
        import numpy as np

        shown = steps[:: max(1, len(steps) // 10)][:10] + [steps[-1]] if len(steps) > 10 else steps
        rows = np.stack([s[: min(len(images), 16)] for s in shown], axis=1).reshape(-1, *images.shape[1:])
        save(grid(rows, len(shown), scale=args.scale), Path(args.steps_out))
        print(f"wrote {args.steps_out}: the estimate after {len(shown)} of the {len(steps)} steps, one row per image")


def _add_retrieve(sub):
    p = sub.add_parser(
        "retrieve",
        help="find the images that match a text, or the captions that match an image (CLIP)",
        description="Rank a folder of images by a text (--text ... --images DIR), or lines of captions by an image "
        "(--image FILE --captions FILE), by cosine similarity in the model's joint space; print the best k with their scores.",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="weights file or run directory of an image-text model")
    p.add_argument("--text", help="the query text (with --images)")
    p.add_argument("--images", metavar="DIR", help="a folder of images to search (all image files under it)")
    p.add_argument("--image", metavar="FILE", help="the query image (with --captions)")
    p.add_argument("--captions", metavar="FILE", help="candidate captions, one a line")
    p.add_argument("--k", type=S.int_at_least(1), default=5, help="results to show (default 5)")
    p.add_argument("--json", action="store_true", help="the results as one JSON list")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_run_retrieve)


def _run_retrieve(args):
    import json

    from aiayn.data.images import IMAGE_SUFFIXES
    from aiayn.zero_shot import DualEncoder

    if bool(args.text) == bool(args.image) or bool(args.text) != bool(args.images) or bool(args.image) != bool(args.captions):
        raise UserError("give --text TEXT --images DIR (text to images), or --image FILE --captions FILE (image to captions)")
    enc = DualEncoder.load(args.model, args.device)
    if args.text:
        folder = Path(args.images)
        if not folder.is_dir():
            raise UserError(f"--images {folder}: not a directory")
        files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--images {folder}: no image files in it")
        names, images = _load_images(files, enc.spec, "retrieve")
        if images is None:
            raise UserError(f"--images {folder}: none of its files is a readable image")
        scores = (enc.encode_texts([args.text]) @ enc.encode_images(images).t())[0]
    else:
        try:
            names = [c.strip() for c in Path(args.captions).read_text(encoding="utf-8").splitlines() if c.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--captions {args.captions}: cannot read it ({e})") from None
        if not names:
            raise UserError(f"--captions {args.captions}: no captions in it")
        _, image = _load_images([args.image], enc.spec, "retrieve")
        if image is None:
            raise UserError(f"--image {args.image} could not be read")
        scores = (enc.encode_images(image) @ enc.encode_texts(names).t())[0]
    top = scores.topk(min(args.k, len(names)))
    results = [(names[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]
    if args.json:
        print(json.dumps([{"match": n, "score": round(s, 6)} for n, s in results], ensure_ascii=False))
    else:
        for n, s in results:
            print(f"{s:.3f}\t{n}")


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="score translations with sacreBLEU (BLEU, chrF), or a language model on text (loss, perplexity)",
        description="--hyp FILE --ref FILE: sacreBLEU's BLEU and chrF. --model MODEL --text FILE: a language model's "
        "loss (bits per token), perplexity and bits per character on the text.",
    )
    p.add_argument("--hyp", help="translations, one a line")
    p.add_argument("--ref", help="references, one a line")
    p.add_argument("--model", help="a language model (with --text)")
    p.add_argument("--text", help="UTF-8 text to score the language model on")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="a dataset to score an image model on (with --model): a classifier's accuracy and confusion matrix, "
        "or an image-text model's zero-shot accuracy and recall@k",
    )
    p.add_argument("--split", default="test", help="the dataset split to score (default test)")
    p.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (with --model)")
    p.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer (default 13a; e.g. intl, zh, ja-mecab, char)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args):
    import json

    from aiayn.evaluate import evaluate_files

    if args.model and args.data:
        from aiayn.data.binarize import load_meta

        if load_meta(args.data).get("task") == "image-text":
            return _evaluate_image_text(args)
        return _evaluate_images(args)
    if args.model or args.text:
        if not (args.model and args.text) or args.hyp or args.ref:
            raise UserError("a language model is scored with --model MODEL --text FILE (and no --hyp/--ref)")
        from aiayn.evaluate import evaluate_lm

        result = evaluate_lm(args.model, args.text, args.device)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"loss {result['loss']:.4f} bits/token ({result['loss_nats']:.4f} nats)  perplexity {result['perplexity']:.2f}  "
                f"bits/char {result['bits_per_char']:.4f}  ({result['tokens']} tokens, {result['characters']} characters)"
            )
        return
    if not (args.hyp and args.ref):
        raise UserError("give --hyp FILE --ref FILE (translations), or --model MODEL --text FILE (a language model)")

    result = evaluate_files(args.hyp, args.ref, args.tokenize)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ({result['sentences']} sentences)")
        print(f"  {result['bleu_detail']}")
        print(f"  BLEU signature: {result['bleu_signature']}")
        print(f"  chrF signature: {result['chrf_signature']}")


def _evaluate_image_text(args):
    import json

    from aiayn.data.image_text import ImageTextSplit, image_text_spec_id
    from aiayn.zero_shot import DualEncoder, evaluate_split

    enc = DualEncoder.load(args.model, args.device)
    split = ImageTextSplit(args.data, args.split)
    meta = split.meta
    if image_text_spec_id(meta["image"], meta["vocab"]["sha256"], int(meta["context"])) != image_text_spec_id(
        enc.spec, enc.tokenizer.sha256, enc.model.config.context
    ):
        raise UserError(f"{args.data}: its image format, vocabulary or context differ from the model's")
    result = {
        k.removeprefix("valid_"): v
        for k, v in evaluate_split(enc.model, split, enc.spec, enc.tokenizer, meta.get("zero_shot"), enc.device).items()
    }
    result.update(images=len(split), captions=len(split.tokens), split=args.split)
    if args.json:
        print(json.dumps(result))
        return
    zs = f"zero-shot accuracy {result['zero_shot_accuracy']:.2f}%  " if "zero_shot_accuracy" in result else ""
    print(f"{zs}on {len(split)} images and {len(split.tokens)} captions of {args.data} ({args.split})")
    print(f"  text → image  recall@1 {result['recall@1']:.2f}  @5 {result['recall@5']:.2f}  @10 {result['recall@10']:.2f}")
    print(
        f"  image → text  recall@1 {result['image_recall@1']:.2f}  @5 {result['image_recall@5']:.2f}  @10 {result['image_recall@10']:.2f}"
    )
    print(f"  contrastive loss {result['loss']:.4f} bits a pair")


def _evaluate_images(args):
    import json

    from aiayn.data.images import ImageSplit
    from aiayn.tasks.images import evaluate_split
    from aiayn.vision import Classifier, draw_confusion

    clf = Classifier.load(args.model, args.device)
    split = ImageSplit(args.data, args.split)
    if split.meta["classes"] != clf.classes:
        raise UserError(f"{args.data} has other classes than the model ({', '.join(split.meta['classes'][:5])}…)")
    result = evaluate_split(clf.model, split, clf.spec, clf.device, clf.precision)
    confusion = result.pop("confusion")
    if args.confusion:
        draw_confusion(confusion, clf.classes, args.confusion, f"{args.split}: accuracy {result['valid_accuracy']:.2f}%")
    if args.json:
        print(
            json.dumps(
                {
                    "accuracy": result["valid_accuracy"],
                    "loss_bits": result["valid_nll"],
                    "images": len(split),
                    "confusion": confusion.tolist(),
                }
            )
        )
        return
    print(
        f"accuracy {result['valid_accuracy']:.2f}% on {len(split)} images of {args.data} ({args.split}); loss {result['valid_nll']:.4f} bits"
    )
    width = max(len(c) for c in clf.classes)
    print(" " * (width + 2) + " ".join(f"{i:>5}" for i in range(len(clf.classes))) + "   (columns: predicted class)")
    for i, row in enumerate(confusion):
        share = row[i] / max(row.sum(), 1) * 100
        print(f"{i:>2} {clf.classes[i]:<{width}}" + " ".join(f"{v:>5}" for v in row) + f"   {share:5.1f}%")
    if args.confusion:
        print(f"wrote {args.confusion}")


def _add_attention(sub):
    p = sub.add_parser(
        "attention",
        help="draw attention: heat maps for a sentence and its translation, or the rollout over an image",
    )
    p.add_argument("--model", required=True, help="weights file or run directory")
    p.add_argument("--text", help="the source sentence (a translation model)")
    p.add_argument("--image", help="an image file (an image model): attention rollout over it")
    p.add_argument("--out", default="attention.png", help="PNG file to write")
    p.add_argument("--kind", choices=["cross", "encoder", "both"], default="both", help="encoder-decoder, encoder self-attention, or both")
    p.add_argument("--layers", type=int, nargs="+", help="layers to draw (1-based; negative counts from the end; default all)")
    p.add_argument("--average-heads", action="store_true", help="one panel per layer, the mean of its heads")
    p.add_argument("--json", metavar="FILE", help="also write the weights as JSON")
    p.add_argument("--beam", type=S.int_at_least(1), default=4)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.set_defaults(run=_run_attention)


def _run_attention(args):
    import json

    if args.image:
        from aiayn.data.images import load_image
        from aiayn.vision import Classifier, draw_rollout

        clf = Classifier.load(args.model, args.device)
        image = load_image(args.image, clf.spec)
        grid, top = clf.rollout(image)
        label = ", ".join(f"{c} {p:.2f}" for c, p in top)
        path = draw_rollout(image, grid, args.out, f"{Path(args.image).name}: {label}")
        print(f"{args.image}: {label}\nwrote {path}")
        return
    if not args.text:
        raise UserError("give --text SENTENCE (a translation model) or --image FILE (an image model)")
    from aiayn import runtime
    from aiayn.generate.translate import Translator
    from aiayn.heatmaps import attention_maps, render
    from aiayn.io.checkpoint import load_model

    device = runtime.device(args.device)
    model, ckpt = load_model(args.model, device)
    translator = Translator(model, *ckpt.tokenizers, beam=args.beam, device=device)
    maps = attention_maps(translator, args.text)
    kinds = ("cross", "encoder") if args.kind == "both" else (args.kind,)
    layers = [l - 1 if l > 0 else l for l in args.layers] if args.layers else None
    path, panels = render(maps, args.out, kinds, layers, args.average_heads)
    if args.json:
        Path(args.json).write_text(json.dumps(maps.to_dict()))
    print(f"translation: {maps.translation}\nwrote {path} ({panels} panels)")


def _add_plot(sub):
    p = sub.add_parser("plot", help="draw the loss and BLEU curves of a training run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG file (default RUN_DIR/curves.png)")
    p.set_defaults(run=_run_plot)


def _run_plot(args):
    from aiayn.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")


def _add_import_hf(sub):
    p = sub.add_parser(
        "import-hf",
        help="import a Hugging Face Marian model (the 1,000+ OPUS-MT models), a GPT-2, a ViT or a CLIP",
        description="Convert a MarianMTModel checkpoint (config.json, model.safetensors or pytorch_model.bin, source.spm, "
        "target.spm, vocab.json) into an aiayn model for translate, evaluate, attention, serve and train --init-from; "
        "a GPT2LMHeadModel directory (config.json, weights, tokenizer.json or vocab.json + merges.txt) for generate, evaluate and serve; "
        "a ViTForImageClassification directory (config.json, weights, preprocessor_config.json) for classify, evaluate and serve; "
        "or a CLIPModel directory (config.json, weights, tokenizer.json, preprocessor_config.json) for zero-shot, retrieve, evaluate and serve.",
    )
    p.add_argument("src", metavar="SRC", help="a local Marian directory, or a hub name such as Helsinki-NLP/opus-mt-en-de (needs internet)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write model.safetensors to (or a .safetensors file)")
    p.set_defaults(run=_run_import_hf)


def _run_import_hf(args):
    config = Path(args.src) / "config.json"
    if config.is_file() and _json_field(config, "model_type") == "clip":
        from aiayn.interop.hf_clip import import_clip

        path = import_clip(args.src, args.out)
        print(f"wrote {path}; try it: aiayn zero-shot --model {path} --labels 'a cat,a dog' IMAGE")
        return
    if config.is_file() and _json_field(config, "model_type") == "vit":
        from aiayn.interop.hf_vit import import_vit

        path = import_vit(args.src, args.out)
        print(f"wrote {path}; try it: aiayn classify --model {path} IMAGE")
        return
    if config.is_file() and _json_field(config, "model_type") == "gpt2":
        from aiayn.interop.hf_gpt2 import import_gpt2

        path = import_gpt2(args.src, args.out)
        print(f"wrote {path}; try it: aiayn generate --model {path} --prompt 'Hello'")
        return
    from aiayn.interop.hf_marian import import_marian

    path = import_marian(args.src, args.out)
    print(
        f"wrote {path}; to decode as MarianMTModel.generate does: aiayn translate --model {path} --lp-style power --alpha 1 --early-stop hf"
    )


def _json_field(path: Path, key: str):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not readable JSON: {e}") from None


def _add_export(sub):
    p = sub.add_parser(
        "export",
        help="export a model for Hugging Face transformers or CTranslate2, or quantized to int8",
        description="Write a model as a Hugging Face directory (MarianMTModel / MarianTokenizer.from_pretrained, and "
        "GPT-2 and ViT for those models), as a CTranslate2 model (aiayn translate --engine ctranslate2, or "
        "ctranslate2.Translator), or as an aiayn model with int8 projections (--format int8).",
    )
    p.add_argument("model", metavar="MODEL", help="weights file, run directory or model directory")
    p.add_argument(
        "--format",
        required=True,
        choices=["hf", "ctranslate2", "int8"],
        help="hf: transformers (MarianMTModel, GPT2LMHeadModel, ViTForImageClassification); ctranslate2; "
        "int8: an aiayn model whose projections are int8 (CPU decoding, ~4x smaller)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to create")
    p.add_argument(
        "--quantization",
        choices=["int8", "int8_float32", "int8_float16", "int16", "float16", "bfloat16", "float32"],
        help="CTranslate2 weight type (default float32)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_run_export)


def _run_export(args):
    from aiayn.io.checkpoint import read_metadata, resolve_model_path

    if args.format == "int8":
        if args.quantization:
            raise UserError("--quantization applies to --format ctranslate2 only")
        from aiayn.io.checkpoint import export_int8

        out = export_int8(args.model, args.out, force=args.force)
        print(f"wrote {out / 'model.safetensors'} (int8 projections): translate, generate, classify and serve decode it in int8 on the CPU")
        return
    architecture = read_metadata(resolve_model_path(args.model)).get("architecture")
    if architecture == "rnnsearch":
        raise UserError("an RNNsearch model has no counterpart in transformers or CTranslate2; --format int8 exports it quantized")
    if architecture == "clip":
        if args.format != "hf" or args.quantization:
            raise UserError("a CLIP exports to --format hf (CLIPModel)")
        from aiayn.interop.hf_clip import export_clip

        out = export_clip(args.model, args.out, force=args.force)
        print(f"wrote {out}: CLIPModel.from_pretrained('{out}') loads it")
        return
    if architecture == "vit":
        if args.format != "hf" or args.quantization:
            raise UserError("a ViT exports to --format hf (ViTForImageClassification)")
        from aiayn.interop.hf_vit import export_vit

        out = export_vit(args.model, args.out, force=args.force)
        print(f"wrote {out}: ViTForImageClassification.from_pretrained('{out}') and ViTImageProcessor.from_pretrained('{out}') load it")
        return
    if architecture == "gpt":
        if args.format != "hf" or args.quantization:
            raise UserError("a GPT exports to --format hf (GPT2LMHeadModel)")
        from aiayn.interop.hf_gpt2 import export_gpt2

        out = export_gpt2(args.model, args.out, force=args.force)
        print(f"wrote {out}: GPT2LMHeadModel.from_pretrained('{out}') loads it")
        return
    if args.format == "hf":
        if args.quantization:
            raise UserError("--quantization applies to --format ctranslate2 only")
        try:
            from aiayn.interop.hf_marian import export_marian
        except ImportError as e:
            raise UserError(f"--format hf needs transformers ({e}): pip install 'aiayn[interop]'") from None
        out = export_marian(args.model, args.out, force=args.force)
        print(f"wrote {out}: MarianMTModel.from_pretrained('{out}') and MarianTokenizer.from_pretrained('{out}') load it")
    else:
        try:
            from aiayn.interop.ctranslate2 import export_ctranslate2
        except ImportError as e:
            raise UserError(f"--format ctranslate2 needs CTranslate2 ({e}): pip install 'aiayn[interop]'") from None
        out = export_ctranslate2(args.model, args.out, args.quantization, force=args.force)
        print(f"wrote {out} ({args.quantization or 'float32'}): aiayn translate --engine ctranslate2 --model {out}")


def _add_quickstart(sub):
    p = sub.add_parser("quickstart", help="train and try a tiny English→Spanish model on shipped data (a few minutes on a CPU)")
    p.add_argument("--out", default="quickstart", help="directory for the corpus, dataset, run and pictures (default ./quickstart)")
    p.add_argument("--minutes", type=float, default=3.0, help="training time in minutes (default 3; longer gives better translations)")
    p.add_argument("--test-sentences", type=int, default=500, help="held-out verses to translate and score (default 500)")
    p.set_defaults(run=_run_quickstart)


def _run_quickstart(args):
    from aiayn.quickstart import quickstart

    quickstart(args.out, args.minutes, args.test_sentences)


def _add_serve(sub):
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: a JSON API with dynamic batching, and a web page",
        description="Serve a model with FastAPI + uvicorn: POST /v1/translate, POST /v1/attention, "
        "GET /v1/models, GET /health, a page to try it at /, and API docs at /docs. Concurrent requests "
        "are decoded together (dynamic batching). SIGINT/SIGTERM lets in-flight requests finish.",
    )
    p.add_argument("--model", required=True, metavar="CKPT", help="weights file or run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=S.int_between(0, 65535), default=8000, help="(default 8000)")
    p.add_argument("--name", help="model name shown by /v1/models (default: the file or directory name)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info")
    g = p.add_argument_group("limits and batching")
    g.add_argument("--max-texts", type=S.int_at_least(1), default=64, help="texts per request (default 64; more: 413)")
    g.add_argument("--max-chars", type=S.int_at_least(1), default=1000, help="characters per text (default 1000; more: 413)")
    g.add_argument("--max-body-bytes", type=S.int_at_least(1), default=1 << 20, help="request body size (default 1 MiB; more: 413)")
    g.add_argument(
        "--timeout",
        type=S.number(low=0, open_low=True),
        default=30.0,
        help="seconds a request may take, queueing included (default 30; then 504)",
    )
    g.add_argument(
        "--max-batch-tokens", type=S.int_at_least(1), default=4096, help="source subwords × beam decoded together (default 4096)"
    )
    g.add_argument(
        "--max-batch-texts", type=S.int_at_least(1), default=128, help="texts decoded together (default 128; 1 turns dynamic batching off)"
    )
    g.add_argument(
        "--max-wait-ms", type=S.number(low=0), default=5.0, help="how long a request waits for others to share its batch (default 5)"
    )
    g.add_argument("--max-queue", type=S.int_at_least(1), default=1024, help="requests waiting at once (default 1024; more: 503)")
    g.add_argument(
        "--max-request-cost",
        type=S.int_at_least(1),
        default=81920,
        help="beam × output cap summed over a request's texts: the decoding work one request may ask for "
        "(default 81920: 64 texts of ~270 subwords at beam 4; more: 413)",
    )
    g.add_argument(
        "--shutdown-timeout", type=S.number(low=0), default=30.0, help="seconds in-flight requests get to finish on shutdown (default 30)"
    )
    p.set_defaults(run=_run_serve)


def _run_serve(args):
    try:
        from aiayn.serve import ServeSettings, serve
    except ImportError as e:
        raise UserError(f"aiayn serve needs the serve extra ({e.name} is missing): pip install 'aiayn[serve]'") from None
    settings = ServeSettings(
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        timeout=args.timeout,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_texts=args.max_batch_texts,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_request_cost=args.max_request_cost,
        shutdown_timeout=args.shutdown_timeout,
    )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        settings=settings,
        device=args.device,
        precision=args.precision,
        name=args.name,
        log_level=args.log_level,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiayn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(title="commands", metavar="<command>")
    for add in (
        _add_prepare,
        _add_train,
        _add_average,
        _add_translate,
        _add_generate,
        _add_classify,
        _add_zero_shot,
        _add_sample,
        _add_retrieve,
        _add_evaluate,
        _add_attention,
        _add_plot,
        _add_quickstart,
        _add_serve,
        _add_import_hf,
        _add_export,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        sys.exit(1)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.run(args, extra) if getattr(args, "takes_overrides", False) else args.run(args)
    except KeyboardInterrupt:
        print("aiayn: interrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, KeyError, OSError, RuntimeError) as e:
        if args.debug or os.environ.get("AIAYN_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"aiayn {sys.argv[1] if len(sys.argv) > 1 else ''}: error: {message}", file=sys.stderr)
        sys.exit(2)
