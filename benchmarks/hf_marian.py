"""The Hugging Face baseline that aiayn is compared against: `MarianMTModel` trained with
`Seq2SeqTrainer` and its usual settings, on the SAME data, SAME vocabulary and SAME splits.

Everything is built from an aiayn dataset directory (made by `aiayn prepare`):

* vocabulary: `marian_tokenizer` turns the dataset's joint sentencepiece model into a
  `MarianTokenizer` (source.spm = target.spm = spm.model, vocab.json = every piece at its
  sentencepiece id), so HF's ids are aiayn's ids. `check_tokenizer` verifies it on the valid/test
  text: `tokenizer(text).input_ids == aiayn ids + [eos]` for both sides, and decoding gives back
  aiayn's text.
* training data: the binarized train split (`aiayn.data.ParallelDataset`). `aiayn prepare` keeps no
  train text, only its ids, so the features are built from those ids as exactly what
  `tokenizer(src, text_target=tgt)` returns (input_ids + EOS, attention_mask, labels + EOS);
  `check_tokenizer` is what shows the two are the same thing.
* model: `marian_config` gives a MarianConfig with aiayn's dimensions and conventions (post-norm,
  relu, embeddings × √d_model, one embedding matrix shared by encoder, decoder and output
  projection, pad 0 / eos 3 / decoder start = BOS 2, sinusoidal positions).
* training: `train_hf` runs `Seq2SeqTrainer` with `DataCollatorForSeq2Seq`, length-grouped
  batches, AdamW (β = 0.9/0.98, ε = 1e-9, no weight decay), the inverse-sqrt schedule with linear
  warm-up, label smoothing 0.1, fp32 on CPU, for a wall-clock budget. Everything else is the
  Trainer's default (e.g. gradient clipping at max_grad_norm=1.0, HF's weight init).
* evaluation: `translate_hf` (beam search with `model.generate`), `score` (sacreBLEU BLEU and chrF,
  with aiayn's `evaluate`, so both libraries are scored by one piece of code).

Differences that remain (inherent in MarianMTModel, not choices made here):
* positions: Marian's sinusoids put all sines before all cosines, the paper (and aiayn's default)
  interleaves them: a fixed permutation of the same features, immaterial when training from scratch.
* weight init: HF's normal(0, init_std=0.02) everywhere; aiayn uses Xavier and N(0, d_model^-0.5)
  for embeddings. `marian_config(init_std=...)` can change HF's.
* length penalty: HF divides a hypothesis' log-probability by |Y|^α; aiayn's default is GNMT's
  ((5 + |Y|) / 6)^α (`--lp-style power` in aiayn gives HF's).
* loss normalisation: Seq2SeqTrainer's label smoother averages over the target tokens of a batch,
  and its smoothing mass is spread over the whole vocabulary (pad included).

Library use (from another script in benchmarks/):

    sys.path.insert(0, str(Path(__file__).parent)); import hf_marian
    tok = hf_marian.marian_tokenizer(data, out / "tokenizer")
    cfg = hf_marian.marian_config(TransformerConfig.preset("small", pre_norm=False, vocab_size=8000))
    stats = hf_marian.train_hf(data, out / "model", cfg, minutes=30)
    hyps = hf_marian.translate_hf(out / "model", tok, sources)
    print(hf_marian.score(hyps, refs))

Command line (from the repository root):

    .venv/bin/python benchmarks/hf_marian.py --data /tmp/hfbench-data --out /tmp/hf-run --minutes 30
    .venv/bin/python benchmarks/hf_marian.py --data DIR --out DIR --minutes 1 --d-model 128 --layers 2 --test-sentences 50

It trains, translates the test split (`test.src.txt`), scores against `test.tgt.txt`, prints a
summary and writes `OUT/summary.json` (plus `OUT/test.hyp.txt`, the model and tokenizer in
`OUT/model`, the Trainer's log history in `OUT/model/trainer_state.json`).
Needs `transformers` and `accelerate` (the Trainer requires it), besides aiayn itself.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aiayn.data import ParallelDataset, load_meta, load_tokenizers  # noqa: E402
from aiayn.evaluate import evaluate  # noqa: E402
from aiayn.models import TransformerConfig  # noqa: E402
from aiayn.runtime import machine  # noqa: E402


# ---------------------------------------------------------------- model
def marian_config(
    d_model: int | TransformerConfig = 512,
    n_layers_enc: int = 6,
    n_layers_dec: int = 6,
    n_heads: int = 8,
    d_ff: int = 2048,
    vocab_size: int = 8000,
    dropout: float = 0.1,
    *,
    attention_dropout: float = 0.0,
    activation_dropout: float = 0.0,
    activation: str = "relu",
    max_positions: int = 512,
    pad_id: int = 0,
    bos_id: int = 2,
    eos_id: int = 3,
    init_std: float = 0.02,
):
    """A MarianConfig for a Transformer like aiayn's: post-norm (Marian's only layout), relu,
    embeddings scaled by √d_model, one embedding matrix for encoder, decoder and the output
    projection, decoding starting from BOS (aiayn's convention; Marian's own models start from pad).

    The first argument may instead be an aiayn `TransformerConfig`, whose dimensions, dropouts,
    activation and special ids are copied (the other arguments are then ignored, except
    max_positions and init_std). A config Marian cannot express (pre-norm, learned positions,
    separate embeddings) raises ValueError.
    """
    from transformers import MarianConfig

    if isinstance(d_model, TransformerConfig):
        c = d_model
        unsupported = [
            (c.pre_norm, "pre_norm=True (Marian is post-norm only)"),
            (c.positional != "sinusoidal", f"positional={c.positional!r} (Marian has sinusoids only)"),
            (not (c.share_embeddings and c.tie_output), "unshared embeddings (compare with a joint vocabulary)"),
            (not c.scale_embedding, "scale_embedding=False"),
            (not c.bias, "bias=False"),
        ]
        problems = [why for bad, why in unsupported if bad]
        if problems:
            raise ValueError(f"MarianMTModel cannot mirror this aiayn config: {'; '.join(problems)}")
        d_model, n_layers_enc, n_layers_dec, n_heads, d_ff = c.d_model, c.n_encoder_layers, c.n_decoder_layers, c.n_heads, c.d_ff
        vocab_size, dropout = c.tgt_vocab_size, c.dropout
        attention_dropout, activation_dropout, activation = c.attn_dropout, c.activation_dropout, c.activation
        pad_id, bos_id, eos_id = c.pad_id, c.decoder_start_id, c.eos_id
    return MarianConfig(
        vocab_size=vocab_size,
        decoder_vocab_size=vocab_size,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        d_model=d_model,
        encoder_layers=n_layers_enc,
        decoder_layers=n_layers_dec,
        encoder_attention_heads=n_heads,
        decoder_attention_heads=n_heads,
        encoder_ffn_dim=d_ff,
        decoder_ffn_dim=d_ff,
        activation_function=activation,
        dropout=dropout,
        attention_dropout=attention_dropout,
        activation_dropout=activation_dropout,
        scale_embedding=True,
        max_position_embeddings=max(512, max_positions),
        init_std=init_std,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        decoder_start_token_id=bos_id,
        forced_eos_token_id=eos_id,  # MarianConfig's default (0) would be aiayn's <pad>
    )


# ---------------------------------------------------------------- tokenizer
def marian_tokenizer(dataset_dir: str | Path, out_dir: str | Path):
    """A MarianTokenizer over the dataset's joint sentencepiece model, saved in out_dir (loadable
    later with `MarianTokenizer.from_pretrained(out_dir)`).

    source.spm = target.spm = spm.model and vocab.json maps every sentencepiece piece to its own
    id, so ids are aiayn's. Marian appends EOS and adds nothing else (no BOS, no language code).
    """
    import sentencepiece as spm
    from transformers import MarianTokenizer

    meta = load_meta(dataset_dir)
    if not meta["joint_vocab"]:
        raise ValueError(f"{dataset_dir} has separate vocabularies; this baseline needs a joint one (shared embeddings)")
    spm_path = Path(dataset_dir) / meta["vocab"]["src"]["file"]
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    for name in ("source.spm", "target.spm"):
        shutil.copyfile(spm_path, out_dir / name)
    special = {sp.id_to_piece(meta["special_ids"][k]): k for k in ("pad", "unk", "bos", "eos")}
    names = {v: k for k, v in special.items()}
    with warnings.catch_warnings():  # "Recommended: pip install sacremoses": Marian never calls it when encoding
        warnings.filterwarnings("ignore", message=".*sacremoses.*")
        tokenizer = MarianTokenizer(
            source_spm=str(out_dir / "source.spm"),
            target_spm=str(out_dir / "target.spm"),
            vocab=str(out_dir / "vocab.json"),
            pad_token=names["pad"],
            unk_token=names["unk"],
            eos_token=names["eos"],
            bos_token=names["bos"],  # never inserted by Marian; declared so that decoding skips it
            model_max_length=1024,
        )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def load_tokenizer(path: str | Path):
    """A tokenizer saved by `marian_tokenizer` (or with a trained model)."""
    from transformers import MarianTokenizer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sacremoses.*")
        return MarianTokenizer.from_pretrained(str(path))


def check_tokenizer(tokenizer, dataset_dir: str | Path, splits=("valid", "test"), n: int = 200) -> dict:
    """Check on the first n sentences of each stored split that the HF tokenizer reproduces aiayn:
    `tokenizer(src, text_target=tgt)` gives aiayn's ids + [eos] on both sides, and decoding aiayn's
    ids with skip_special_tokens gives aiayn's decoded text. Raises AssertionError on a mismatch."""
    aiayn_tok, _ = load_tokenizers(dataset_dir)
    eos = aiayn_tok.eos_id
    checked = 0
    for split in splits:
        ds = ParallelDataset(dataset_dir, split)
        src_text, tgt_text = ds.text("src"), ds.text("tgt")
        if src_text is None:
            continue
        for i in range(min(n, len(ds))):
            src_ids, tgt_ids = (x.tolist() for x in ds[i])
            enc = tokenizer(src_text[i], text_target=tgt_text[i])
            where = f"{split} sentence {i + 1}"
            assert enc["input_ids"] == src_ids + [eos], f"{where}: HF source ids differ from aiayn's"
            assert enc["labels"] == tgt_ids + [eos], f"{where}: HF target ids differ from aiayn's"
            decoded = tokenizer.decode([aiayn_tok.bos_id, *tgt_ids, eos], skip_special_tokens=True)
            assert decoded == aiayn_tok.decode(tgt_ids), f"{where}: HF decodes to {decoded!r}, aiayn to {aiayn_tok.decode(tgt_ids)!r}"
            checked += 1
    return {"sentences_checked": checked, "ids_match": True}


