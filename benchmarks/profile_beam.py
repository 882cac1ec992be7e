"""Where aiayn's beam search spends its time on CPU, and how close it runs to the matmul peak.

One batch of random source sentences (base dims by default, random weights, 8,000-word vocabulary),
beam 4, output forced to --length tokens as in translate_throughput.py. It times the search
(best of --repeats), profiles one more pass with torch.profiler, and sets the time against the
model's FLOPs (`Transformer.forward_flops`, which counts the decoder's hypotheses as teacher-forced
target tokens) and against this machine's fp32 matmul peak, measured as model_throughput.py
measures it.

    .venv/bin/python benchmarks/profile_beam.py              # ~1 minute on a 2-core CPU

Prints the profile's top operators and a summary, and writes benchmarks/results/profile_beam.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--sentences", type=int, default=32)
    p.add_argument("--source-length", type=int, default=36, help="source subwords per sentence, EOS included")
    p.add_argument("--length", type=int, default=30, help="forced output length (EOS included)")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--output", type=Path, default=HERE / "results" / "profile_beam.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from model_throughput import measure_peak
    from torch.profiler import profile

    from aiayn.generate import beam_search, special_tokens
    from aiayn.models import Transformer, TransformerConfig
    from aiayn.runtime import cpu_info, onednn_inference

    torch.manual_seed(0)
    cfg = TransformerConfig.preset(args.size, pre_norm=False, vocab_size=args.vocab_size, dropout=0.0)
    model = Transformer(cfg).eval()
    B, S, L, K = args.sentences, args.source_length, args.length, args.beam
    src = torch.randint(4, args.vocab_size, (B, S), generator=torch.Generator().manual_seed(1))
    src[:, -1] = cfg.eos_id

    def search():
        return beam_search(model, src, special=special_tokens(model), max_len=torch.full((B,), L), beam=K, min_len=L - 1)

    search()  # warm-up (packs the weights)
    seconds = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        search()
        seconds = min(seconds, time.perf_counter() - started)
    with profile() as prof:
        search()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in ops)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    flops = model.forward_flops(B * S, B * K * L, S, L)  # all of it: projections and attention
    projection_flops = model.forward_flops(B * S, B * K * L, 0, 0)  # without the attention terms
    linear_us = sum(e.self_cpu_time_total for e in ops if "linear" in e.key or e.key in ("aten::addmm", "aten::mm"))
    linear_share = linear_us / total_us
    peak = measure_peak(args.threads, seconds=1.0)["gflops"]
    summary = {
        "tokens_per_s": B * L / seconds,
        "seconds": seconds,
        "gflops": flops / seconds / 1e9,
        "peak_gflops": peak,
        "share_of_peak": flops / seconds / 1e9 / peak,
        "linear_share_of_time": linear_share,
        "linear_gflops": projection_flops / (linear_share * seconds) / 1e9,
    }
    print(
        f"\n{args.size}, beam {K}, {B} sentences of {S} source subwords, {L} output tokens, {args.threads} threads, "
        f"products through {'oneDNN' if onednn_inference() else 'MKL'}"
    )
    print(
        f"{summary['tokens_per_s']:.0f} target tok/s; model FLOPs {summary['gflops']:.1f} GFLOP/s = "
        f"{100 * summary['share_of_peak']:.0f}% of the {peak:.1f} GFLOP/s peak; linear products "
        f"{100 * linear_share:.0f}% of the time, at {summary['linear_gflops']:.1f} GFLOP/s"
    )
    record = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_info("model name"),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        **summary,
        "top_ops": [{"op": e.key, "share": e.self_cpu_time_total / total_us, "calls": e.count} for e in ops[:12]],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
