"""A peer toolkit's RNNsearch-style model (OpenNMT-py: bidirectional GRU encoder, MLP/additive
"Bahdanau" attention, GRU decoder), trained on the CPU for a wall-clock budget and decoded with beam
search, for side-by-side comparisons with aiayn's `rnnsearch` (benchmarks/transformer_vs_rnn.py).

OpenNMT-py lives in its own venv, benchmarks/.peer-venv, beside torch==2.13.0 (the CPU build that
`pip install torch==2.13.0` takes from this machine's disk). OpenNMT-py 3.5.1, the newest release,
pins torch<2.3, so it is installed with --no-deps and its run-time imports are installed by hand;
its package __init__ imports every transform module, so spacy, fasttext, rapidfuzz and pyahocorasick
are needed only to import it. Two adaptations to torch 2.13 are needed and nothing else:
  * torch>=2.6 loads with weights_only=True, and OpenNMT-py's checkpoints pickle an
    argparse.Namespace and the vocab: onmt_translate fails with "Weights only load failed ...
    Unsupported global: GLOBAL argparse.Namespace". We set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for
    the translate step (the checkpoints are our own).
  * OpenNMT-py has no wall-clock stop. Training runs through a small launcher (written into
    `work/`) that calls onmt.bin.train.main() unchanged, except that the trainer's batch generator
    stops yielding once the deadline has passed; OpenNMT-py's own loop then ends and saves its
    final checkpoint, so nothing trained is lost. The launcher also counts the updates and the
    source/target tokens of every batch it hands to the trainer and writes them to
    work/train_stats.json, with time stamps (launch, first batch, end of training loop, exit).

Stdlib only, so that it runs from any Python (aiayn's venv included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peer-venv"
TOOLKIT = "OpenNMT-py"
ONMT_VERSION = "3.5.1"
TORCH_VERSION = "2.13.0"
# OpenNMT-py 3.5.1's install_requires, less torch (pinned <2.3) and what training/translation never
# import (ctranslate2, tensorboard, flask, waitress); versions as installed and tested on 2026-12-02.
ONMT_DEPS = [
    "ConfigArgParse==1.9.0",
    "PyYAML==6.0.4",
    "sacrebleu==2.6.0",
    "six==1.17.0",
    "numpy==2.4.6",
    "pyonmttok==1.38.1",
    "RapidFuzz==3.14.6",
    "pyahocorasick==2.3.1",
    "fasttext-wheel==0.9.2",
    "spacy==3.8.18",
    "sentencepiece==0.2.3",  # not needed by run(); handy for making pieces in this venv
]


def _py() -> Path:
    return VENV / "bin" / "python"


def _sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def _installed_ok() -> bool:
    if not _py().exists():
        return False
    probe = (
        "import importlib.metadata as m, torch, onmt.bin.train, onmt.bin.translate;"
        f"assert torch.__version__.split('+')[0] == '{TORCH_VERSION}', torch.__version__;"
        f"assert m.version('OpenNMT-py') == '{ONMT_VERSION}'"
    )
    r = subprocess.run([str(_py()), "-W", "ignore", "-c", probe], capture_output=True, text=True)
    return r.returncode == 0


def setup() -> Path:
    """Create benchmarks/.peer-venv and install OpenNMT-py beside torch==2.13.0 if missing
    (idempotent); return the venv's python."""
    if _installed_ok():
        print(f"peer venv ready: {VENV} ({TOOLKIT} {ONMT_VERSION}, torch {TORCH_VERSION})")
        return _py()
    if not _py().exists():
        print(f"creating venv {VENV}")
        _sh([sys.executable, "-m", "venv", VENV])
    pip = [_py(), "-m", "pip", "install", "--disable-pip-version-check"]
    # torch first and by exact version: a bare `torch` requirement would pull a multi-GB CUDA build.
    _sh(pip + [f"torch=={TORCH_VERSION}"])
    # --no-deps: OpenNMT-py 3.5.1 requires torch<2.3,>=2.1, which pip would "fix" by downloading one.
    _sh(pip + ["--no-deps", f"{TOOLKIT}=={ONMT_VERSION}"])
    _sh(pip + ONMT_DEPS)
    if not _installed_ok():
        raise RuntimeError(f"{TOOLKIT} does not import in {VENV} after install")
    print(f"peer venv ready: {VENV}")
    return _py()