# ---------------------------------------------------------------- data
class TranslationFeatures(torch.utils.data.Dataset):
    """A split of an aiayn dataset as the features `tokenizer(src, text_target=tgt)` would give:
    {"input_ids": src + [eos], "attention_mask": [1, …], "labels": tgt + [eos]}."""

    def __init__(self, dataset_dir: str | Path, split: str = "train"):
        self.data = ParallelDataset(dataset_dir, split)
        self.eos = self.data.meta["special_ids"]["eos"]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        src, tgt = self.data[i]
        input_ids = [*src.tolist(), self.eos]
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": [*tgt.tolist(), self.eos]}


class TokenCountingCollator:
    """Wraps a collator and records each batch's real (non-pad) source and target token counts, in
    the order the batches are made. The Trainer consumes batches in that order (one per update
    here), so the tokens of the first k updates are the sum of the first k records, whatever the
    dataloader fetched ahead."""

    def __init__(self, collator):
        self.collator = collator
        self.counts: list[tuple[int, int]] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.counts.append((int(batch["attention_mask"].sum()), int(batch["labels"].ne(-100).sum())))
        return batch

    def tokens(self, batches: int) -> tuple[int, int]:
        src = sum(c[0] for c in self.counts[:batches])
        tgt = sum(c[1] for c in self.counts[:batches])
        return src, tgt


