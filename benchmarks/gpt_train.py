"""GPT training at an equal CPU budget: aiayn's trainer against Hugging Face `GPT2LMHeadModel`
trained with `Trainer`, side by side in one run, on the same tokens.

Data: the English side of the shipped Bible corpus (train / valid splits), prepared once with
`aiayn prepare --task lm` (a byte-exact sentencepiece BPE, --vocab-size pieces). Both libraries
read that one token stream, so they see the same vocabulary and text.

* aiayn: `aiayn train --config gpt-tiny` (4 layers, 4 heads, 128 wide, context 128; 16 windows a
  batch at random phases; Adam β = 0.9/0.99, clipping at 1, peak lr 2e-3 with 100 warm-up updates
  and a cosine decay to 2e-4 that ends with the --minutes budget).
* Hugging Face: `GPT2LMHeadModel` of the same dimensions (n_inner = d_ff, no dropout, as gpt-tiny),
  trained the way run_clm.py trains it: the stream cut into blocks of the context (group_texts),
  shuffled by the Trainer, `Trainer` with AdamW (β = 0.9/0.99, ε = 1e-8, no weight decay), the same
  peak lr, warm-up, clipping and a cosine to the same floor ("cosine_with_min_lr"). Its schedule is
  counted in steps, so max_steps is set from its speed, measured over a short first run, to end with
  the budget; a callback stops it at the budget in any case.
* Both: 2 threads, the same batch (16 × 128 tokens), the same budget of wall-clock minutes.
  Precision: aiayn's default (`auto`: bf16 autocast where the CPU has bf16 units, else fp32);
  Hugging Face in fp32 (its default) and, where the CPU has bf16 units, also with `bf16=True`
  (autocast); the speed ratio is taken against the faster of its runs.
  Validation loss: every token of the valid stream predicted once, in consecutive windows of the
  context, by one function for both models (nats per token, perplexity, bits per character).

    .venv/bin/python benchmarks/gpt_train.py                 # 30 minutes each
    .venv/bin/python benchmarks/gpt_train.py --minutes 2     # a quick look

Prints a table and writes benchmarks/results/gpt_train.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from hf_budget import add_precision_options, hf_precisions, hf_system, ratio_against_fastest  # noqa: E402

from aiayn.runtime import machine  # noqa: E402


def prepare(work: Path, vocab_size: int) -> Path:
    from aiayn.data.shipped import write_shipped_corpus
    from aiayn.data.text import TextOptions, prepare_text

    files = write_shipped_corpus(work / "text")
    out = work / "data"
    meta = out / "meta.json"
    if meta.exists() and json.loads(meta.read_text())["vocab"]["size"] == vocab_size:  # an earlier call with this --work
        return out
    shutil.rmtree(out, ignore_errors=True)
    prepare_text({"train": [files["train"][0]], "valid": [files["valid"][0]]}, out, TextOptions(vocab_size=vocab_size, progress=False))
    return out


@torch.no_grad()
def stream_loss(logits_of, tokens: np.ndarray, context: int, batch: int = 16) -> float:
    """Mean negative log-likelihood (nats) of every token after the first, in consecutive windows."""
    n = len(tokens) - 1
    total = 0.0
    starts = list(range(0, n, context))
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        for part in ([s for s in group if s + context <= n], [s for s in group if s + context > n]):
            if not part:
                continue
            length = min(context, n - part[0])
            rows = torch.from_numpy(np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in part]))
            logits = logits_of(rows[:, :-1]).float()
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1), reduction="sum").item()
    return total / n


def run_aiayn(data: Path, work: Path, args) -> dict:
    from aiayn.io.checkpoint import load_model
    from aiayn.train.config import load_config
    from aiayn.train.trainer import Trainer

    cfg = load_config(
        args.config,
        {
            "max_time": args.minutes,
            "max_updates": 0,
            "validate_every": 0,
            "save_every": 0,
            "threads": args.threads,
            "precision": args.precision,
        },
    )
    trainer = Trainer(cfg, data, work / "aiayn-run", log=lambda *a: None, progress=False)
    started = time.time()
    summary = trainer.train()
    wall = time.time() - started
    model, _ = load_model(work / "aiayn-run")
    log = [json.loads(line) for line in (work / "aiayn-run" / "log.jsonl").read_text().splitlines()]
    last = [e for e in log if e["type"] == "train"][-1]  # speed up to the last log line: the final validation is not training
    return {
        "model": model,
        "updates": summary["updates"],
        "tokens": summary["tokens_seen"],
        "train_seconds": last["time"],
        "speed": last["tokens_seen"] / last["time"],
        "wall_seconds": wall,
        "context": model.config.context,
        "batch": cfg.max_tokens // model.config.context,
        "cfg": cfg,
        "precision": trainer.precision,
    }


def run_hf(data: Path, work: Path, args, reference: dict, precision: str) -> dict:
    import transformers
    from hf_budget import budget_callback, train_for
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from aiayn.data.text import TokenStream

    cfg = reference["model"].config
    tokens = np.asarray(TokenStream(data, "train").tokens, dtype=np.int64)
    T, B = cfg.context, reference["batch"]
    blocks = torch.from_numpy(tokens[: (len(tokens) // T) * T].reshape(-1, T))  # run_clm.py's group_texts

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            return {"input_ids": blocks[i], "labels": blocks[i]}

    def model():
        torch.manual_seed(1)
        hf_cfg = GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=T,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_ff,
            activation_function="gelu_new",
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.attn_dropout,
            bos_token_id=cfg.eos_id,
            eos_token_id=cfg.eos_id,
        )
        return GPT2LMHeadModel(hf_cfg)

    tc = reference["cfg"]

    def trainer(max_steps, seconds, name):
        targs = TrainingArguments(
            output_dir=str(work / f"hf-{precision}-{name}"),
            max_steps=max_steps,
            per_device_train_batch_size=B,
            learning_rate=tc.lr,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr": tc.min_lr},
            warmup_steps=tc.warmup_steps,
            adam_beta1=tc.adam_betas[0],
            adam_beta2=tc.adam_betas[1],
            adam_epsilon=tc.adam_eps,
            weight_decay=0.0,
            max_grad_norm=tc.clip_norm,
            logging_steps=50,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=precision == "bf16",  # autocast, as aiayn's bf16
            seed=1,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        return Trainer(model=model(), args=targs, train_dataset=Blocks(), callbacks=[budget_callback(seconds)])

    r = train_for(trainer, args.minutes, min_steps=tc.warmup_steps + 1)
    return {
        "model": r["trainer"].model.eval(),
        "updates": r["steps"],
        "tokens": r["steps"] * B * T,
        "train_seconds": r["train_seconds"],
        "wall_seconds": r["wall_seconds"],
        "planned_steps": r["planned_steps"],
        "probe_seconds_per_step": r["probe_seconds_per_step"],
        "transformers": transformers.__version__,
        "precision": precision,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training budget for each library (default 30)")
    p.add_argument("--config", default="gpt-tiny")
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    add_precision_options(p)
    p.add_argument("--work", help="directory for the data and runs (default: a temporary one)")
    p.add_argument("--out", default=str(HERE / "results" / "gpt_train.json"))
    args = p.parse_args()
    args.hf_precision = hf_precisions(args)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for old in [work / "aiayn-run", *work.glob("hf-*")]:  # runs of an earlier call (the data is kept)
            shutil.rmtree(old, ignore_errors=True)
        from aiayn.data.text import TokenStream

        data = prepare(work, args.vocab_size)
        valid = TokenStream(data, "valid")
        ours = run_aiayn(data, work, args)
        print(f"aiayn ({ours['precision']}): {ours['updates']} updates, {ours['speed']:.0f} tokens/s", flush=True)
        runs = {"aiayn": ours}
        for precision in args.hf_precision:
            theirs = run_hf(data, work, args, ours, precision)
            runs[hf_system(precision)] = theirs
            print(f"HF ({precision}): {theirs['updates']} updates, {theirs['tokens'] / theirs['train_seconds']:.0f} tokens/s", flush=True)
        rows = {}
        for name, r in runs.items():
            T = ours["context"]
            model = r["model"].float()
            logits_of = (lambda x, m=model: m(x)) if name == "aiayn" else (lambda x, m=model: m(x).logits)
            nll = stream_loss(logits_of, valid.tokens, T)
            rows[name] = {
                "precision": r["precision"],
                "updates": r["updates"],
                "train_tokens": r["tokens"],
                "train_seconds": round(r["train_seconds"], 1),
                "tokens_per_s": round(r.get("speed", r["tokens"] / r["train_seconds"]), 1),
                "valid_loss_nats": round(nll, 4),
                "valid_ppl": round(math.exp(nll), 2),
                "valid_bits_per_char": round(nll / math.log(2) * (len(valid) - 1) / valid.characters, 4),
                **(
                    {"planned_steps": r["planned_steps"], "probe_seconds_per_step": round(r["probe_seconds_per_step"], 4)}
                    if name != "aiayn"
                    else {}
                ),
            }
    a = rows["aiayn"]
    print(f"\n{'':8} {'precision':>9} {'updates':>8} {'tokens/s':>10} {'valid loss':>11} {'ppl':>8} {'bits/char':>10}")
    for name, r in rows.items():
        print(
            f"{name:8} {r['precision']:>9} {r['updates']:>8} {r['tokens_per_s']:>10.0f} {r['valid_loss_nats']:>11.4f} {r['valid_ppl']:>8.2f} {r['valid_bits_per_char']:>10.4f}"
        )
    for name in rows:
        if name != "aiayn":
            h = rows[name]
            print(
                f"aiayn / {name} training tokens/s: {a['tokens_per_s'] / h['tokens_per_s']:.2f}×; valid loss {a['valid_loss_nats'] - h['valid_loss_nats']:+.4f} nats"
            )
    transformers_version = next(r["transformers"] for n, r in runs.items() if n != "aiayn")
    result = {
        "benchmark": "gpt_train",
        "machine": {**machine(args.threads), "transformers": transformers_version},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "rows": rows,
    }
    ratio, fastest = ratio_against_fastest(rows, "tokens_per_s")  # against Hugging Face's faster precision
    result.update(tokens_per_s_ratio=round(ratio, 3), ratio_against=fastest)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
