"""Beam search's KV cache on the CPU: kept per sentence (never moved; a reorder moves an index of
ancestors) against time-major (the rows moved at every reorder), in one run.

The model, vocabulary and verses of translate_throughput.py (base dimensions, random weights,
8,000-piece vocabulary, 256 test verses in batches of 32), beam 4 with the output forced to L
tokens. The two layouts take turns batch by batch (so that a slow spell of a noisy machine falls
on both); each batch's best of --rounds counts. Reported: target tokens/s of each layout and
their ratio, per precision and length, and how many outputs are identical.

    .venv/bin/python benchmarks/beam_cache.py              # ~8 minutes on a 2-core CPU

Writes benchmarks/results/beam_cache.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="30,60", help="forced output lengths L, comma-separated")
    p.add_argument("--precisions", default="int8,fp32")
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=HERE / "results" / "beam_cache.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from common import write_record
    from translate_throughput import batches_of, build, padded

    from aiayn.generate import beam_search, special_tokens
    from aiayn.nn.int8 import for_precision
    from aiayn.runtime import beam_cache_as

    model, *_, sources, _ = build("base", 8000, Path(tempfile.mkdtemp(prefix="aiayn-beam-cache-")))
    cfg, special = model.config, special_tokens(model)
    tensors = [padded(b, cfg.pad_id, cfg.eos_id)[0] for b in batches_of(sources, args.sentences, args.batch_size)]
    n_sent = sum(t.size(0) for t in tensors)
    layouts = ("per-sentence", "time-major")
    rows = []
    for precision in args.precisions.split(","):
        m, _ = for_precision(model, precision, torch.device("cpu"))
        for L in (int(x) for x in args.lengths.split(",")):

            def search(src, layout):
                with beam_cache_as(layout):
                    cap = torch.full((src.size(0),), L)
                    return [h[0].tokens for h in beam_search(m, src, special=special, max_len=cap, beam=4, min_len=L - 1)]

            outputs = {layout: [search(src, layout) for src in tensors] for layout in layouts}  # warm-up, and the outputs
            same = sum(a == b for x, y in zip(*outputs.values()) for a, b in zip(x, y))
            best = {layout: [float("inf")] * len(tensors) for layout in layouts}
            for r in range(args.rounds):
                for i, src in enumerate(tensors):
                    for layout in layouts if (r + i) % 2 == 0 else layouts[::-1]:
                        started = time.perf_counter()
                        search(src, layout)
                        best[layout][i] = min(best[layout][i], time.perf_counter() - started)
            speed = {layout: n_sent * L / sum(best[layout]) for layout in layouts}
            rows.append(
                {
                    "precision": precision,
                    "length": L,
                    "per_sentence_tokens_per_s": speed["per-sentence"],
                    "time_major_tokens_per_s": speed["time-major"],
                    "ratio": speed["per-sentence"] / speed["time-major"],
                    "identical_outputs": same,
                    "sentences": n_sent,
                }
            )
            print(
                f"{precision:<5} L={L:<3} per sentence {speed['per-sentence']:7.1f} tok/s  time-major {speed['time-major']:7.1f}  "
                f"ratio {rows[-1]['ratio']:.3f}  identical outputs {same}/{n_sent}",
                flush=True,
            )
    write_record(args.output, args, rows, args.threads)


if __name__ == "__main__":
    main()
