"""GPT generation speed: aiayn's `Generator` against Hugging Face `GPT2LMHeadModel.generate` with its
KV cache, on the same weights, side by side in one run.

One random-weight GPT per shape is built in aiayn and exported to transformers (aiayn's HF
export; the benchmark checks that both give the same logits). Random weights would stop at random
places, so both are held to the same length: EOS is suppressed until max_new_tokens (aiayn
min_new_tokens, HF min_new_tokens). Prompts are real verses of the shipped English Bible text,
tokenized by a BPE learned on it, cut to --prompt-tokens tokens (so a batch needs no padding and
both libraries do the same work). Greedy decoding; reported: new tokens/s at batch 1 and 16 (--new-tokens, or what the context leaves).

    .venv/bin/python benchmarks/gpt_generate.py                    # gpt-tiny and the GPT-2 124M shape
    .venv/bin/python benchmarks/gpt_generate.py --presets gpt2 --new-tokens 64

Prints a table and writes benchmarks/results/gpt_generate.json.
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
sys.path.insert(0, str(HERE.parent / "src"))

from aiayn import models  # noqa: E402
from aiayn.generate.complete import GenerationOptions, Generator  # noqa: E402
from aiayn.interop.hf_gpt2 import to_gpt2_model  # noqa: E402
from aiayn.runtime import machine  # noqa: E402


def prompts(tok, n: int, length: int) -> list[list[int]]:
    from aiayn.data.shipped import write_shipped_corpus

    with tempfile.TemporaryDirectory() as tmp:
        files = write_shipped_corpus(tmp, limit={"test": 4000})
        lines = Path(files["test"][0]).read_text(encoding="utf-8").splitlines()
    out = []
    for i in range(0, len(lines) - 4, 4):
        ids = tok.encode([" ".join(lines[i : i + 4])])[0]
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == n:
            return out
    raise SystemExit("not enough text for the prompts")


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(preset: str, tok, args) -> list[dict]:
    torch.manual_seed(0)
    _, cfg = models.preset_config(
        preset, vocab_size=tok.vocab_size, eos_id=tok.eos_id, bos_id=-1, pad_id=tok.pad_id, dropout=0.0, attn_dropout=0.0
    )
    ours = models.build("gpt", cfg).eval()
    hf = to_gpt2_model(ours).eval()
    gen = Generator(ours, tok)
    new_tokens = min(args.new_tokens, cfg.context - args.prompt_tokens)  # what fits in the context
    rows = []
    for batch in args.batch_sizes:
        ids = torch.tensor(prompts(tok, batch, args.prompt_tokens))
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
        options = GenerationOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0)
        state = {}

        def aiayn_run():
            # the Generator's own path, from token ids (the prompts decode and re-encode to themselves for this BPE)
            state["ours"] = [c.tokens for c in gen.generate([tok.decode(p) for p in ids.tolist()], options)]

        def hf_run():
            with torch.no_grad():
                out = hf.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.eos_id,
                )
            state["hf"] = out[:, ids.size(1) :].tolist()

        t_ours, t_hf = timed(aiayn_run, args.repeats), timed(hf_run, args.repeats)
        same = sum(a == b for a, b in zip(state["ours"], state["hf"]))
        new = batch * new_tokens
        rows.append(
            {
                "preset": preset,
                "parameters_M": round(ours.num_parameters() / 1e6, 1),
                "batch": batch,
                "new_tokens": new_tokens,
                "prompt_tokens": args.prompt_tokens,
                "aiayn_tokens_per_s": round(new / t_ours, 1),
                "hf_tokens_per_s": round(new / t_hf, 1),
                "ratio": round(t_hf / t_ours, 3),
                "identical_outputs": f"{same}/{batch}",
            }
        )
        print(
            f"{preset:>9} batch {batch:>3}: aiayn {new / t_ours:8.1f} tok/s   HF generate {new / t_hf:8.1f} tok/s   "
            f"ratio {t_hf / t_ours:.2f}×   identical {same}/{batch}",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["gpt-tiny", "gpt2"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--out", default=str(HERE / "results" / "gpt_generate.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from aiayn.data.shipped import write_shipped_corpus
    from aiayn.data.text import TextOptions, load_lm_tokenizer, prepare_text

    with tempfile.TemporaryDirectory() as tmp:
        files = write_shipped_corpus(Path(tmp) / "text")
        prepare_text(
            {"train": [files["train"][0]]}, Path(tmp) / "data", TextOptions(vocab_size=args.vocab_size, progress=False), log=lambda *a: None
        )
        tok = load_lm_tokenizer(Path(tmp) / "data")
    rows = [row for preset in args.presets for row in run(preset, tok, args)]
    result = {
        "benchmark": "gpt_generate",
        "machine": {**machine(args.threads), "transformers": transformers.__version__},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
