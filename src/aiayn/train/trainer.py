"""`aiayn train`: the paper's training recipe (§5), resumable to the bit, distributed with torchrun.

One update: take `update_freq` token-bucket batches (on every rank), compute the label-smoothed
loss on the real target tokens only, back-propagate it normalised by the number of target
tokens in the whole update (all ranks, all batches), clip, and step Adam with the learning
rate of Eq. (3). Checkpoints hold everything needed to continue exactly where a run stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aiayn.data.batching import Batch, TokenBucketSampler, collate, make_dataloader
from aiayn.data.binarize import ParallelDataset, load_meta, load_tokenizers
from aiayn.model import Transformer, TransformerConfig
from aiayn.model.attention import avoid_cudnn_attention
from aiayn.train import distributed
from aiayn.train.checkpoint import (
    CheckpointError, atomic_write, list_checkpoints, load_training_state, load_weights, read_checkpoint,
    save_model, save_training_state, step_paths,
)
from aiayn.train.config import TrainConfig
from aiayn.train.loss import label_smoothed_nll
from aiayn.train.schedule import learning_rate


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss keeps being non-finite)."""


class LossModel(nn.Module):
    """The Transformer with its training loss attached, so DDP sees one forward."""

    def __init__(self, model: Transformer, label_smoothing: float):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, src, tgt_in, tgt_out):
        hidden, _ = self.model.decode(tgt_in, self.model.encode(src))  # [B, T, d_model]
        real = tgt_out.ne(self.model.config.pad_id)
        logits = self.model.project(hidden[real])  # the output projection only where there are targets: [N, V]
        return label_smoothed_nll(logits, tgt_out[real], self.label_smoothing)


