"""GPU throughput in bf16: aiayn against Hugging Face on one CUDA GPU, side by side.

Four parts, each written to the JSON as soon as it is done (a part that fails is recorded with its
error and the others still run):

1. peak: the bf16 matrix-product rate of this GPU, measured here (8192³ products of random data,
   CUDA events, median of 10 after 3 warm-ups). It is the MFU denominator; the datasheet's dense
   bf16 rate is printed beside it.
2. step: one training step (forward + label-smoothed loss + backward + fused Adam) and one
   teacher-forced inference forward, bf16 autocast, for `base` and `big` (the paper's Table 3
   dimensions) on random batches of `--batch-size` × `--seq-len` tokens per side with about
   `--pad-frac` padding: aiayn's `LossModel(Transformer)` (as `aiayn train` runs it) against
   `MarianMTModel` of the same dimensions (HF's default attention, sdpa). The two alternate in
   rounds; each round times `--steps` steps between CUDA events. Median step over the rounds.
   MFU = forward_flops (real tokens) × 3 (training) or × 1 (inference) / step time / peak, the
   same FLOP count for both libraries. aiayn also runs with the other choice of skipping padding
   (`--packing-ab`; aiayn skips it on the CPU only), which shows what skipping padding gains or
   costs on the device, and with each encoder and
   decoder layer compiled (`--compiled-ab`: `compile_stacks` of aiayn.train.trainer, what `aiayn train
   --compile true` does; training only, its first step's seconds are the compile time).
3. kernels: which attention kernels aiayn's base training step launches (torch.profiler): flash,
   memory-efficient (cutlass) or the math fallback, the matrix products' share of GPU time, and
   the top kernels, eager and with compiled layers.
4. e2e: `aiayn train` against HF `Seq2SeqTrainer` (bf16=True, group_by_length) on a prepared
   Bible dataset, the same target tokens per update (default 25,000: the paper's update), updates
   skip+1 … N timed from per-update timestamps (benchmarks/train_throughput.py, which it reuses).
   MFU from the dataset's mean source/target lengths. Each library also runs with PyTorch's cuDNN
   attention switched the other way (aiayn switches it off by default; see `cudnn_attention`),
   and aiayn with `--compile true` (variant aiayn+compile).

    python3 benchmarks/gpu_throughput.py --dataset DIR                      # all parts
    python3 benchmarks/gpu_throughput.py --parts peak,step --sizes base

Prints a table per part and writes benchmarks/results/gpu_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from model_throughput import ADAM, AiaynRunner, HFRunner, make_batch  # noqa: E402

DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def gpu_time(fn, n: int) -> float:
    """Seconds per call of fn over n calls, between CUDA events (on a CPU: the host clock)."""
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / n


def autocast_dtype(device: str):
    """bf16 autocast on a GPU; fp32 (no autocast) elsewhere."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def measure_peak(device: str, n: int) -> dict:
    dtype = autocast_dtype(device)  # the precision the products run in
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    times = [gpu_time(lambda: torch.mm(a, b, out=c), 1) for _ in range(10)]
    tflops = 2 * n**3 / statistics.median(times) / 1e12
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor()
    sheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    return {"n": n, "dtype": str(dtype), "tflops": tflops, "datasheet_tflops": sheet, "device_name": name}


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class OnDevice:
    """A model_throughput runner moved to the device, its steps under autocast. `skip_padding`
    sets aiayn's Transformer.skip_padding (None: its default, on the CPU only), for an A/B of
    skipping padding; `compiled` compiles its blocks (aiayn.train.trainer.compile_stacks)."""

    def __init__(self, runner, device: str, dtype, skip_padding: bool | None = None, compiled: bool = False):
        self.runner, self.device, self.dtype = runner, device, dtype
        runner.model.to(device)
        if skip_padding is not None:
            runner.model.skip_padding = skip_padding
        if compiled:
            from aiayn.train.trainer import compile_stacks

            compile_stacks(runner.model)
        params = [p for p in runner.model.parameters() if p.requires_grad]
        runner.optimizer = torch.optim.Adam(params, **{**ADAM, "fused": device == "cuda"})

    def autocast(self):
        return torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def train_step(self, b):
        with self.autocast():
            loss = self.runner.forward_loss(b)
        loss.backward()
        self.runner.optimizer_step()

    def infer_step(self, b):
        with self.autocast():
            return self.runner.infer_step(b)

    def step(self, mode: str, b):
        return self.train_step(b) if mode == "train" else self.infer_step(b)


