"""Model throughput on CPU: aiayn's Transformer against Hugging Face's MarianMTModel, side by side.

What is measured (fp32, same thread count, same shapes, same dropout, same random batches):

1. train: one training step = forward + label-smoothed loss (ε = 0.1) + backward + Adam step
   (betas 0.9/0.98, eps 1e-9) + zero_grad, in train mode (dropout on).
   - aiayn: `LossModel(Transformer(cfg), 0.1)` exactly as `aiayn train` runs it (output projection
     only at real target positions), loss = summed smoothed loss / number of target tokens.
   - HF: `MarianMTModel(MarianConfig(...))` with the same dimensions, random init, nothing
     downloaded; `model(input_ids, attention_mask, decoder_input_ids, use_cache=False)` and then the
     label-smoothed loss on the logits the way a HF user gets it: `--hf-loss ce` (default),
     `torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=-100)`, or `--hf-loss smoother`,
     transformers' `LabelSmoother` (what Seq2SeqTrainer uses with label_smoothing_factor). As in
     Seq2SeqTrainer with label smoothing, `labels` are not passed to the model (that would make it
     compute a second, unsmoothed loss).
2. infer: the full teacher-forced forward pass (encoder + decoder + logits over every target
   position) under `torch.inference_mode()`, eval mode.

Throughput is source + target (real, non-pad) tokens per second from the median step time.
The two libraries are measured interleaved (chunks of aiayn steps, then HF steps, alternately)
after a warm-up, so that machine noise hits both alike; each gets at least `--seconds` of timed
steps and at least `--min-steps` steps. On a machine shared with other work, a step during which
this process did not get its threads' CPU (process CPU time < `--min-cpu-share` × threads × wall
time) is not counted; measuring goes on until there are enough clean steps or `--max-seconds`
pass (then all steps count and the row is marked noisy).

MFU = (model FLOPs per step / median step time) / peak, where the model FLOPs are aiayn's
`Transformer.forward_flops` (matmul FLOPs of the forward pass over the real tokens; ×3 for a
training step) for BOTH libraries, and the peak is this machine's fp32 matmul rate measured in
the same run (best of several 2048² and 4096² fp32 torch matmuls at the same thread count,
measured before the benchmark and after each size; the highest is used). The table is printed
twice, from the median clean step (the headline) and from the best one, and the JSON records
each step's wall and CPU time.

Run (from the repository root):

    .venv/bin/python benchmarks/model_throughput.py                  # tiny, small, base; 2 threads
    .venv/bin/python benchmarks/model_throughput.py --quick          # smoke test (tiny, short)
    .venv/bin/python benchmarks/model_throughput.py --sizes base --seconds 30 --threads 2
    .venv/bin/python benchmarks/model_throughput.py --pad-frac 0.2 --out benchmarks/results/model_throughput_padded.json
    .venv/bin/python benchmarks/model_throughput.py --profile base   # where aiayn's (and HF's) training step spends its time

Results: a table on stdout and JSON in benchmarks/results/model_throughput.json (or --out);
`--profile SIZE` writes benchmarks/results/model_throughput_profile_SIZE.{txt,json} instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aiayn.models import Transformer, TransformerConfig  # noqa: E402
from aiayn.runtime import cpu_info, onednn_available  # noqa: E402
from aiayn.tasks.translation import LossModel  # noqa: E402

PAD, UNK, BOS, EOS = 0, 1, 2, 3
LABEL_SMOOTHING = 0.1
ADAM = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-9, fused=True)  # as aiayn's trainer (and HF's default adamw_torch_fused)


# --------------------------------------------------------------------------- batches
def make_batch(batch_size: int, seq_len: int, vocab: int, pad_frac: float, seed: int) -> dict:
    """Random sentence pairs of `seq_len` tokens per side (each ending in EOS). With pad_frac > 0 each
    sentence is shortened by a uniform 0 … 2·pad_frac·seq_len tokens and right-padded, so about
    pad_frac of the batch is padding."""
    g = torch.Generator().manual_seed(seed)

    def side():
        toks = torch.randint(4, vocab, (batch_size, seq_len), generator=g)
        cut = round(2 * pad_frac * seq_len)
        lengths = seq_len - torch.randint(0, cut + 1, (batch_size,), generator=g) if cut else torch.full((batch_size,), seq_len)
        lengths = lengths.clamp(min=2)
        pos = torch.arange(seq_len)[None, :]
        toks[pos == (lengths[:, None] - 1)] = EOS
        toks[pos >= lengths[:, None]] = PAD
        return toks, lengths

    src, src_len = side()
    tgt_out, tgt_len = side()
    tgt_in = torch.cat([torch.full((batch_size, 1), BOS), tgt_out[:, :-1]], dim=1)  # start symbol + target[:-1]
    tgt_in = tgt_in.masked_fill(tgt_out.eq(PAD), PAD)
    labels = tgt_out.masked_fill(tgt_out.eq(PAD), -100)
    return dict(
        src=src,
        tgt_in=tgt_in,
        tgt_out=tgt_out,
        attention_mask=src.ne(PAD).long(),
        labels=labels,
        n_src=int(src_len.sum()),
        n_tgt=int(tgt_len.sum()),
        src_len=float(src_len.float().mean()),
        tgt_len=float(tgt_len.float().mean()),
    )


# --------------------------------------------------------------------------- the two libraries
class _Runner:
    """What both libraries' runners share: a model, an optimizer and the step built from forward_loss."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def optimizer_step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self, b):
        self.forward_loss(b).backward()
        self.optimizer_step()