def reuse_freed_memory() -> None:
    """Every CPU training step allocates and frees the same large activations. glibc serves big
    blocks with mmap and unmaps them on free, so each step page-faults them in again; keeping
    them on the heap (no mmap, no trimming) makes steps a few percent faster. Linux/glibc only."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, bf16, fp16)")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA; on a CPU use bf16 or fp32")
    return precision


def model_config_for(cfg: TrainConfig, meta: dict) -> TransformerConfig:
    values = dict(cfg.model)
    preset = values.pop("preset", "base")
    ids = meta["special_ids"]
    return TransformerConfig.preset(
        preset,
        src_vocab_size=meta["vocab"]["src"]["size"], tgt_vocab_size=meta["vocab"]["tgt"]["size"],
        share_embeddings=meta["joint_vocab"], tie_output=values.pop("tie_output", True),
        pad_id=ids["pad"], unk_id=ids["unk"], bos_id=ids["bos"], eos_id=ids["eos"],
        **values,
    )


REGULARIZATION_KEYS = ("dropout", "attn_dropout", "activation_dropout")


class Trainer:
    def __init__(self, cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, *, resume: bool = False,
                 init_from: str | Path | None = None, log=print, progress: bool | None = None):
        self.cfg, self.data_dir, self.run_dir = cfg, Path(data_dir), Path(run_dir)
        self.log, self.progress = log, progress
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
        self.world = distributed.init(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cpu":
            reuse_freed_memory()
        elif self.device.type == "cuda" and not cfg.cudnn_attention:
            avoid_cudnn_attention()  # a plan per batch shape: 6× slower training on an H200

        # data
        self.meta = load_meta(self.data_dir)
        self.tokenizers = load_tokenizers(self.data_dir)
        self.vocab_sha = self.meta["vocab"]["src"]["sha256"] + ("" if self.meta["joint_vocab"] else ":" + self.meta["vocab"]["tgt"]["sha256"])
        self.train_data = ParallelDataset(self.data_dir, "train")
        self.valid_data = ParallelDataset(self.data_dir, "valid") if "valid" in self.meta["splits"] else None

        # run directory
        checkpoints = list_checkpoints(self.run_dir)
        if resume and not checkpoints:
            raise FileNotFoundError(f"--resume: {self.run_dir} has no checkpoint to resume from")
        if not resume and checkpoints:
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")

        # model
        torch.manual_seed(cfg.seed)
        if init_from:
            ckpt = read_checkpoint(init_from)
            ckpt_sha = ckpt.src_tokenizer.sha256 + ("" if ckpt.tgt_tokenizer is ckpt.src_tokenizer else ":" + ckpt.tgt_tokenizer.sha256)
            if ckpt_sha != self.vocab_sha:
                raise CheckpointError(
                    f"--init-from {init_from}: its vocabulary differs from the dataset's ({self.data_dir}); "
                    f"prepare the data with that model's vocabulary ('aiayn prepare --vocab-from {init_from} ...'), or train from scratch"
                )
            overrides = {k: cfg.model[k] for k in REGULARIZATION_KEYS if k in cfg.model}
            self.model_config = TransformerConfig.from_dict({**ckpt.config.to_dict(), **overrides})
            self.model = Transformer(self.model_config)
            load_weights(self.model, ckpt.tensors, str(init_from))
        else:
            self.model_config = model_config_for(cfg, self.meta)
            self.model = Transformer(self.model_config)
        self.model.to(self.device)
        self.loss_model: nn.Module = LossModel(self.model, cfg.label_smoothing)
        if self.world.distributed:
            self.loss_model = nn.parallel.DistributedDataParallel(self.loss_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.model.compile_layers()  # regional: one graph per kind of layer, dynamic shapes
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.0, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                          weight_decay=cfg.weight_decay, fused=True)  # one fused kernel (CPU and CUDA)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.sampler = TokenBucketSampler(
            self.train_data.src_lengths, self.train_data.tgt_lengths, cfg.max_tokens, seed=cfg.seed,
            rank=self.world.rank, world_size=self.world.size, max_sentences=cfg.max_sentences,
        )

        # progress counters (all saved in the training state)
        self.step = self.epoch = self.position = 0
        self.nonfinite_total = self.nonfinite_in_a_row = 0
        self.best: float | None = None
        self.bad_validations = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        torch.manual_seed(cfg.seed + self.world.rank)  # dropout differs per rank
        if resume:
            self._restore(self._latest_complete(checkpoints))
        elif self.world.is_main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.world)
        if self.world.is_main:
            self._write_config()
        self.stop_reason: str | None = None
        self._signal = None
        self._writer = None

    # ------------------------------------------------------------ state
    def _latest_complete(self, checkpoints) -> int:
        for step, _ in reversed(checkpoints):
            if step_paths(self.run_dir, step)[1].is_file():
                return step
        raise FileNotFoundError(f"--resume: no complete checkpoint (weights + state) in {self.run_dir}/checkpoints")

    def _write_config(self) -> None:
        import yaml

        data = {"train": self.cfg.to_dict(), "model": self.model_config.to_dict(), "data": str(self.data_dir.resolve()), "vocab_sha256": self.vocab_sha, "world_size": self.world.size}
        text = yaml.safe_dump(data, sort_keys=False)
        atomic_write(self.run_dir / "config.yaml", lambda tmp: tmp.write_text(text))

    def _rng_state(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.zeros(0, dtype=torch.uint8),
            "python": random.getstate(),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        }

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and state["cuda"].numel():
            torch.cuda.set_rng_state(state["cuda"], self.device)
        random.setstate(state["python"])
        np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))

    def save(self) -> Path:
        """Write step-N.safetensors and step-N.state.pt (rank 0), then drop checkpoints beyond keep_last."""
        rng = [self._rng_state()]
        if self.world.distributed:
            gathered = [None] * self.world.size if self.world.is_main else None
            torch.distributed.gather_object(rng[0], gathered, dst=0)
            rng = gathered
        weights, state_path = step_paths(self.run_dir, self.step)
        if self.world.is_main:
            extra = {"step": self.step, "epoch": self.epoch, "data": str(self.data_dir), "precision": self.precision}
            save_model(weights, self.model, self.tokenizers, extra)
            state = {
                "step": self.step, "epoch": self.epoch, "position": self.position,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "rng": rng,
                "nonfinite_total": self.nonfinite_total, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "best": self.best, "bad_validations": self.bad_validations,
                "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                "vocab_sha256": self.vocab_sha, "world_size": self.world.size,
                "model_config": self.model_config.to_dict(),
            }
            save_training_state(state_path, state)
            for step, path in list_checkpoints(self.run_dir)[: -self.cfg.keep_last or None] if self.cfg.keep_last else []:
                for p in step_paths(self.run_dir, step):
                    p.unlink(missing_ok=True)
        distributed.barrier(self.world)
        return weights

    def _restore(self, step: int) -> None:
        weights, state_path = step_paths(self.run_dir, step)
        state = load_training_state(state_path)
        if state.get("vocab_sha256") != self.vocab_sha:
            raise CheckpointError(f"--resume: {state_path} was trained with another vocabulary than {self.data_dir}")
        if state.get("world_size") != self.world.size:
            raise CheckpointError(f"--resume: the run had {state.get('world_size')} processes, now {self.world.size}; resume with the same number")
        ckpt = read_checkpoint(weights)
        if ckpt.config != self.model_config:
            raise CheckpointError(f"--resume: {weights} has another model config than this run's; resume with the run's own config")
        load_weights(self.model, {k: v.to(self.device) for k, v in ckpt.tensors.items()}, str(weights))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for key in ("step", "epoch", "position", "nonfinite_total", "nonfinite_in_a_row", "best", "bad_validations", "tokens_seen", "train_seconds"):
            setattr(self, key, state[key])
        self._set_rng_state(state["rng"][self.world.rank])
        self.log(f"resumed from {weights} (update {self.step}, epoch {self.epoch + 1}, batch {self.position})")

    # ------------------------------------------------------------ data
    def _batches(self):
        """Training batches from the current (epoch, position), epoch after epoch."""
        meta_ids = self.meta["special_ids"]
        pad, start, eos = meta_ids["pad"], self.model_config.decoder_start_id, meta_ids["eos"]
        while not (self.cfg.max_epochs and self.epoch >= self.cfg.max_epochs):
            self.sampler.set_epoch(self.epoch, self.position)
            if self.cfg.num_workers:
                source = make_dataloader(self.train_data, self.sampler, pad, start, eos, self.cfg.num_workers, self.device.type == "cuda")
            else:
                source = (collate([self.train_data[i] for i in idx], idx, pad, start, eos) for idx in self.sampler)
            for batch in source:
                self.position += 1  # counted when consumed (prefetching workers run ahead of this)
                yield batch
            self.epoch += 1
            self.position = 0

    # ------------------------------------------------------------ one update
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def lr(self, step: int) -> float:
        c = self.cfg
        return learning_rate(step, schedule=c.lr_schedule, d_model=self.model_config.d_model, warmup_steps=c.warmup_steps, lr_scale=c.lr_scale, peak_lr=c.lr)

    def update(self, batches: list[Batch]) -> dict:
        self.loss_model.train()
        local = [sum(b.tgt_tokens for b in batches), sum(b.src_tokens for b in batches), float(self._signal is not None), float(self._time_up())]
        tgt_tokens, src_tokens, stop_signal, time_up = distributed.all_reduce_sum(local, self.world, self.device)
        if stop_signal and not self.stop_reason:
            self.stop_reason = "signal"
        if time_up and not self.stop_reason:
            self.stop_reason = "max_time"
        scale = self.world.size / tgt_tokens  # DDP averages over ranks; we want the sum over all tokens / all tokens
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        nll_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        for i, batch in enumerate(batches):
            batch = batch.to(self.device, non_blocking=True)
            last = i == len(batches) - 1
            no_sync = self.loss_model.no_sync() if self.world.distributed and not last else contextlib.nullcontext()
            with no_sync:
                with self._autocast():
                    loss, nll = self.loss_model(batch.src, batch.tgt_in, batch.tgt_out)
                loss = self._inject(loss)
                scaled = loss * scale
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
            nll_sum += nll
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        loss_sum, nll_sum, grad_norm = loss_sum.item(), nll_sum.item(), grad_norm.item()
        loss_total, nll_total, nonfinite = distributed.all_reduce_sum([loss_sum, nll_sum, float(not math.isfinite(loss_sum))], self.world, self.device)
        lr = self.lr(self.step + 1)
        skipped = nonfinite > 0 or (not math.isfinite(grad_norm) and self.scaler is None)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.update()
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            self.log(f"update {self.step + 1}: non-finite loss or gradient, update skipped ({self.nonfinite_in_a_row} in a row, {self.nonfinite_total} in all)")
            if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
                raise TrainingError(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row at update {self.step + 1}: training has diverged. "
                    f"Lower the learning rate (lr_scale / lr), raise warmup_steps, set clip_norm, or use fp32; "
                    f"then resume from the last checkpoint with --resume"
                )
            return {"skipped": True}
        self.nonfinite_in_a_row = 0
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += int(src_tokens + tgt_tokens)
        return {"loss": loss_total / tgt_tokens / math.log(2), "nll": nll_total / tgt_tokens / math.log(2), "lr": lr, "grad_norm": grad_norm,
                "tokens": src_tokens + tgt_tokens, "tgt_tokens": tgt_tokens}

    def _inject(self, loss):
        """A hook for tests (fault injection); the identity in real runs."""
        return loss

    def _time_up(self) -> bool:
        return bool(self.cfg.max_time) and (self.train_seconds + time.time() - self._session_start) >= self.cfg.max_time * 60

    # ------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Loss and perplexity on the valid set (teacher forcing), then BLEU/chrF of its translation."""
        from aiayn.decode.translate import Translator
        from aiayn.evaluate import score

        model = self.model
        model.eval()
        data = self.valid_data
        ids = self.meta["special_ids"]
        sampler = TokenBucketSampler(data.src_lengths, data.tgt_lengths, max(self.cfg.max_tokens, int(max(data.src_lengths.max(), data.tgt_lengths.max())) + 1), shuffle=False)
        loss = nll = tokens = 0.0
        for idx in sampler:
            b = collate([data[i] for i in idx], idx, ids["pad"], self.model_config.decoder_start_id, ids["eos"]).to(self.device)
            with self._autocast():
                l, n = LossModel(model, self.cfg.label_smoothing)(b.src, b.tgt_in, b.tgt_out)
            loss, nll, tokens = loss + l.item(), nll + n.item(), tokens + b.tgt_tokens
        result = {"valid_loss": loss / tokens / math.log(2), "valid_nll": nll / tokens / math.log(2)}
        result["valid_ppl"] = 2 ** result["valid_nll"]
        src_text, ref_text = data.text("src"), data.text("tgt")
        if self.cfg.valid_bleu and src_text and ref_text:
            n = self.cfg.valid_max_sentences or len(src_text)
            translator = Translator(model, *self.tokenizers, beam=self.cfg.valid_beam, device=self.device, precision=self.precision,
                                    cudnn_attention=self.cfg.cudnn_attention)
            hyps = [t.text for t in translator.translate(src_text[:n])]
            bleu, chrf = score(hyps, ref_text[:n])
            result.update(valid_bleu=bleu.score, valid_chrf=chrf.score)
        return result

    # ------------------------------------------------------------ logging
    def _record(self, entry: dict) -> None:
        if not self.world.is_main:
            return
        entry = {"step": self.step, "epoch": self.epoch + 1, "time": round(self.train_seconds + time.time() - self._session_start, 3), **entry}
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step)
            except ImportError:
                self._writer = False
        if self._writer:
            for key, value in entry.items():
                if key not in ("step", "epoch", "time", "type") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{entry.get('type', 'train')}/{key}", value, self.step)

    def _on_signal(self, signum, frame):
        if self._signal is not None:  # a second signal: stop now (checkpoints on disk stay valid)
            raise KeyboardInterrupt
        self._signal = signal.Signals(signum).name
        self.log(f"\n{self._signal}: finishing this update, saving a checkpoint, then stopping (send again to stop at once)")

    # ------------------------------------------------------------ the loop
    def train(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        self._session_start = time.time()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        quiet = not self.world.is_main or self.progress is False
        bar = tqdm(total=cfg.max_updates or None, initial=self.step, unit=" upd", dynamic_ncols=True,
                   disable=True if quiet else (None if self.progress is None else False))  # None: on a terminal only
        if self.world.is_main:
            n_params = self.model.num_parameters()
            self.log(f"training {n_params / 1e6:.1f}M parameters on {self.device} ({self.precision}, {self.world.size} process{'es' if self.world.size > 1 else ''}); "
                     f"{len(self.train_data)} pairs, ≤{cfg.max_tokens}×{cfg.update_freq}×{self.world.size} tokens per side per update; run dir {self.run_dir}")
        stream = self._batches()
        window_tokens, window_start, last_valid = 0.0, time.time(), -1
        last_saved = self.step
        try:
            while True:
                if cfg.max_updates and self.step >= cfg.max_updates:
                    self.stop_reason = self.stop_reason or "max_updates"
                if self.stop_reason:
                    break
                batches = [b for _, b in zip(range(cfg.update_freq), stream)]
                if not batches:
                    self.stop_reason = "max_epochs"
                    break
                stats = self.update(batches)
                if stats.get("skipped"):
                    continue
                window_tokens += stats["tokens"]
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    now = time.time()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0.0, now
                    entry = {"type": "train", "loss": round(stats["loss"], 4), "nll": round(stats["nll"], 4), "ppl": round(2 ** stats["nll"], 2),
                             "lr": stats["lr"], "grad_norm": round(stats["grad_norm"], 3), "tokens_per_s": round(tps, 1), "tokens_seen": self.tokens_seen,
                             "nonfinite": self.nonfinite_total}
                    self._record(entry)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}", tok_s=f"{tps:.0f}", ep=self.epoch + 1)
                    if bar.disable and self.world.is_main:
                        self.log(f"update {self.step} epoch {self.epoch + 1}: loss {stats['loss']:.3f} ppl {2 ** stats['nll']:.1f} lr {stats['lr']:.2e} {tps:.0f} tok/s")
                if cfg.validate_every and self.step % cfg.validate_every == 0 and self.valid_data is not None:
                    self._validate_and_track()
                    last_valid = self.step
                    window_start = time.time()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.train_seconds += time.time() - self._session_start
                    self._session_start = time.time()
                    self.save()
                    last_saved = self.step
                    window_start = time.time()
                if cfg.patience and self.bad_validations >= cfg.patience:
                    self.stop_reason = "patience"
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.valid_data is not None and last_valid != self.step and self.stop_reason != "signal":
            self._validate_and_track()
        self.train_seconds += time.time() - self._session_start
        self._session_start = time.time()
        if last_saved != self.step or not list_checkpoints(self.run_dir):
            self.save()
        summary = {"type": "end", "reason": self.stop_reason, "updates": self.step, "tokens_seen": self.tokens_seen, "nonfinite": self.nonfinite_total, "best": self.best}
        self._record(summary)
        if self.world.is_main:
            if self._writer:
                self._writer.close()
            try:
                from aiayn.plot import plot_run

                plot_run(self.run_dir)
            except Exception as e:  # a plot must never cost a run
                self.log(f"could not draw the training curves: {e}")
        distributed.shutdown(self.world)
        return summary

    def _validate_and_track(self) -> dict:
        result = self.validate() if self.world.is_main else {}
        distributed.barrier(self.world)
        if self.world.is_main:
            metric = result.get("valid_bleu", -result["valid_loss"])
            improved = self.best is None or metric > self.best
            if improved:
                self.best = metric
                self.bad_validations = 0
                save_model(self.run_dir / "checkpoints" / "best.safetensors", self.model, self.tokenizers, {"step": self.step, **result})
            else:
                self.bad_validations += 1
            self._record({"type": "valid", **{k: round(v, 4) for k, v in result.items()}, "best": improved})
            msg = ", ".join(f"{k[6:]} {v:.2f}" for k, v in result.items())
            self.log(f"validation at update {self.step}: {msg}{' (best)' if improved else ''}")
        if self.world.distributed:  # everyone needs the patience counter
            (self.bad_validations,) = [int(x) for x in distributed.all_reduce_sum([self.bad_validations if self.world.is_main else 0], self.world, self.device)]
        return result
