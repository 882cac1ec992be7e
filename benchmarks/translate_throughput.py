"""Translation throughput on CPU: aiayn's search against Hugging Face `generate` and CTranslate2,
on the same weights, side by side in one run.

One random-weight model (default: the paper's base dimensions, a joint 8,000-piece vocabulary
learned on the shipped Bible corpus) is built in aiayn and exported to a transformers
`MarianMTModel` (aiayn's HF export, which checks that both compute the same function) and to
CTranslate2 (float32 and int8), which runs in a process of its own (ct2_worker.py: sharing this
one's OpenMP runtime, it would slow PyTorch down). Random weights would stop at random lengths, so every system is
forced to the same output length: EOS is suppressed for the first L−1 tokens and forced at L
(aiayn min_len/max_len, HF min_new_tokens/max_new_tokens, CTranslate2 min/max_decoding_length).
Sources are real test verses (sorted by length, batches of --batch-size sentences for all
systems). Reported: target tokens/s (EOS included) and sentences/s, greedy and beam 4, each the
best of --repeats passes, the systems taking turns pass by pass (so that a slow spell of a noisy
machine falls on all of them).

    .venv/bin/python benchmarks/translate_throughput.py                    # base, 256 sentences
    .venv/bin/python benchmarks/translate_throughput.py --size small --sentences 128 --skip-ct2
    python3 benchmarks/translate_throughput.py --device cuda --sentences 512 --batch-size 64   # on a GPU, bf16 too

On CUDA, aiayn and HF each run twice: with PyTorch's cuDNN attention kernel switched off (as
aiayn's Translator does; see aiayn.model.attention.avoid_cudnn_attention) and on (PyTorch's
default, what a HF user gets). CTranslate2 runs on the CPU only here.

Prints a table and writes benchmarks/results/translate_throughput.json.
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


def build(size: str, vocab_size: int, work: Path):
    from aiayn.data.binarize import PrepareOptions, load_tokenizers, prepare
    from aiayn.data.shipped import write_shipped_corpus
    from aiayn.io.checkpoint import save_model
    from aiayn.models import Transformer, TransformerConfig
    from aiayn.tasks.translation import tokenizer_assets

    corpus = write_shipped_corpus(work / "corpus", limit={"train": 20000, "test": 1000})
    data = work / "data"
    prepare(
        {"train": corpus["train"], "test": corpus["test"]},
        data,
        PrepareOptions(vocab_size=vocab_size, progress=False),
        force=True,
        log=lambda *a: None,
    )
    tokenizers = load_tokenizers(data)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset(size, pre_norm=False, vocab_size=tokenizers[0].vocab_size, dropout=0.0)).eval()
    ckpt = work / "model.safetensors"
    save_model(ckpt, model, tokenizer_assets(*tokenizers))
    sources = [tokenizers[0].encode([line])[0] for line in corpus["test"][0].read_text(encoding="utf-8").splitlines()]
    return model, tokenizers, ckpt, sources, data


def batches_of(sources: list[list[int]], n: int, batch_size: int) -> list[list[list[int]]]:
    chosen = sorted(sources[:n], key=len)
    return [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]


def padded(batch: list[list[int]], pad: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The source tensor aiayn's translator builds, and its attention mask (for HF)."""
    from aiayn.generate.translate import source_batch

    out = source_batch(batch, pad, eos)
    return out, out.ne(pad).long()