class AiaynRunner(_Runner):
    name = "aiayn"

    def __init__(self, size: str, vocab: int, seed: int):
        torch.manual_seed(seed)
        self.cfg = TransformerConfig.preset(size, pre_norm=False, vocab_size=vocab, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS)
        self.model = Transformer(self.cfg)
        self.loss_model = LossModel(self.model, LABEL_SMOOTHING)
        self.optimizer = torch.optim.Adam(self.model.parameters(), **ADAM)

    def set_mode(self, train: bool) -> None:
        self.loss_model.train(train)

    def forward_loss(self, b):
        loss, _ = self.loss_model(b["src"], b["tgt_in"], b["tgt_out"])
        return loss / b["n_tgt"]

    def infer_step(self, b):
        with torch.inference_mode():
            return self.model(b["src"], b["tgt_in"])


class HFRunner(_Runner):
    name = "hf"

    def __init__(self, size: str, vocab: int, seed: int, max_positions: int, hf_loss: str, attn: str):
        from hf_marian import marian_config  # benchmarks/hf_marian.py: the same dimensions as a MarianConfig
        from transformers import MarianMTModel

        cfg = TransformerConfig.preset(size, pre_norm=False, vocab_size=vocab, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS)
        self.config = marian_config(cfg, max_positions=max_positions)
        torch.manual_seed(seed)
        self.model = MarianMTModel(self.config, attn_implementation=attn) if attn else MarianMTModel(self.config)
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], **ADAM)
        if hf_loss == "ce":
            ce = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, ignore_index=-100)
            self.loss_fn = lambda logits, labels: ce(logits.view(-1, logits.size(-1)), labels.view(-1))
        elif hf_loss == "smoother":
            from transformers.trainer_pt_utils import LabelSmoother

            smoother = LabelSmoother(epsilon=LABEL_SMOOTHING)
            self.loss_fn = lambda logits, labels: smoother({"logits": logits}, labels)
        else:
            raise ValueError(f"unknown --hf-loss {hf_loss!r}")

    def set_mode(self, train: bool) -> None:
        self.model.train(train)

    def forward_loss(self, b):
        out = self.model(input_ids=b["src"], attention_mask=b["attention_mask"], decoder_input_ids=b["tgt_in"], use_cache=False)
        return self.loss_fn(out.logits, b["labels"])

    def infer_step(self, b):
        with torch.inference_mode():
            return self.model(input_ids=b["src"], attention_mask=b["attention_mask"], decoder_input_ids=b["tgt_in"], use_cache=False).logits