# The launcher run by the peer venv's python: OpenNMT-py's own `onmt_train`, plus a wall-clock stop.
_LAUNCHER = r"""
import json, os, sys, time
T_LAUNCH = float(os.environ["PEER_T_LAUNCH"])
BUDGET = float(os.environ["PEER_BUDGET"])
FROM_FIRST_BATCH = os.environ["PEER_BUDGET_FROM"] == "first_batch"
DEADLINE = None if FROM_FIRST_BATCH else T_LAUNCH + BUDGET
STATS = os.environ["PEER_STATS"]
import torch
torch.set_num_threads(int(os.environ["PEER_THREADS"]))
import onmt.trainer
from onmt.bin.train import main

st = dict(t_launch=T_LAUNCH, t_import_done=time.time(), t_first_batch=None, t_loop_end=None,
          t_exit=None, updates=0, tgt_tokens=0, src_tokens=0, sents=0, stopped_by_deadline=False,
          torch_threads=torch.get_num_threads(), torch_version=torch.__version__)
_orig = onmt.trainer.Trainer._accum_batches

def _accum_batches(self, iterator):
    global DEADLINE
    pad = self.train_loss.padding_idx
    for batches, normalization in _orig(self, iterator):
        now = time.time()
        if st["t_first_batch"] is None:
            st["t_first_batch"] = now
            if DEADLINE is None:
                DEADLINE = now + BUDGET
        if now >= DEADLINE:
            st["stopped_by_deadline"] = True
            break
        for b in batches:
            # target tokens the loss sees: tgt[1:] (no BOS), EOS included, padding excluded
            st["tgt_tokens"] += int(b["tgt"][:, 1:, 0].ne(pad).sum())
            st["src_tokens"] += int(b["srclen"].sum())
            st["sents"] += len(b["tgt"])
        st["updates"] += 1
        yield batches, normalization
    st["t_loop_end"] = time.time()

onmt.trainer.Trainer._accum_batches = _accum_batches
try:
    main()
finally:
    st["t_exit"] = time.time()
    with open(STATS, "w") as f:
        json.dump(st, f, indent=1)
"""


def _count(path: Path, limit: int | None = None) -> tuple[int, int]:
    lines = toks = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and lines >= limit:
                break
            lines += 1
            toks += len(line.split())
    return lines, toks


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    return env


def _q(cmd: list) -> str:
    return " ".join(str(c) for c in cmd)