def step_part(args, peak_tflops: float, record: dict) -> list:
    device, dtype = args.device, autocast_dtype(args.device)
    skips_padding = device != "cuda"  # aiayn's default; the packing A/B runs the other choice
    other = "aiayn_padded" if skips_padding else "aiayn_packed"
    rows = []
    for size in args.sizes.split(","):
        batch = to_device(make_batch(args.batch_size, args.seq_len, args.vocab, args.pad_frac, seed=1), device)
        tokens = batch["n_src"] + batch["n_tgt"]

        def aiayn(**options):
            return OnDevice(AiaynRunner(size, args.vocab, 0), device, dtype, **options)

        runners = {
            "aiayn": aiayn(),
            **({other: aiayn(skip_padding=not skips_padding)} if args.packing_ab else {}),
            **({"aiayn_compiled": aiayn(compiled=True)} if args.compiled_ab else {}),
            "hf": OnDevice(HFRunner(size, args.vocab, 0, 512, "ce", ""), device, dtype),
        }
        fwd = runners["aiayn"].runner.model.forward_flops(batch["n_src"], batch["n_tgt"], batch["src_len"], batch["tgt_len"])
        for mode in args.modes.split(","):
            active = {name: r for name, r in runners.items() if mode == "train" or name != "aiayn_compiled"}  # compiled: training only
            times = {name: [] for name in active}
            memory, first = {}, {}
            for name, r in active.items():
                r.runner.set_mode(mode == "train")
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()  # every runner's weights live on the device at once
                t0 = time.perf_counter()
                r.step(mode, batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                first[name] = time.perf_counter() - t0
                for _ in range(args.warmup):
                    r.step(mode, batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                    memory[name] = (torch.cuda.max_memory_allocated() - before) / 2**30  # its gradients, optimizer state, activations
            for _ in range(args.rounds):
                for name, r in active.items():
                    times[name].append(gpu_time(lambda: r.step(mode, batch), args.steps))
            flops = fwd * (3 if mode == "train" else 1)
            row = {"size": size, "mode": mode, "tokens_per_step": tokens, "flops_per_step": flops}
            for name in active:
                med = statistics.median(times[name])
                row[name] = {
                    "step_ms": med * 1e3,
                    "tokens_per_s": tokens / med,
                    "tflops": flops / med / 1e12,
                    "mfu": flops / med / 1e12 / peak_tflops,
                    "round_ms": [t * 1e3 for t in times[name]],
                    "first_step_s": first[name],
                    "step_memory_gib": memory.get(name),
                }
            row["ratio"] = row["aiayn"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
            if other in row:
                packed, padded = ("aiayn", other) if skips_padding else (other, "aiayn")
                row["packing_gain"] = row[packed]["tokens_per_s"] / row[padded]["tokens_per_s"]
            if "aiayn_compiled" in row:
                row["compile_gain"] = row["aiayn_compiled"]["tokens_per_s"] / row["aiayn"]["tokens_per_s"]
            rows.append(row)
            record["step"] = rows
            print(
                f"{size:5s} {mode:5s}  aiayn {row['aiayn']['tokens_per_s']:>10,.0f} tok/s  MFU {100 * row['aiayn']['mfu']:5.1f}%   "
                f"HF {row['hf']['tokens_per_s']:>10,.0f} tok/s  MFU {100 * row['hf']['mfu']:5.1f}%   ratio {row['ratio']:.2f}"
                + (f"   skipping padding: {row['packing_gain']:.3f}×" if "packing_gain" in row else "")
                + (
                    f"   compiled layers: {row['aiayn_compiled']['tokens_per_s']:,.0f} tok/s, MFU {100 * row['aiayn_compiled']['mfu']:.1f}%, "
                    f"{row['compile_gain']:.3f}× (first step {row['aiayn_compiled']['first_step_s']:.0f} s)"
                    if "compile_gain" in row
                    else ""
                ),
                flush=True,
            )
        del runners
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def kernel_part(args) -> dict:
    """Profile one base training step, eager and (with --compiled-ab) with compiled layers."""
    return {
        name: profile_step(args, compiled) for name, compiled in (("eager", False), ("compiled", True)) if args.compiled_ab or not compiled
    }


def profile_step(args, compiled: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    device, dtype = args.device, autocast_dtype(args.device)
    batch = to_device(make_batch(args.batch_size, args.seq_len, args.vocab, args.pad_frac, seed=1), device)
    r = OnDevice(AiaynRunner("base", args.vocab, 0), device, dtype, compiled=compiled)
    r.runner.set_mode(True)
    for _ in range(2):
        r.train_step(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        r.train_step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == ("CUDA" if device == "cuda" else "CPU")]
    if device == "cuda":  # user annotations (Optimizer.step#Adam.step, CompiledFunction, ## ... ##) span kernels counted on their own
        events = [e for e in events if "#" not in e.key and not e.key.startswith("CompiledFunction")]
    time_of = (lambda e: e.device_time_total) if device == "cuda" else (lambda e: e.self_cpu_time_total)
    total = sum(time_of(e) for e in events) or 1.0
    attention = {}
    for e in events:
        k = e.key.lower()
        kind = (
            "cudnn"
            if "cudnn" in k
            else "flash"
            if "flash" in k
            else "memory-efficient"
            if ("fmha" in k or "efficient" in k or "cutlass" in k and "attention" in k)
            else "math/softmax"
            if "softmax" in k
            else None
        )
        if kind:
            attention.setdefault(kind, []).append({"kernel": e.key[:120], "calls": e.count, "share": time_of(e) / total})
    matmul = sum(
        time_of(e)
        for e in events
        if any(w in e.key.lower() for w in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")) and "fmha" not in e.key.lower()
    )
    top = sorted(events, key=time_of, reverse=True)[:15]
    out = {
        "attention_kernels": attention,
        "matmul_share": matmul / total,
        "device_ms": total / 1e3,
        "top": [{"kernel": e.key[:120], "calls": e.count, "share": time_of(e) / total} for e in top],
        "kernel_launches": sum(e.count for e in events),
    }
    label = "compiled layers" if compiled else "eager"
    print(
        f"one base training step, {label}: {out['kernel_launches']} kernels, {out['device_ms']:.1f} ms on the device, "
        f"matrix products {100 * out['matmul_share']:.1f}%"
    )
    for kind, ks in attention.items():
        for k in ks:
            print(f"  {kind:17s} {k['calls']:4d} calls {100 * k['share']:5.1f}%  {k['kernel']}")
    print("top kernels:")
    for k in out["top"]:
        print(f"  {100 * k['share']:5.1f}%  {k['calls']:4d}×  {k['kernel']}")
    return out


def e2e_part(args, peak_tflops: float, record: dict) -> list:
    import train_throughput as tt

    from aiayn.data import ParallelDataset, load_meta
    from aiayn.models import Transformer, TransformerConfig

    ds = ParallelDataset(args.dataset)
    src_total, tgt_total = float((ds.src_lengths + 1).sum()), float((ds.tgt_lengths + 1).sum())
    src_len, tgt_len = src_total / len(ds.src_lengths), tgt_total / len(ds.tgt_lengths)
    max_tokens, aiayn_tgt = tt.aiayn_max_tokens(args.dataset, args.tgt_tokens_per_update)
    vocab = load_meta(args.dataset)["vocab"]["src"]["size"]
    rows = []
    for size in args.sizes.split(","):
        with torch.device("meta"):
            model = Transformer(TransformerConfig.preset(size, pre_norm=False, vocab_size=vocab))
        flops_per_token = 3 * model.forward_flops(src_total, tgt_total, src_len, tgt_len) / (src_total + tgt_total)
        row = {"size": size, "flops_per_token": flops_per_token}
        for variant in args.e2e_variants.split(","):
            cudnn = "+cudnn" in variant or variant == "hf"  # HF as a user runs it: PyTorch's default backends
            if variant.startswith("aiayn"):
                x = tt.run_aiayn(
                    args.dataset,
                    size,
                    args.updates,
                    args.skip,
                    max_tokens,
                    args.threads,
                    args.work,
                    "bf16",
                    device=args.device,
                    extra=("--cudnn-attention", str(cudnn).lower(), "--compile", str("+compile" in variant).lower()),
                    name=variant,
                )
                x["tgt_tokens_per_update"] = round(aiayn_tgt, 1)
            else:
                if args.device == "cuda":
                    torch.backends.cuda.enable_cudnn_sdp(cudnn)
                x = tt.run_hf(
                    args.dataset,
                    size,
                    args.updates,
                    args.skip,
                    args.tgt_tokens_per_update,
                    args.threads,
                    args.work,
                    device=args.device,
                    precision="bf16",
                    name=variant,
                )
                if args.device == "cuda":
                    torch.backends.cuda.enable_cudnn_sdp(True)
            x["cudnn_attention"] = cudnn
            x["mfu"] = x["tokens_per_s"] * flops_per_token / 1e12 / peak_tflops
            row[variant] = x
            print(
                f"{size:5s} e2e {variant:12s} {x['tokens_per_s']:>10,.0f} tok/s  MFU {100 * x['mfu']:5.1f}%  "
                f"src+tgt per update {x['window_tokens'] / x['window_updates']:,.0f}  median update {1e3 * statistics.median(x['update_seconds'][args.skip :]):.0f} ms",
                flush=True,
            )
        if "aiayn" in row and "hf" in row:
            row["ratio"] = row["aiayn"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
            print(f"{size:5s} e2e   aiayn / HF (each with its default attention backends): {row['ratio']:.2f}", flush=True)
        if "aiayn" in row and "aiayn+compile" in row:
            row["compile_gain"] = row["aiayn+compile"]["tokens_per_s"] / row["aiayn"]["tokens_per_s"]
            print(f"{size:5s} e2e   compiled layers / eager: {row['compile_gain']:.3f}", flush=True)
        rows.append(row)
        record["e2e"] = rows
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="peak,step,kernels,e2e", help="comma-separated: peak, step, kernels, e2e")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="base,big")
    p.add_argument("--modes", default="train,infer")
    p.add_argument(
        "--cudnn-attention",
        choices=["on", "off"],
        default="on",
        help="for the step and kernels parts: PyTorch's cuDNN attention backend (default on: PyTorch's default)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="sentences per random batch (default 256)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sentence per side (default 64: 16,384 per side)")
    p.add_argument("--pad-frac", type=float, default=0.1)
    p.add_argument(
        "--packing-ab",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step part: also time aiayn with the other choice of skipping padding (skipped on a GPU, not skipped on a CPU; default on)",
    )
    p.add_argument(
        "--compiled-ab",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step part: also time aiayn's training step with its layers compiled (default on)",
    )
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="steps timed per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peak-n", type=int, default=8192)
    p.add_argument("--dataset", type=Path, help="prepared dataset (aiayn prepare) for the e2e part")
    p.add_argument("--tgt-tokens-per-update", type=int, default=25000)
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--skip", type=int, default=5)
    p.add_argument(
        "--e2e-variants",
        default="aiayn,aiayn+compile,aiayn+cudnn,hf,hf-nocudnn",
        help="aiayn (its default: no cuDNN attention), aiayn+cudnn, aiayn+compile, hf (PyTorch's defaults), hf-nocudnn (cuDNN attention off)",
    )
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--work", type=Path, default=Path("/tmp/aiayn-gpu-throughput"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_throughput.json")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(args.cudnn_attention == "on")
    parts = args.parts.split(",")
    record = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": args.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        import transformers

        record["transformers"] = transformers.__version__
    except ImportError:
        pass

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(args.out)

    def part(name, fn):
        if name not in parts:
            return None
        print(f"\n== {name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            record[name] = fn()
        except Exception as e:  # one part failing must not lose the others
            traceback.print_exc()
            record[name] = {"error": f"{type(e).__name__}: {e}"}
        record.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        save()
        return record[name]

    if "peak" not in parts and args.device == "cuda":
        parts.insert(0, "peak")  # every MFU needs it, and it takes a second
    peak = part("peak", lambda: measure_peak(args.device, args.peak_n)) or {}
    peak_tflops = peak.get("tflops") or 1.0
    if "tflops" in peak:
        print(
            f"{peak['device_name']}: {peak['dtype']} {args.peak_n}³ matmul {peak['tflops']:.0f} TFLOP/s (datasheet {peak['datasheet_tflops']})",
            flush=True,
        )
    part("step", lambda: step_part(args, peak_tflops, record))
    part("kernels", lambda: kernel_part(args))
    if "e2e" in parts and not args.dataset:
        raise SystemExit("--dataset is needed for the e2e part")
    part("e2e", lambda: e2e_part(args, peak_tflops, record))

    print(
        f"\nbf16 on {peak.get('device_name')}, MFU against the measured {peak_tflops:.0f} TFLOP/s"
        if "tflops" in peak
        else "\nno peak measured (--parts without peak): the MFU columns are against 1 TFLOP/s"
    )
    print(f"{'size':5s} {'what':6s} {'aiayn tok/s':>12s} {'HF tok/s':>10s} {'ratio':>6s} {'aiayn MFU':>10s} {'HF MFU':>7s}")
    for r in (record.get("step") if isinstance(record.get("step"), list) else []) + (
        record.get("e2e") if isinstance(record.get("e2e"), list) else []
    ):
        if "hf" not in r or "aiayn" not in r:
            continue
        print(
            f"{r['size']:5s} {r.get('mode', 'e2e'):6s} {r['aiayn']['tokens_per_s']:>12,.0f} {r['hf']['tokens_per_s']:>10,.0f} {r['ratio']:>6.2f} "
            f"{100 * r['aiayn']['mfu']:>9.1f}% {100 * r['hf']['mfu']:>6.1f}%"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