# --------------------------------------------------------------------------- timing
def measure_peak(threads: int, sizes=(2048, 4096), seconds: float = 2.0) -> dict:
    """fp32 matmul peak of this machine at `threads` threads: best GFLOP/s over repeated n×n @ n×n
    (a few more repetitions, up to 3× seconds, while other processes crowd this one out), through
    each matrix library PyTorch has: MKL (torch.mm) and, where built in, oneDNN (which aiayn uses
    for inference on non-Intel CPUs; see aiayn.model.linear) — the faster one is the peak."""
    torch.set_num_threads(threads)
    best, shares, by_lib = {}, {}, {}
    onednn = onednn_available()
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        libs = {"mkl": lambda: torch.mm(a, b, out=c)}
        if onednn:
            libs["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")  # a @ bᵀ
        for lib, product in libs.items():
            product()  # warm-up
            t_best, share_best, spent, reps = math.inf, 0.0, 0.0, 0
            while reps < 3 or spent < seconds or (share_best < 0.9 and spent < 3 * seconds):
                c0, t0 = time.process_time(), time.perf_counter()
                product()
                dt = time.perf_counter() - t0
                share_best = max(share_best, (time.process_time() - c0) / (threads * dt))
                t_best, spent, reps = min(t_best, dt), spent + dt, reps + 1
            by_lib.setdefault(lib, {})[n] = 2 * n**3 / t_best / 1e9
            if by_lib[lib][n] >= best.get(n, 0.0):
                best[n], shares[n] = by_lib[lib][n], share_best
    return {"gflops_by_n": best, "gflops": max(best.values()), "best_cpu_share_by_n": shares, "gflops_by_library": by_lib}