def run(
    pieces_dir: Path,
    work: Path,
    minutes: float,
    emb: int,
    hidden: int,
    layers: int = 1,
    batch_tokens: int = 2048,
    beam: int = 4,
    threads: int = 2,
    *,
    size_match: str = "encoder",
    test_lines: int | None = None,
    budget_includes_startup: bool = True,
    save_every: int = 500,
    seed: int = 1234,
) -> dict:
    """Train OpenNMT-py's GRU + MLP-attention model for `minutes` of wall clock on the CPU, then
    beam-decode test.src into work/test.hyp.pieces. Returns a dict of what was run and measured.

    Sizes. OpenNMT-py's `-hidden_size` is the *total* size of a bidirectional encoder (each
    direction gets hidden_size // 2), and it insists that encoder and decoder sizes are equal (its
    attention reads annotations of the decoder's size), so aiayn's "per-direction hidden, decoder
    hidden" cannot be matched exactly:
      size_match="encoder" (default): -hidden_size 2*hidden: each encoder direction is `hidden`
          (annotations 2*hidden, as in aiayn), the decoder GRU is 2*hidden (twice aiayn's).
      size_match="decoder": -hidden_size hidden: decoder `hidden`, encoder directions hidden//2.
    Embeddings are `emb`, shared between source and target (-share_vocab -share_embeddings); the
    output layer (decoder size -> vocab) is not tied. Attention is `-global_attention mlp`, the
    additive score v^T tanh(W q + U h_j), with OpenNMT's input feeding: the attention query is the
    decoder state after this step's GRU update (Luong's ordering), not Bahdanau's s_{i-1}.

    Budget. The deadline is launch + minutes (launch = onmt_train's start, so start-up: imports,
    vocab, model build, filling the length bucket, counts against it, unless
    budget_includes_startup=False, which puts it at the first batch instead). Batches stop being
    handed to the trainer at the deadline; the last update finishes and OpenNMT-py saves its
    final checkpoint, which is decoded. train_seconds = launch to end of the training loop
    (measured); loop_seconds = first batch to end of loop. A checkpoint is also saved every
    `save_every` updates, as a fall-back if the process has to be killed.

    Batches: -batch_type tokens -batch_size batch_tokens: OpenNMT-py fills a batch while
    n_sentences * max(longest source, longest target) (padded, BOS/EOS included) <= batch_tokens,
    from length-sorted buckets, so a batch carries a little under batch_tokens target tokens.
    """
    assert size_match in ("encoder", "decoder"), size_match
    pieces_dir, work = Path(pieces_dir).resolve(), Path(work).resolve()
    py = setup()
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("model_step_*.pt"):
        old.unlink()
    env = _env(threads)
    ver = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m;print(m.version('OpenNMT-py'))"], capture_output=True, text=True, check=True
    ).stdout.strip()

    n_train, train_src_tok = _count(pieces_dir / "train.src")
    _, train_tgt_tok = _count(pieces_dir / "train.tgt")
    vocab = work / "vocab.shared"
    cfg = work / "onmt.yaml"
    cfg.write_text(
        "# written by benchmarks/peer_rnn.py\n"
        f"save_data: {work}/data\n"
        f"src_vocab: {vocab}\n"
        f"tgt_vocab: {vocab}\n"
        "share_vocab: true\n"
        "overwrite: true\n"
        "data:\n"
        "  corpus_1:\n"
        f"    path_src: {pieces_dir / 'train.src'}\n"
        f"    path_tgt: {pieces_dir / 'train.tgt'}\n"
        "    weight: 1\n",
        encoding="utf-8",
    )

    # 1. vocabulary: every piece seen in train.src + train.tgt (one shared list, no frequency cut)
    vocab_cmd = [VENV / "bin" / "onmt_build_vocab", "-config", cfg, "-n_sample", "-1", "-num_threads", "1"]
    print("+", _q(vocab_cmd), flush=True)
    t = time.time()
    with open(work / "build_vocab.log", "w") as log:
        subprocess.run(list(map(str, vocab_cmd)), check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    vocab_seconds = time.time() - t
    n_vocab = sum(1 for _ in open(vocab, encoding="utf-8"))

    # 2. training
    onmt_hidden = 2 * hidden if size_match == "encoder" else hidden
    launcher = work / "onmt_train_deadline.py"
    launcher.write_text(_LAUNCHER, encoding="utf-8")
    stats_path = work / "train_stats.json"
    stats_path.unlink(missing_ok=True)
    # fmt: off
    train_args = [
        "-config", cfg, "-save_model", work / "model", "-seed", seed,
        "-model_type", "text", "-encoder_type", "brnn", "-decoder_type", "rnn", "-rnn_type", "GRU",
        "-global_attention", "mlp", "-input_feed", "1",
        "-layers", layers, "-word_vec_size", emb, "-hidden_size", onmt_hidden,
        "-share_embeddings", "-src_vocab_size", max(n_vocab, 32768), "-tgt_vocab_size", max(n_vocab, 32768),
        "-dropout", "0.2", "-optim", "adam", "-learning_rate", "0.001", "-adam_beta1", "0.9",
        "-adam_beta2", "0.999", "-max_grad_norm", "5", "-learning_rate_decay", "1.0",
        "-normalization", "tokens", "-batch_type", "tokens", "-batch_size", batch_tokens,
        "-accum_count", "1", "-bucket_size", min(262144, max(n_train, 1024)),
        "-num_workers", "0", "-train_steps", "100000000", "-save_checkpoint_steps", save_every,
        "-keep_checkpoint", "2", "-report_every", "50", "-log_file", work / "train.log",
    ]
    # fmt: on
    train_cmd = [py, launcher] + train_args
    print("+", _q(train_cmd), flush=True)
    budget = minutes * 60.0
    t_launch = time.time()
    env_t = dict(
        env,
        PEER_T_LAUNCH=repr(t_launch),
        PEER_STATS=str(stats_path),
        PEER_THREADS=str(threads),
        PEER_BUDGET=repr(budget),
        PEER_BUDGET_FROM="launch" if budget_includes_startup else "first_batch",
    )
    killed = False
    with open(work / "train.stdout", "w") as out:
        proc = subprocess.Popen(list(map(str, train_cmd)), env=env_t, stdout=out, stderr=subprocess.STDOUT)
        try:  # the launcher stops itself; this is only a guard against a hung process
            proc.wait(timeout=budget + (600 if budget_includes_startup else 1200))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed = True
    t_end = time.time()
    if proc.returncode != 0 and not killed:
        tail = (work / "train.stdout").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"onmt_train failed (rc {proc.returncode}):\n{tail}")
    st = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    log = (work / "train.log").read_text(errors="replace") if (work / "train.log").exists() else ""
    ckpts = sorted(work.glob("model_step_*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    if not ckpts:
        raise RuntimeError(f"no checkpoint in {work}")
    ckpt = ckpts[-1]
    step = int(re.findall(r"\d+", ckpt.stem)[-1])
    t_loop_end = st.get("t_loop_end") or ckpt.stat().st_mtime
    train_seconds = t_loop_end - t_launch
    t_first = st.get("t_first_batch")
    loop_seconds = (t_loop_end - t_first) if t_first else None
    m = re.search(r"number of parameters: (\d+)", log)
    params = int(m.group(1)) if m else None
    enc = re.search(r"encoder: (\d+)", log)
    dec = re.search(r"decoder: (\d+)", log)

    # 3. translation of test.src (or its first test_lines lines)
    src = pieces_dir / "test.src"
    if test_lines is not None:
        src = work / f"test.first{test_lines}.src"
        with open(pieces_dir / "test.src", encoding="utf-8") as f, open(src, "w", encoding="utf-8") as g:
            for i, line in enumerate(f):
                if i >= test_lines:
                    break
                g.write(line)
    n_test, _ = _count(src)
    hyp = work / "test.hyp.pieces"
    # fmt: off
    tr_cmd = [VENV / "bin" / "onmt_translate", "-model", ckpt, "-src", src, "-output", hyp,
              "-beam_size", beam, "-n_best", "1", "-batch_type", "sents", "-batch_size", "32",
              "-max_length", "250", "-seed", seed]
    # fmt: on
    print("+", _q(tr_cmd), flush=True)
    t = time.time()
    with open(work / "translate.log", "w") as tlog:
        subprocess.run(list(map(str, tr_cmd)), check=True, env=env, stdout=tlog, stderr=subprocess.STDOUT)
    translate_seconds = time.time() - t
    n_hyp, hyp_tok = _count(hyp)
    if n_hyp != n_test:
        raise RuntimeError(f"{hyp}: {n_hyp} lines for {n_test} inputs")

    updates = st.get("updates", step)
    tgt_tokens = st.get("tgt_tokens")
    epochs = tgt_tokens / (train_tgt_tok + n_train) if tgt_tokens else None  # tgt tokens incl. EOS
    return {
        "toolkit": TOOLKIT,
        "version": ver,
        "torch": st.get("torch_version"),
        "model": (
            f"brnn GRU encoder {layers}x{onmt_hidden // 2}/direction, GRU decoder {layers}x{onmt_hidden}, "
            f"MLP attention, input feed, emb {emb} shared, vocab {n_vocab}"
        ),
        "size_match": size_match,
        "onmt_hidden_size": onmt_hidden,
        "vocab_size": n_vocab,
        "build_vocab_command": _q(vocab_cmd),
        "train_command": _q(train_cmd),
        "train_config": cfg.read_text(),
        "translate_command": _q(tr_cmd),
        "threads": threads,
        "budget_seconds": budget,
        "budget_includes_startup": budget_includes_startup,
        "updates": updates,
        "checkpoint": str(ckpt),
        "checkpoint_step": step,
        "stopped_by_deadline": st.get("stopped_by_deadline"),
        "killed": killed,
        "vocab_seconds": vocab_seconds,
        "startup_seconds": (t_first - t_launch) if t_first else None,
        "train_seconds": train_seconds,
        "loop_seconds": loop_seconds,
        "process_seconds": t_end - t_launch,
        "train_tgt_tokens": tgt_tokens,
        "train_src_tokens": st.get("src_tokens"),
        "train_sents": st.get("sents"),
        "tgt_tokens_per_batch": (tgt_tokens / updates) if tgt_tokens and updates else None,
        "train_tgt_tokens_per_second": (tgt_tokens / train_seconds) if tgt_tokens else None,
        "train_tgt_tokens_per_second_loop": (tgt_tokens / loop_seconds) if tgt_tokens and loop_seconds else None,
        "epochs": epochs,
        "parameters": params,
        "parameters_encoder": int(enc.group(1)) if enc else None,
        "parameters_decoder": int(dec.group(1)) if dec else None,
        "test_lines": n_test,
        "translate_seconds": translate_seconds,
        "hyp_tokens": hyp_tok,
        "hyp": str(hyp),
        "logs": {k: str(work / k) for k in ("build_vocab.log", "train.log", "train.stdout", "translate.log")},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pieces_dir", type=Path, help="train.src train.tgt valid.src valid.tgt test.src, in pieces")
    ap.add_argument("--work", type=Path, default=None, help="default: PIECES_DIR/../peer_rnn_work")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--emb", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size-match", choices=("encoder", "decoder"), default="encoder")
    ap.add_argument("--test-lines", type=int, default=None, help="decode only the first N test lines")
    a = ap.parse_args(argv)
    work = a.work or a.pieces_dir.resolve().parent / "peer_rnn_work"
    res = run(
        a.pieces_dir,
        work,
        a.minutes,
        a.emb,
        a.hidden,
        a.layers,
        a.batch_tokens,
        a.beam,
        a.threads,
        size_match=a.size_match,
        test_lines=a.test_lines,
    )
    print(json.dumps(res, indent=1))
    with open(res["hyp"], encoding="utf-8") as f:
        for i, line in zip(range(5), f):
            print(f"hyp {i}: {line.rstrip()}")


if __name__ == "__main__":
    main()