def batch_size_for(dataset_dir: str | Path, tgt_tokens_per_update: int) -> tuple[int, float]:
    """Sentences per batch so that a batch holds tgt_tokens_per_update target tokens on average
    (target length counted with its EOS), and that mean length."""
    mean_tgt = float(ParallelDataset(dataset_dir, "train").tgt_lengths.mean()) + 1.0
    return max(1, round(tgt_tokens_per_update / mean_tgt)), mean_tgt


# ---------------------------------------------------------------- training
def _time_budget_callback(minutes: float, counter: TokenCountingCollator, log):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stops training once `minutes` of wall-clock time have passed since it began, and prints
        the Trainer's logs with elapsed time and throughput."""

        def __init__(self):
            self.started = self.ended = None
            self.step_ends: list[float] = []  # seconds since the start at the end of each update

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()  # the update's GPU work is done before it is timed
            elapsed = time.perf_counter() - self.started
            self.step_ends.append(elapsed)
            if minutes is not None and elapsed >= minutes * 60:
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            self.ended = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            elapsed = time.perf_counter() - self.started
            src, tgt = counter.tokens(state.global_step)
            log(
                f"step {state.global_step:6d}  loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.3g}  "
                f"grad_norm {logs.get('grad_norm', float('nan')):.3g}  {elapsed / 60:5.1f} min  {(src + tgt) / elapsed:,.0f} tok/s"
            )

    return TimeBudget()