def time_it(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def with_cudnn_attention(fn, enabled: bool):
    """fn run with PyTorch's cuDNN attention kernel switched on or off (CUDA)."""

    def run(beam):
        saved = torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp(enabled)
        try:
            return fn(beam)
        finally:
            torch.backends.cuda.enable_cudnn_sdp(saved)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=30, help="forced output length L (EOS included)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=3, help="best of this many passes, the systems taking turns")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-ct2", action="store_true")
    p.add_argument("--skip-bf16", action="store_true", help="leave out bf16 autocast (slow on CPUs without bf16 units)")
    p.add_argument("--shortlist", action="store_true", help="also aiayn with a vocabulary shortlist (fp32 and int8)")
    p.add_argument("--output", type=Path, default=HERE / "results" / "translate_throughput.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from aiayn.generate import beam_search, greedy_search, special_tokens
    from aiayn.runtime import gemm_library, int8_engine, int8_engine_as, machine, onednn_inference

    work = Path(tempfile.mkdtemp(prefix="aiayn-translate-bench-"))
    model, tokenizers, ckpt, sources, data = build(args.size, args.vocab_size, work)
    cfg = model.config
    L = args.length
    batches = batches_of(sources, args.sentences, args.batch_size)
    n_sent = sum(len(b) for b in batches)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tensors = [tuple(t.to(device) for t in padded(b, cfg.pad_id, cfg.eos_id)) for b in batches]
    results = {}
    special = special_tokens(model)

    def aiayn(beam, model=model, shortlist=None):
        total = 0
        for src, _ in tensors:
            searched, ids = model, special
            if shortlist is not None:  # as Translator does it: the search runs over the batch's candidates
                searched = Shortlisted(model, shortlist.vocabulary(src, cfg.pad_id), special)
                ids = searched.special
            cap = torch.full((src.size(0),), L, device=src.device)
            if beam == 1:
                hyps = greedy_search(searched, src, special=ids, max_len=cap, min_len=L - 1)
            else:
                hyps = [h[0] for h in beam_search(searched, src, special=ids, max_len=cap, beam=beam, min_len=L - 1)]
            total += sum(len(h.tokens) + 1 for h in hyps)
        return total

    def aiayn_bf16(beam):  # the same model under bf16 autocast (AMX on recent Xeons): `--precision bf16`
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return aiayn(beam)

    def aiayn_int8(beam):  # int8 projections (nn.int8): `--precision int8`, or a model exported with --format int8
        return aiayn(beam, model=int8_model)

    def aiayn_mkl(beam):  # the same model with every product through MKL (AIAYN_GEMM=mkl)
        with gemm_library("mkl"):
            return aiayn(beam)

    if cuda:
        systems = [("aiayn", with_cudnn_attention(aiayn, False)), ("aiayn, cuDNN attn", with_cudnn_attention(aiayn, True))]
        if not args.skip_bf16:
            systems.append(("aiayn bf16 autocast", with_cudnn_attention(aiayn_bf16, False)))
    else:
        systems = [(f"aiayn ({'oneDNN' if onednn_inference() else 'MKL'})", aiayn)]
        if onednn_inference():
            systems.append(("aiayn (MKL)", aiayn_mkl))
        if not args.skip_bf16:
            systems.append(("aiayn bf16 autocast", aiayn_bf16))
        from aiayn.nn.int8 import for_precision

        int8_model, _ = for_precision(model, "int8", device)
        systems.append((f"aiayn int8 ({int8_engine()})", aiayn_int8))
        engines = {"fbgemm", "onednn"} & set(torch.backends.quantized.supported_engines)
        for other in sorted(engines - {int8_engine()}):  # the engine auto did not choose, for comparison (AIAYN_INT8_ENGINE)
            other_model, _ = for_precision(model, "int8", device)

            def aiayn_int8_other(beam, engine=other, m=other_model):
                with int8_engine_as(engine):
                    return aiayn(beam, model=m)

            systems.append((f"aiayn int8 ({other})", aiayn_int8_other))
        if args.shortlist:  # each batch's output vocabulary restricted (generate.shortlist; random weights: speed only)
            from aiayn.generate.shortlist import Shortlist, Shortlisted

            shortlist = Shortlist.for_model(data, model, *tokenizers)
            systems.append(("aiayn shortlist", lambda beam: aiayn(beam, shortlist=shortlist)))
            systems.append(("aiayn int8 shortlist", lambda beam: aiayn(beam, model=int8_model, shortlist=shortlist)))
    if not args.skip_hf:
        from aiayn.interop.hf_marian import to_marian_model

        hf = to_marian_model(model).to(device)  # exported from the CPU copy
        model.to(device)
        with torch.no_grad():  # the same function: logits agree
            src, mask = tensors[0]
            tgt = torch.full((src.size(0), 3), cfg.decoder_start_id, device=device)
            diff = (hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits - model(src, tgt)).abs().max().item()
        print(f"HF export of the same weights: max |logit difference| = {diff:.2e}")

        def hf_generate(beam):
            total = 0
            with torch.no_grad():
                for src, mask in tensors:
                    out = hf.generate(
                        input_ids=src,
                        attention_mask=mask,
                        num_beams=beam,
                        do_sample=False,
                        max_new_tokens=L,
                        min_new_tokens=L - 1,
                        length_penalty=0.6 if beam > 1 else 1.0,
                    )
                    total += int(out[:, 1:].ne(cfg.pad_id).sum())
            return total

        systems.append(("HF generate", hf_generate))
        if cuda:
            systems.append(("HF generate, no cuDNN", with_cudnn_attention(hf_generate, False)))
        if cuda and not args.skip_bf16:

            def hf_bf16(beam):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return hf_generate(beam)

            systems.append(("HF generate bf16", hf_bf16))
    model.to(device)  # (already there when HF ran: its check compares on the device)
    ct2_process = None
    if not args.skip_ct2 and not cuda:
        from ct2_worker import CTranslate2Process

        from aiayn.interop.ctranslate2 import export_ctranslate2

        src_pieces = [[tokenizers[0].pieces(s) + ["</s>"] for s in b] for b in batches]
        quants = ("float32", "int8")
        models = {q: (export_ctranslate2(ckpt, work / f"ct2-{q}", quantization=None if q == "float32" else q), q) for q in quants}
        # in a process of its own: in this one its OpenMP calls would share PyTorch's runtime and slow PyTorch down (ct2_worker)
        ct2_process = CTranslate2Process(models, src_pieces, args.threads)
        for quant in quants:

            def ct2(beam, quant=quant):
                return ct2_process.run(
                    quant,
                    beam_size=beam,
                    max_decoding_length=L,
                    min_decoding_length=L - 1,
                    return_end_token=True,
                    length_penalty=0.6 if beam > 1 else 0.0,
                    max_batch_size=args.batch_size,
                )[0]

            systems.append((f"CTranslate2 {quant}", ct2))

    for beam in (1, 4):
        tokens, seconds = {}, {name: float("inf") for name, _ in systems}
        for name, fn in systems:
            tokens[name] = fn(beam)  # warm-up, and the output length check
        for r in range(args.repeats):  # passes in turn, each round in another order: a slow spell of a noisy machine is shared
            for name, fn in systems[r % len(systems) :] + systems[: r % len(systems)]:
                seconds[name] = min(seconds[name], time_it(lambda: fn(beam), 1))
        for name, _ in systems:
            n_tokens, best = tokens[name], seconds[name]
            results[(name, beam)] = {
                "tokens": n_tokens,
                "seconds": best,
                "tokens_per_s": n_tokens / best,
                "sentences_per_s": n_sent / best,
                "mean_output_tokens": n_tokens / n_sent,
            }
            print(
                f"{name:<22} beam {beam}: {n_tokens / best:8.1f} target tok/s  {n_sent / best:6.2f} sent/s  ({n_tokens / n_sent:.1f} tokens/sentence)",
                flush=True,
            )

    if ct2_process is not None:
        ct2_process.close()
    where = torch.cuda.get_device_name() if cuda else f"{args.threads} threads"
    print(f"\n{args.size} dims, {n_sent} test verses in batches of {args.batch_size}, output forced to {L} tokens, {where}")
    print(f"{'system':<22} {'search':<8} {'tok/s':>8} {'sent/s':>7} {'vs HF':>6} {'vs CT2 fp32':>11} {'vs CT2 int8':>11}")

    def ratio(r, other):
        return f"{r['tokens_per_s'] / other['tokens_per_s']:.2f}" if other else "-"

    for (name, beam), r in results.items():
        print(
            f"{name:<22} {'greedy' if beam == 1 else 'beam 4':<8} {r['tokens_per_s']:>8.1f} {r['sentences_per_s']:>7.2f} "
            f"{ratio(r, results.get(('HF generate', beam))):>6} {ratio(r, results.get(('CTranslate2 float32', beam))):>11} "
            f"{ratio(r, results.get(('CTranslate2 int8', beam))):>11}"
        )
    record = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "size": args.size,
        "threads": args.threads,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "sentences": n_sent,
        "batch_size": args.batch_size,
        "length": L,
        "torch": torch.__version__,
        "machine": machine(),
        "gemm_library": "oneDNN" if onednn_inference() else "MKL",
        "int8_engine": None if cuda else int8_engine(),
        "results": [{"system": name, "beam": beam, **r} for (name, beam), r in results.items()],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