def interleaved(
    steps: dict,
    *,
    seconds: float,
    min_steps: int,
    warmup: int,
    chunk_seconds: float,
    threads: int,
    min_cpu_share: float,
    max_seconds: float,
) -> dict:
    """Run each callable in `steps` alternately in chunks (≥1 step, ≈chunk_seconds) until each has
    ≥ min_steps clean steps adding up to ≥ seconds, or `max_seconds` of wall time have passed.

    A step is clean when this process got the CPU for it: process CPU time ≥ min_cpu_share ×
    threads × wall time. On a machine shared with other work, crowded-out steps are several times
    slower; they are recorded but, if there are enough clean ones, left out of the statistics.
    Returns {name: [(wall_s, cpu_s), ...]}.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    record = {name: [] for name in names}

    def clean(name):
        return [t for t, c in record[name] if c >= min_cpu_share * threads * t]

    def done(name):
        good = clean(name)
        return len(good) >= min_steps and sum(good) >= seconds

    start = time.perf_counter()
    while not all(done(n) for n in names):
        if time.perf_counter() - start > max_seconds and all(len(record[n]) >= min_steps for n in names):
            break
        for name in names:
            if done(name):
                continue
            chunk = 0.0
            while True:
                c0, t0 = time.process_time(), time.perf_counter()
                steps[name]()
                dt = time.perf_counter() - t0
                record[name].append((dt, time.process_time() - c0))
                chunk += dt
                if chunk >= chunk_seconds or done(name):
                    break
    return record


def summarize(record: list, tokens: int, flops: float, peak_gflops: float, threads: int, min_cpu_share: float, min_steps: int) -> dict:
    """Median step (the headline) and best step, over the clean steps when there are at least
    min_steps of them, else over all steps (marked noisy). cpu_share: this process's CPU time /
    (threads × wall time) per step; well below 1 means it was crowded out by other processes."""
    shares = [c / (threads * t) for t, c in record]
    good = [t for (t, _), sh in zip(record, shares) if sh >= min_cpu_share]
    noisy = len(good) < min_steps
    times = [t for t, _ in record] if noisy else good
    med, best = statistics.median(times), min(times)
    return dict(
        steps=len(record),
        clean_steps=len(good),
        noisy=noisy,
        median_s=med,
        min_s=best,
        max_s=max(times),
        tokens_per_s=tokens / med,
        gflops=flops / med / 1e9,
        mfu=flops / med / (peak_gflops * 1e9),
        best_tokens_per_s=tokens / best,
        best_mfu=flops / best / (peak_gflops * 1e9),
        cpu_share_median=statistics.median(shares),
        step_times_s=[round(t, 5) for t, _ in record],
        step_cpu_s=[round(c, 5) for _, c in record],
    )


# --------------------------------------------------------------------------- profile
CATEGORIES = [
    ("matmul (mm/addmm/bmm)", r"^aten::(mm|addmm|bmm|baddbmm|addbmm|matmul|linear|_mkl.*|mkldnn.*matmul.*)$"),
    ("fused attention (sdpa kernels)", r"scaled_dot_product|flash_attention|efficient_attention"),
    ("softmax / log_softmax", r"softmax"),
    ("layer_norm", r"layer_norm"),
    ("dropout (bernoulli/mask)", r"dropout|bernoulli"),
    ("embedding / gather / index", r"embedding|index|gather|scatter|masked_select|nonzero|take"),
    (
        "copies / layout (copy_, clone, cat, contiguous)",
        r"^aten::(copy_|clone|contiguous|cat|_to_copy|to|stack|empty_like|zeros_like|fill_|zero_|t|transpose|view|reshape|_reshape_alias|as_strided|expand|permute|unsqueeze|squeeze|split|chunk|narrow|slice|select|detach|_unsafe_view|alias|resize_|empty|empty_strided|zeros|ones|full|new_zeros|new_empty|unbind|split_with_sizes)$",
    ),
    (
        "optimizer math (Adam: mul_/add_/addcmul_/addcdiv_/sqrt/lerp_)",
        r"^aten::(addcmul_|addcdiv_|sqrt|lerp_|_foreach.*|mul_|add_|div_|sqrt_)$",
    ),
    (
        "elementwise / reductions (add, mul, relu, sum, mean, ...)",
        r"^aten::(add|mul|div|sub|relu|threshold_backward|threshold|sum|mean|neg|rsub|where|masked_fill|masked_fill_|ne|eq|gt|lt|ge|le|exp|log|pow|clamp|clamp_min|gelu|silu|abs|sign|max|min|nll_loss.*|cross_entropy.*|ones_like|arange|rsqrt|tanh|fused_dropout|_masked_scale|sum_.*|tril|triu|logical_.*|bitwise_.*|__and__|__or__|any|all|isfinite|item|_local_scalar_dense|lt_|gt_)$",
    ),
]


def categorize(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name):
            return cat
    return "other"


def profile(args) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    size = args.profile
    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch_size, args.seq_len, args.vocab, args.pad_frac, args.seed)
    tokens = batch["n_src"] + batch["n_tgt"]
    report, lines = {"size": size, "threads": args.threads, "shapes": shapes(args, batch), "libraries": {}}, []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    if args.peak is None:
        args.peak = max(measure_peak(args.threads)["gflops"], measure_peak(args.threads)["gflops"])
    report["peak_gflops"] = args.peak
    log(
        f"# profile of one training step, size={size}, vocab={args.vocab}, threads={args.threads}, "
        f"batch {args.batch_size}×{args.seq_len} per side, torch {torch.__version__}"
    )
    runners = (
        lambda: AiaynRunner(size, args.vocab, args.seed),
        lambda: HFRunner(size, args.vocab, args.seed, args.max_positions, args.hf_loss, args.hf_attn),
    )
    train_flops = None
    for make in runners:
        runner = make()
        if train_flops is None:  # aiayn's count, for both libraries
            train_flops = 3 * runner.model.forward_flops(batch["n_src"], batch["n_tgt"], batch["src_len"], batch["tgt_len"])
        runner.set_mode(True)
        runner.train_step(batch)  # warm-up
        runner.train_step(batch)
        steps, start = [], time.perf_counter()  # piece timing: clean steps only (as in the benchmark), if we get them
        while sum(sh >= args.min_cpu_share for *_, sh in steps) < args.profile_steps and (
            len(steps) < args.profile_steps or time.perf_counter() - start < args.max_seconds
        ):
            c0, t0 = time.process_time(), time.perf_counter()
            loss = runner.forward_loss(batch)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            runner.optimizer_step()
            t3 = time.perf_counter()
            steps.append((t1 - t0, t2 - t1, t3 - t2, (time.process_time() - c0) / (args.threads * (t3 - t0))))
        good = [st for st in steps if st[3] >= args.min_cpu_share]
        use = good if len(good) >= args.profile_steps else steps
        names = ("forward+loss", "backward", "optimizer.step+zero_grad")
        med = {k: statistics.median(st[i] for st in use) for i, k in enumerate(names)}
        total = sum(med.values())
        log(
            f"\n## {runner.name}: piece timing (median of {len(use)} {'clean' if use is good else 'NOISY'} steps of {len(steps)}), "
            f"step ≈ {total:.3f} s, {tokens / total:.0f} tokens/s, MFU {100 * train_flops / total / 1e9 / args.peak:.1f}% "
            f"of {args.peak:.0f} GFLOP/s"
        )
        for k, v in med.items():
            log(f"  {k:28s} {v:8.3f} s  {100 * v / total:5.1f}%")

        best = None  # the profiled step: the first clean one of up to 3, else the least crowded
        for _ in range(3):
            c0, t0 = time.process_time(), time.perf_counter()
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                runner.train_step(batch)
            share = (time.process_time() - c0) / (args.threads * (time.perf_counter() - t0))
            if best is None or share > best[1]:
                best = (prof, share)
            if share >= args.min_cpu_share:
                break
        prof, share = best
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        self_total = sum(e.self_cpu_time_total for e in events)
        cats: dict[str, float] = {}
        for e in events:
            cats[categorize(e.key)] = cats.get(categorize(e.key), 0.0) + e.self_cpu_time_total
        log(
            f"\n## {runner.name}: torch.profiler, one step, self CPU time {self_total / 1e6:.3f} s "
            f"(profiler overhead included; cpu share of that step {share:.2f})"
        )
        log("  by category:")
        for cat, t in sorted(cats.items(), key=lambda kv: -kv[1]):
            log(f"    {100 * t / self_total:5.1f}%  {t / 1e6:7.3f} s  {cat}")
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.profile_top]
        log(f"  top {len(top)} ops by self CPU time:")
        log(f"    {'share':>6s} {'self s':>8s} {'calls':>6s}  op")
        for e in top:
            log(f"    {100 * e.self_cpu_time_total / self_total:5.1f}% {e.self_cpu_time_total / 1e6:8.3f} {e.count:6d}  {e.key}")
        by_shape = sorted(
            (e for e in prof.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total
        )[: args.profile_top]
        log(f"  top {len(by_shape)} (op, input shapes) by self CPU time:")
        for e in by_shape:
            log(
                f"    {100 * e.self_cpu_time_total / self_total:5.1f}% {e.self_cpu_time_total / 1e6:8.3f} {e.count:6d}  {e.key} {str(e.input_shapes)[:110]}"
            )
        report["libraries"][runner.name] = dict(
            pieces_median_s=med,
            step_s=total,
            tokens_per_s=tokens / total,
            mfu=train_flops / total / 1e9 / args.peak,
            profile_self_cpu_s=self_total / 1e6,
            profiled_step_cpu_share=share,
            piece_steps=[dict(zip((*names, "cpu_share"), st)) for st in steps],
            categories={k: v / self_total for k, v in cats.items()},
            top_ops=[
                dict(op=e.key, self_s=e.self_cpu_time_total / 1e6, share=e.self_cpu_time_total / self_total, calls=e.count) for e in top
            ],
        )
        del runner
    out = Path(args.out).parent / f"model_throughput_profile_{size}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.with_suffix('.txt')} and {out.with_suffix('.json')}")


# --------------------------------------------------------------------------- main
def shapes(args, batch) -> dict:
    return dict(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        vocab=args.vocab,
        pad_frac=args.pad_frac,
        src_tokens=batch["n_src"],
        tgt_tokens=batch["n_tgt"],
        mean_src_len=batch["src_len"],
        mean_tgt_len=batch["tgt_len"],
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small,base", help="comma-separated presets (tiny, small, base, big)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per library per measurement (default 10; 1 with --quick)")
    ap.add_argument("--min-steps", type=int, default=None, help="at least this many timed steps (default 3; 2 with --quick)")
    ap.add_argument(
        "--min-cpu-share",
        type=float,
        default=0.9,
        help="a step counts as clean when the process got ≥ this share of its threads' CPU time (default 0.9; 0 keeps all)",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="give up waiting for clean steps after this many seconds per measurement (default 150; 20 with --quick)",
    )
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per library per measurement (default 2; 1 with --quick)")
    ap.add_argument("--batch-size", type=int, default=128, help="sentences per batch (default 128)")
    ap.add_argument("--seq-len", type=int, default=32, help="tokens per sentence per side (default 32: 4096 tokens per side)")
    ap.add_argument("--vocab", type=int, default=8000, help="joint vocabulary size (default 8000)")
    ap.add_argument("--pad-frac", type=float, default=0.0, help="≈ fraction of padding per side (default 0: no padding)")
    ap.add_argument("--modes", default="train,infer", help="train, infer or both (default)")
    ap.add_argument(
        "--hf-loss",
        choices=["ce", "smoother"],
        default="ce",
        help="HF label smoothing: torch CrossEntropyLoss(label_smoothing) (ce) or transformers' LabelSmoother",
    )
    ap.add_argument("--hf-attn", default="", help="HF attn_implementation (default: HF's default, sdpa)")
    ap.add_argument("--max-positions", type=int, default=512, help="MarianConfig.max_position_embeddings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny only, short timings")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model_throughput.json"))
    ap.add_argument(
        "--profile",
        metavar="SIZE",
        default=None,
        help="instead of the benchmark: time the pieces of a training step and torch.profile one step, both libraries",
    )
    ap.add_argument("--peak", type=float, default=None, help="with --profile: fp32 peak GFLOP/s to relate the step time to (else measured)")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps for the piece timing in --profile")
    ap.add_argument("--profile-top", type=int, default=25, help="ops listed in --profile")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = "tiny" if args.sizes == "tiny,small,base" else args.sizes
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 10.0)
    args.min_steps = args.min_steps if args.min_steps is not None else (2 if args.quick else 3)
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (20.0 if args.quick else 150.0)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.max_positions < args.seq_len + 1:
        args.max_positions = args.seq_len + 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.profile:
        return profile(args)
    torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    import transformers

    t_start = time.time()
    load_start = os.getloadavg()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, load average {load_start[0]:.2f}",
        flush=True,
    )
    peaks = [measure_peak(args.threads, seconds=1.0 if args.quick else 2.0)]
    print(
        f"fp32 matmul peak (before): {peaks[0]['gflops']:.1f} GFLOP/s "
        f"({'; '.join(lib + ' ' + ', '.join(f'{n}²: {g:.1f}' for n, g in by_n.items()) for lib, by_n in peaks[0]['gflops_by_library'].items())})",
        flush=True,
    )

    batch = make_batch(args.batch_size, args.seq_len, args.vocab, args.pad_frac, args.seed)
    tokens = batch["n_src"] + batch["n_tgt"]
    print(
        f"batch: {args.batch_size} × {args.seq_len} per side, {batch['n_src']} src + {batch['n_tgt']} tgt real tokens, "
        f"vocab {args.vocab}, pad_frac {args.pad_frac}",
        flush=True,
    )

    raw = []  # (size, mode, name, times, flops, extra)
    for size in sizes:
        t0 = time.time()
        aiayn = AiaynRunner(size, args.vocab, args.seed)
        hf = HFRunner(size, args.vocab, args.seed, args.max_positions, args.hf_loss, args.hf_attn)
        fwd_flops = aiayn.model.forward_flops(batch["n_src"], batch["n_tgt"], batch["src_len"], batch["tgt_len"])
        params = {"aiayn": aiayn.trainable_parameters(), "hf": hf.trainable_parameters()}
        print(
            f"\n[{size}] trainable parameters: aiayn {params['aiayn']:,}, HF {params['hf']:,}; "
            f"HF attention: {hf.attn_implementation}; forward FLOPs/step {fwd_flops / 1e9:.1f} G",
            flush=True,
        )
        for mode in modes:
            train = mode == "train"
            aiayn.set_mode(train)
            hf.set_mode(train)
            fn = "train_step" if train else "infer_step"
            steps = {"aiayn": (lambda r=aiayn, f=fn: getattr(r, f)(batch)), "hf": (lambda r=hf, f=fn: getattr(r, f)(batch))}
            record = interleaved(
                steps,
                seconds=args.seconds,
                min_steps=args.min_steps,
                warmup=args.warmup,
                chunk_seconds=max(args.seconds / 4, 0.25),
                threads=args.threads,
                min_cpu_share=args.min_cpu_share,
                max_seconds=args.max_seconds,
            )
            flops = fwd_flops * (3 if train else 1)
            for name in steps:
                raw.append((size, mode, name, record[name], flops, dict(params=params[name], attn=hf.attn_implementation)))
                r = summarize(record[name], tokens, 1.0, 1.0, args.threads, args.min_cpu_share, args.min_steps)
                print(
                    f"  {mode:5s} {name:5s}: median {r['median_s']:.4f} s (best {r['min_s']:.4f} s) over {r['clean_steps']} clean of "
                    f"{r['steps']} steps -> {r['tokens_per_s']:,.0f} tokens/s{'  NOISY (too few clean steps)' if r['noisy'] else ''}",
                    flush=True,
                )
        print(f"  ({time.time() - t0:.0f} s for {size})", flush=True)
        del aiayn, hf
        peaks.append(measure_peak(args.threads, seconds=1.0 if args.quick else 2.0))
        print(f"fp32 matmul peak (after {size}): {peaks[-1]['gflops']:.1f} GFLOP/s", flush=True)

    peak = max(p["gflops"] for p in peaks)
    measured = ", ".join(f"{p['gflops']:.0f}" for p in peaks)
    print(f"\nMFU uses the best fp32 matmul peak measured: {peak:.1f} GFLOP/s (measurements: {measured})", flush=True)

    results = {}
    for size, mode, name, record, flops, extra in raw:
        entry = results.setdefault(size, {}).setdefault(mode, {"model_flops_per_step": flops})
        entry[name] = summarize(record, tokens, flops, peak, args.threads, args.min_cpu_share, args.min_steps)
        entry[name]["trainable_parameters"] = extra["params"]
        if name == "hf":
            entry[name]["attn_implementation"] = extra["attn"]
    header = f"{'size':6s} {'mode':6s} {'aiayn tok/s':>12s} {'HF tok/s':>10s} {'aiayn/HF':>9s} {'aiayn MFU':>10s} {'HF MFU':>8s}"
    tables = {}
    for stat, prefix, title in (
        ("median", "", "median step (headline)"),
        ("best", "best_", "best step (least disturbed by other processes)"),
    ):
        rows = [f"# {title}", header, "-" * len(header)]
        for size in sizes:
            for mode in modes:
                e = results[size][mode]
                a, h = e["aiayn"], e["hf"]
                ratio = a[prefix + "tokens_per_s"] / h[prefix + "tokens_per_s"]
                e[f"ratio_aiayn_over_hf{'' if stat == 'median' else '_best'}"] = ratio
                rows.append(
                    f"{size:6s} {mode:6s} {a[prefix + 'tokens_per_s']:12,.0f} {h[prefix + 'tokens_per_s']:10,.0f} {ratio:9.3f} "
                    f"{100 * a[prefix + 'mfu']:9.1f}% {100 * h[prefix + 'mfu']:7.1f}%"
                    + ("  (noisy: " + ", ".join(n for n in ("aiayn", "hf") if e[n]["noisy"]) + ")" if a["noisy"] or h["noisy"] else "")
                )
        tables[stat] = rows
        print("\n" + "\n".join(rows))
    load_end = os.getloadavg()
    print(
        f"\n{tokens} source+target tokens per step; peak {peak:.1f} GFLOP/s; threads {args.threads}; "
        f"load average {load_start[0]:.2f} -> {load_end[0]:.2f}; {time.time() - t_start:.0f} s in all"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        cpu=cpu_info("model name") or platform.processor(),
        threads=args.threads,
        fp32=True,
        peak=dict(measurements=peaks, used_gflops=peak),
        shapes=shapes(args, batch),
        tokens_per_step=tokens,
        settings=dict(
            seconds=args.seconds,
            min_steps=args.min_steps,
            min_cpu_share=args.min_cpu_share,
            max_seconds=args.max_seconds,
            warmup=args.warmup,
            hf_loss=args.hf_loss,
            hf_attn=args.hf_attn or "default",
            label_smoothing=LABEL_SMOOTHING,
            adam=ADAM,
            flops="aiayn Transformer.forward_flops over real tokens; x3 for train; same for both libraries",
        ),
        load_average=dict(start=load_start, end=load_end),
        wall_s=time.time() - t_start,
        tables=tables,
        results=results,
    )
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