def train_hf(
    dataset_dir: str | Path,
    out_dir: str | Path,
    model_config,
    minutes: float | None,
    tgt_tokens_per_update: int = 4096,
    lr: float = 1e-3,
    warmup_steps: int = 400,
    threads: int = 2,
    seed: int = 1,
    *,
    batch_size: int | None = None,
    max_steps: int | None = None,
    logging_steps: int = 20,
    device: str = "cpu",
    precision: str = "fp32",
    log=print,
) -> dict:
    """Train a MarianMTModel from scratch with Seq2SeqTrainer for `minutes` of wall-clock time
    (and/or `max_steps` updates, whichever comes first) on the dataset's train split; save the
    model and tokenizer in out_dir; return what happened.

    model_config: a MarianConfig (see `marian_config`) or an aiayn TransformerConfig.
    batch_size: sentences per update; by default chosen so that a batch holds
    tgt_tokens_per_update target tokens on average.
    device: cpu or cuda; precision: fp32, or bf16 (Trainer's bf16=True: autocast) on CUDA.
    Returns updates, train_seconds, src/tgt tokens, tokens_per_s, losses, batch size, paths, and
    per update: `step_ends` (seconds since the start) and `step_tokens` ((src, tgt) real tokens).
    """
    from transformers import (
        DataCollatorForSeq2Seq,
        MarianConfig,
        MarianMTModel,
        PrinterCallback,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    config = model_config if isinstance(model_config, MarianConfig) else marian_config(model_config)
    meta = load_meta(dataset_dir)
    if config.vocab_size != meta["vocab"]["tgt"]["size"]:
        raise ValueError(f"model vocab_size {config.vocab_size} but the dataset's vocabulary has {meta['vocab']['tgt']['size']} pieces")

    tokenizer = marian_tokenizer(dataset_dir, out_dir)
    train_data = TranslationFeatures(dataset_dir, "train")
    mean_tgt = float(train_data.data.tgt_lengths.mean()) + 1.0
    if batch_size is None:
        batch_size, _ = batch_size_for(dataset_dir, tgt_tokens_per_update)

    set_seed(seed)
    model = MarianMTModel(config)
    collator = TokenCountingCollator(DataCollatorForSeq2Seq(tokenizer, model=model))
    args = Seq2SeqTrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch_size,
        train_sampling_strategy="group_by_length",  # transformers 5 spelling of group_by_length=True
        learning_rate=lr,
        lr_scheduler_type="inverse_sqrt",
        warmup_steps=warmup_steps,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-9,
        weight_decay=0.0,
        label_smoothing_factor=0.1,
        max_steps=max_steps or 10**9,  # otherwise the TimeBudget callback ends training
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        dataloader_num_workers=0,
        logging_strategy="steps",
        logging_steps=logging_steps,
        eval_strategy="no",
        save_strategy="no",  # the model is saved once, at the end
        report_to="none",
        disable_tqdm=True,  # a bar towards 10**9 steps says nothing; TimeBudget prints the logs
        seed=seed,
    )
    budget = _time_budget_callback(minutes, collator, log)
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_data,
        processing_class=tokenizer,
        callbacks=[budget],
    )
    trainer.remove_callback(PrinterCallback)
    torch.set_num_threads(threads)  # in case anything above changed it
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"HF MarianMTModel: {n_params / 1e6:.1f}M parameters, {batch_size} sentences per update "
        f"(≈{batch_size * mean_tgt:.0f} target tokens), {torch.get_num_threads()} threads, "
        f"{f'{minutes:g} min budget' if minutes is not None else f'{max_steps} updates'}"
    )

    result = trainer.train()
    train_seconds = budget.ended - budget.started
    updates = trainer.state.global_step
    src_tokens, tgt_tokens = collator.tokens(updates)
    trainer.save_model(str(out_dir))  # model, config, generation config and tokenizer
    state_path = out_dir / "trainer_state.json"
    trainer.state.save_to_json(str(state_path))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "updates": updates,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "train_seconds": round(train_seconds, 1),
        "batch_size": batch_size,
        "mean_tgt_len_with_eos": round(mean_tgt, 2),
        "expected_tgt_tokens_per_update": round(batch_size * mean_tgt, 1),
        "mean_tgt_tokens_per_update": round(tgt_tokens / max(1, updates), 1),
        "src_tokens": src_tokens,
        "tgt_tokens": tgt_tokens,
        "tokens_per_s": round((src_tokens + tgt_tokens) / train_seconds, 1),
        "final_loss": losses[-1] if losses else None,  # label-smoothed, mean over the last logging window
        "mean_loss": round(result.training_loss, 4),  # label-smoothed, mean over the whole run
        "parameters": n_params,
        "threads": torch.get_num_threads(),
        "model_dir": str(out_dir),
        "log_history": str(state_path),
        "step_ends": [round(t, 3) for t in budget.step_ends[:updates]],
        "step_tokens": collator.counts[:updates],
    }


# ---------------------------------------------------------------- translation and scoring
def translate_hf(
    model_dir_or_model,
    tokenizer,
    sentences: list[str],
    beam: int = 4,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
    batch_size: int = 32,
    length_penalty: float = 0.6,
) -> list[str]:
    """Translate with `model.generate` (beam search; early_stopping left at HF's default).

    Sentences are sorted by length and batched batch_size at a time, then put back in order. Each
    batch may produce max_len_a × (its longest source, EOS excluded) + max_len_b new tokens, EOS
    included: aiayn's limit (§6.1: input length + 50), applied per batch rather than per sentence.
    model_dir_or_model: a MarianMTModel or a directory saved by `train_hf`; tokenizer: a
    MarianTokenizer or a directory holding one.
    """
    from transformers import MarianMTModel

    model = model_dir_or_model
    if not isinstance(model, torch.nn.Module):
        model = MarianMTModel.from_pretrained(str(model_dir_or_model))
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    model.eval()
    encoded = tokenizer(sentences)["input_ids"]
    order = sorted(range(len(sentences)), key=lambda i: len(encoded[i]))
    out: list[str | None] = [None] * len(sentences)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            longest = int(batch["attention_mask"].sum(1).max()) - 1  # without the source EOS
            generated = model.generate(
                **batch,
                num_beams=beam,
                length_penalty=length_penalty,
                max_new_tokens=max(1, math.floor(max_len_a * longest) + max_len_b),
            )
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            for i, text in zip(rows, texts):
                out[i] = text
    return out


def score(hyps: list[str], refs: list[str]) -> dict:
    """sacreBLEU BLEU and chrF with signatures (aiayn's `evaluate`, which scores aiayn too)."""
    return evaluate(hyps, refs)


# ---------------------------------------------------------------- command line
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="an aiayn dataset directory (aiayn prepare)")
    ap.add_argument("--out", required=True, help="output directory (model in OUT/model, summary.json)")
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--tgt-tokens-per-update", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=None, help="sentences per update (default: from --tgt-tokens-per-update)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, reached at the end of warm-up")
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--length-penalty", type=float, default=0.6)
    ap.add_argument("--translate-batch-size", type=int, default=32)
    ap.add_argument("--test-sentences", type=int, default=0, help="translate only the first N test sentences (0: all)")
    args = ap.parse_args(argv)

    import accelerate
    import transformers

    transformers.utils.logging.disable_progress_bar()  # shard-writing/weight-loading bars, not training progress
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = load_meta(args.data)

    tokenizer = marian_tokenizer(args.data, out / "tokenizer")
    check = check_tokenizer(tokenizer, args.data)
    print(f"tokenizer: HF MarianTokenizer ids match aiayn's on {check['sentences_checked']} valid/test sentences (both sides)")

    config = marian_config(
        args.d_model,
        args.layers,
        args.layers,
        args.heads,
        args.d_ff,
        meta["vocab"]["tgt"]["size"],
        args.dropout,
        pad_id=meta["special_ids"]["pad"],
        bos_id=meta["special_ids"]["bos"],
        eos_id=meta["special_ids"]["eos"],
    )
    train = train_hf(
        args.data,
        out / "model",
        config,
        args.minutes,
        args.tgt_tokens_per_update,
        args.lr,
        args.warmup,
        threads=args.threads,
        seed=args.seed,
        batch_size=args.batch_size,
    )

    test = ParallelDataset(args.data, "test")
    sources, refs = test.text("src"), test.text("tgt")
    if args.test_sentences:
        sources, refs = sources[: args.test_sentences], refs[: args.test_sentences]
    started = time.perf_counter()
    hyps = translate_hf(
        train["model_dir"], out / "model", sources, beam=args.beam, batch_size=args.translate_batch_size, length_penalty=args.length_penalty
    )
    translate_seconds = time.perf_counter() - started
    (out / "test.hyp.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    scores = score(hyps, refs)

    summary = {
        "library": "transformers",
        "versions": {"transformers": transformers.__version__, "accelerate": accelerate.__version__, "torch": torch.__version__},
        "machine": machine(args.threads),
        "data": str(Path(args.data).resolve()),
        "tokenizer_check": check,
        "model": {
            "d_model": args.d_model,
            "layers": args.layers,
            "heads": args.heads,
            "d_ff": args.d_ff,
            "dropout": args.dropout,
            "vocab_size": config.vocab_size,
        },
        "training": {
            "minutes": args.minutes,
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "label_smoothing": 0.1,
            "tgt_tokens_per_update": args.tgt_tokens_per_update,
            **train,
        },
        "translation": {
            "beam": args.beam,
            "length_penalty": args.length_penalty,
            "max_len": "src_len + 50 (per batch)",
            "sentences": len(hyps),
            "seconds": round(translate_seconds, 1),
            "sentences_per_s": round(len(hyps) / translate_seconds, 2),
        },
        "test": scores,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")

    t = summary["training"]
    print(
        f"\ntrained {t['updates']} updates ({t['epochs']} epochs) in {t['train_seconds']:.0f} s, "
        f"{t['batch_size']} sentences/update (≈{t['mean_tgt_tokens_per_update']:.0f} target tokens), "
        f"{t['tokens_per_s']:,.0f} src+tgt tok/s, label-smoothed loss {t['mean_loss']} (mean), "
        f"{t['final_loss'] if t['final_loss'] is not None else 'n/a'} (last log)"
    )
    print(
        f"test ({len(hyps)} sentences, beam {args.beam}, {translate_seconds:.1f} s): "
        f"BLEU {scores['bleu']}  chrF {scores['chrf']}\n  {scores['bleu_signature']}"
    )
    print(f"wrote {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
