"""`aiayn train`: the paper's training recipe (§5), resumable to the bit, distributed with torchrun.

The trainer knows no task: the task (aiayn.tasks, named by the dataset) gives the model config,
the batches, the loss and the validation metric. One update: take `update_freq` batches (on
every rank), compute the task's loss, back-propagate it normalised by the number of loss tokens
in the whole update (all ranks, all batches), clip, and step Adam with the learning rate of
Eq. (3). Checkpoints hold everything needed to continue exactly where a run stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aiayn import models, runtime, tasks
from aiayn.io.checkpoint import (
    CheckpointError,
    atomic_write,
    list_checkpoints,
    load_training_state,
    load_weights,
    read_checkpoint,
    save_model,
    save_training_state,
    step_paths,
)
from aiayn.nn import Stack
from aiayn.train import distributed
from aiayn.train.config import TrainConfig
from aiayn.train.ema import EMA
from aiayn.train.schedule import BUDGETED, learning_rate


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss keeps being non-finite)."""


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        data_dir: str | Path,
        run_dir: str | Path,
        *,
        resume: bool = False,
        init_from: str | Path | None = None,
        log=print,
        progress: bool | None = None,
    ):
        self.cfg, self.data_dir, self.run_dir = cfg, Path(data_dir), Path(run_dir)
        self.log, self.progress = log, progress
        self.device = runtime.device(cfg.device)
        self.world = distributed.init(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        if cfg.lr_schedule in BUDGETED and not (cfg.max_updates or cfg.max_time):
            raise ValueError(f"lr_schedule {cfg.lr_schedule} decays over the budget: give --max-updates or --max-time")
        self.precision = runtime.resolve_precision(cfg.precision, self.device)
        if self.device.type == "cpu":
            runtime.reuse_freed_memory()
        runtime.configure_attention(self.device, cfg.cudnn_attention)

        # data: the task
        self.task = tasks.for_dataset(self.data_dir, cfg.model.get("preset"))

        # run directory
        checkpoints = list_checkpoints(self.run_dir)
        if resume and not checkpoints:
            raise FileNotFoundError(f"--resume: {self.run_dir} has no checkpoint to resume from")
        if not resume and checkpoints:
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")

        # model
        torch.manual_seed(cfg.seed)
        latest = self._latest_complete(checkpoints) if resume else None
        resumed = read_checkpoint(step_paths(self.run_dir, latest)[0]) if resume else None  # read once: config, then weights
        saved_precision = resumed.extra.get("precision") if resumed else None
        if cfg.precision == "auto" and saved_precision in ("fp32", "bf16", "fp16"):
            # auto resumes in the run's own precision (its first start may have resolved auto otherwise)
            self.precision = runtime.resolve_precision(saved_precision, self.device)
        if init_from:
            ckpt = read_checkpoint(init_from)
            self.task.check_compatible(ckpt, "--init-from")
            overrides = {k: cfg.model[k] for k in self.task.fine_tune_keys if k in cfg.model}
            self.architecture = ckpt.architecture
            self.model_config = dataclasses.replace(ckpt.config, **overrides)
            self.model = models.build(self.architecture, self.model_config)
            load_weights(self.model, ckpt.tensors, str(init_from))
        elif resume:
            self.architecture, self.model_config = self._resumed_model_config(resumed)
            self.model = models.build(self.architecture, self.model_config)
        else:
            self._check_preset_fits(cfg.model.get("preset", "base"))
            self.architecture, self.model_config = self.task.model_config(cfg.model)
            self.model = models.build(self.architecture, self.model_config)
        if cfg.lr_schedule == "paper" and not hasattr(self.model_config, "d_model"):
            raise ValueError(
                f"lr_schedule paper is defined by d_model, which a {self.architecture} model has not: use inverse_sqrt or cosine with lr"
            )
        self.model.to(self.device)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay else None  # (before compiling: it copies the model)
        self.loss_model: nn.Module = self.task.loss_model(self.model, cfg.label_smoothing)
        if self.world.distributed:
            self.loss_model = nn.parallel.DistributedDataParallel(
                self.loss_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            if getattr(self.task, "compile_whole_model", False):  # batches of one shape (images): one graph of the whole model
                self.model.compile(dynamic=False)
            else:
                compile_stacks(self.model)  # regional: one graph per kind of block, dynamic shapes
        self.optimizer = (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(
            parameter_groups(self.model, cfg.weight_decay), lr=0.0, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, fused=True
        )  # one fused kernel (CPU and CUDA)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.sampler = self.task.sampler(self.model, cfg, self.world.rank, self.world.size)

        # progress counters (all saved in the training state)
        self.step = self.epoch = self.position = 0
        self.nonfinite_total = self.nonfinite_in_a_row = 0
        self.best: float | None = None
        self.bad_validations = 0
        self.tokens_seen = 0  # every token of every batch (a translation's source and target)
        self.loss_tokens_seen = 0  # the tokens the loss is taken on (a translation's target tokens)
        self.train_seconds = 0.0
        torch.manual_seed(cfg.seed + self.world.rank)  # dropout differs per rank
        if resume:
            self._restore(latest, resumed)
        elif self.world.is_main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.world)
        if self.world.is_main:
            self._write_config()
        self.stop_reason: str | None = None
        self._signal = None
        self._writer = None

    @property
    def weights_model(self) -> nn.Module:
        """The weights a checkpoint holds and validation measures: the moving average where the run keeps one."""
        return self.ema.model if self.ema else self.model

    def _check_preset_fits(self, preset: str) -> None:
        serves = models.architecture(models.PRESETS[preset][0]).task
        if serves != self.task.name:
            fitting = [name for name, (arch, _) in models.PRESETS.items() if models.architecture(arch).task == self.task.name]
            raise ValueError(
                f"{self.data_dir} is a {self.task.name} dataset, but the model preset {preset!r} is a {serves} model; "
                f"choose one for it (--config or --model.preset: {', '.join(fitting)})"
            )

    # ------------------------------------------------------------ state
    def _last_good(self) -> str:
        done = [step for step, _ in list_checkpoints(self.run_dir) if step_paths(self.run_dir, step)[1].is_file()]
        if not done:
            return "no checkpoint of this run is complete yet"
        return f"the last good checkpoint is {step_paths(self.run_dir, done[-1])[0]} (continue with --resume once there is room)"

    def _resumed_model_config(self, ckpt):
        """The run's own model, as its latest checkpoint `ckpt` records it. A model section that asks
        for another one is refused, unless it is the one the run started with (then only a preset's
        definition changed since, and the run keeps its model)."""
        weights = ckpt.path
        if self.task.model_config(self.cfg.model)[1] != ckpt.config:
            import yaml

            saved = self.run_dir / "config.yaml"
            started_with = (yaml.safe_load(saved.read_text()) or {}).get("train", {}).get("model") if saved.is_file() else None
            if started_with != self.cfg.model:
                raise CheckpointError(f"--resume: {weights} has another model config than this run's; resume with the run's own config")
        return ckpt.architecture, ckpt.config

    def _latest_complete(self, checkpoints) -> int:
        for step, _ in reversed(checkpoints):
            if step_paths(self.run_dir, step)[1].is_file():
                return step
        raise FileNotFoundError(f"--resume: no complete checkpoint (weights + state) in {self.run_dir}/checkpoints")

    def _write_config(self) -> None:
        import yaml

        data = {
            "train": self.cfg.to_dict(),
            "architecture": self.architecture,
            "model": self.model_config.to_dict(),
            "task": self.task.name,
            "data": str(self.data_dir.resolve()),
            "vocab_sha256": self.task.vocab_id,
            "world_size": self.world.size,
        }
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
            try:
                save_model(weights, self.weights_model, self.task.assets(), extra, self.task.name)
            except CheckpointError as e:
                raise CheckpointError(f"{e}; {self._last_good()}") from e
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "position": self.position,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "rng": rng,
                "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "best": self.best,
                "bad_validations": self.bad_validations,
                "tokens_seen": self.tokens_seen,
                "loss_tokens_seen": self.loss_tokens_seen,
                "train_seconds": self.train_seconds,
                "vocab_sha256": self.task.vocab_id,
                "world_size": self.world.size,
                "model_config": self.model_config.to_dict(),
            }
            if self.ema:  # the checkpoint's weights are the average; these are the ones being trained
                state["trained_weights"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            try:
                save_training_state(state_path, state)
            except CheckpointError as e:
                weights.unlink(missing_ok=True)  # weights without their state are no checkpoint to resume from
                raise CheckpointError(f"{e}; {self._last_good()}") from e
            for step, _path in list_checkpoints(self.run_dir)[: -self.cfg.keep_last or None] if self.cfg.keep_last else []:
                for p in step_paths(self.run_dir, step):
                    p.unlink(missing_ok=True)
            self._record(
                {"type": "checkpoint", "file": weights.name, "tokens_seen": self.tokens_seen, "loss_tokens_seen": self.loss_tokens_seen}
            )
        distributed.barrier(self.world)
        return weights

    def _restore(self, step: int, ckpt) -> None:
        """Continue from the run's latest complete checkpoint (update `step`, its weights `ckpt`) and its training state."""
        weights, state_path = step_paths(self.run_dir, step)
        state = load_training_state(state_path)
        if state.get("vocab_sha256") != self.task.vocab_id:
            raise CheckpointError(f"--resume: {state_path} was trained with another vocabulary than {self.data_dir}")
        if state.get("world_size") != self.world.size:
            raise CheckpointError(
                f"--resume: the run had {state.get('world_size')} processes, now {self.world.size}; resume with the same number"
            )
        load_weights(self.weights_model, {k: v.to(self.device) for k, v in ckpt.tensors.items()}, str(weights))
        if self.ema:
            trained = state.get("trained_weights")  # (none in a run that kept no average before)
            if trained is None:
                self.model.load_state_dict(self.ema.model.state_dict())
            else:
                self.model.load_state_dict({k: v.to(self.device) for k, v in trained.items()})
        self.optimizer.load_state_dict(regroup_optimizer_state(state["optimizer"], self.model, self.cfg.weight_decay))
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for key in (
            "step",
            "epoch",
            "position",
            "nonfinite_total",
            "nonfinite_in_a_row",
            "best",
            "bad_validations",
            "tokens_seen",
            "train_seconds",
        ):
            setattr(self, key, state[key])
        self.loss_tokens_seen = state.get("loss_tokens_seen", 0)  # (not in states saved before it was counted)
        self._set_rng_state(state["rng"][self.world.rank])
        self.log(f"resumed from {weights} (update {self.step}, epoch {self.epoch + 1}, batch {self.position})")

    # ------------------------------------------------------------ data
    def _batches(self):
        """Training batches from the current (epoch, position), epoch after epoch."""
        while not (self.cfg.max_epochs and self.epoch >= self.cfg.max_epochs):
            self.sampler.set_epoch(self.epoch, self.position)
            for batch in self.task.batches(self.sampler, self.model, self.cfg.num_workers, self.device.type == "cuda"):
                self.position += 1  # counted when consumed (prefetching workers run ahead of this)
                yield batch
            self.epoch += 1
            self.position = 0

    # ------------------------------------------------------------ one update
    def lr(self, step: int) -> float:
        c = self.cfg
        return learning_rate(
            step,
            schedule=c.lr_schedule,
            d_model=getattr(self.model_config, "d_model", 0),  # the paper's schedule only (a Transformer's)
            warmup_steps=c.warmup_steps,
            lr_scale=c.lr_scale,
            peak_lr=c.lr,
            progress=self._progress(step) if c.lr_schedule in BUDGETED else 0.0,
            min_lr=c.min_lr,
            decay_fraction=c.decay_fraction,
        )

    def _progress(self, step: int) -> float:
        """How much of the budget is spent at update `step`: of max_updates, or of max_time by the
        clock, whichever is further (a schedule that ends with the budget)."""
        c, done = self.cfg, 0.0
        if c.max_updates:
            done = step / c.max_updates
        if c.max_time:
            done = max(done, self._spent() / (c.max_time * 60))
        return min(done, 1.0)

    def update(self, batches: list) -> dict:
        self.loss_model.train()
        local = [
            sum(b.loss_tokens for b in batches),
            sum(b.tokens for b in batches),
            float(self._signal is not None),
            float(self._time_up()),
        ]
        loss_tokens, tokens, stop_signal, time_up = distributed.all_reduce_sum(local, self.world, self.device)
        if stop_signal and not self.stop_reason:
            self.stop_reason = "signal"
        if time_up and not self.stop_reason:
            self.stop_reason = "max_time"
        scale = self.world.size / loss_tokens  # DDP averages over ranks; we want the sum over all tokens / all tokens
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        nll_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        for i, batch in enumerate(batches):
            batch = batch.to(self.device, non_blocking=True)
            last = i == len(batches) - 1
            no_sync = self.loss_model.no_sync() if self.world.distributed and not last else contextlib.nullcontext()
            with no_sync:
                with runtime.autocast(self.precision, self.device):
                    loss, nll = self.loss_model(*batch.inputs)
                scaled = loss * scale
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
            nll_sum += nll
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        loss_sum, nll_sum, grad_norm = loss_sum.item(), nll_sum.item(), grad_norm.item()
        loss_total, nll_total, nonfinite = distributed.all_reduce_sum(
            [loss_sum, nll_sum, float(not math.isfinite(loss_sum))], self.world, self.device
        )
        bits = math.log(2) if getattr(self.task, "loss_in_bits", True) else 1.0  # cross-entropies in bits; an MSE as it is
        lr = self.lr(self.step + 1)
        skipped = nonfinite > 0 or (not math.isfinite(grad_norm) and self.scaler is None)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.update()
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            self.log(
                f"update {self.step + 1}: non-finite loss or gradient, update skipped ({self.nonfinite_in_a_row} in a row, {self.nonfinite_total} in all)"
            )
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
        if self.ema:
            self.ema.update(self.model, self.step)
        self.tokens_seen += int(tokens)
        self.loss_tokens_seen += int(loss_tokens)
        return {
            "loss": loss_total / loss_tokens / bits,
            "nll": nll_total / loss_tokens / bits,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "loss_tokens": loss_tokens,
        }

    def _batch_size_text(self) -> str:
        """What one update takes: ≤ max_tokens tokens, or (image tasks) a fixed number of images or pairs."""
        cfg, unit = self.cfg, getattr(self.task, "unit", "tokens")
        if unit == "tokens":
            return f"≤{cfg.max_tokens}×{cfg.update_freq}×{self.world.size} tokens"
        return f"{self.sampler.batch}×{cfg.update_freq}×{self.world.size} {unit}"

    def _time_up(self) -> bool:
        return bool(self.cfg.max_time) and self._spent() >= self.cfg.max_time * 60

    def _spent(self) -> float:
        """Seconds of training so far, earlier sessions of the run included."""
        return self.train_seconds + time.time() - getattr(self, "_session_start", time.time())

    # ------------------------------------------------------------ validation
    def validate(self) -> dict:
        """The task's validation (for translation: loss, perplexity, BLEU and chrF of the valid set)."""
        return self.task.validate(self.weights_model, self.cfg, self.device, self.precision)

    # ------------------------------------------------------------ logging
    def _record(self, entry: dict) -> None:
        if not self.world.is_main:
            return
        entry = {
            "step": self.step,
            "epoch": self.epoch + 1,
            "time": round(self._spent(), 3),
            **entry,
        }
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
        by_clock = bool(cfg.max_time) and not cfg.max_updates  # a bar of the budget's minutes, with the time left
        bar = tqdm(
            total=round(cfg.max_time * 60) if by_clock else cfg.max_updates or None,
            initial=min(self.train_seconds, cfg.max_time * 60) if by_clock else self.step,
            unit="s" if by_clock else " upd",
            bar_format="{l_bar}{bar}| {remaining} left{postfix}" if by_clock else None,
            dynamic_ncols=True,
            disable=True if quiet else (None if self.progress is None else False),
        )  # None: on a terminal only
        if self.world.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            self.log(
                f"training {n_params / 1e6:.1f}M parameters on {self.device} ({self.precision}, {self.world.size} process{'es' if self.world.size > 1 else ''}); "
                f"{self.task.describe()}, {self._batch_size_text()} per update; run dir {self.run_dir}"
            )
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
                if by_clock:
                    bar.update(max(0.0, min(self._spent(), bar.total) - bar.n))
                else:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    now = time.time()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0.0, now
                    entry = {
                        "type": "train",
                        "loss": round(stats["loss"], 4),
                        "nll": round(stats["nll"], 4),
                        "lr": stats["lr"],
                        "grad_norm": round(stats["grad_norm"], 3),
                        "tokens_per_s": round(tps, 1),
                        "tokens_seen": self.tokens_seen,
                        "nonfinite": self.nonfinite_total,
                    }
                    if getattr(self.task, "loss_in_bits", True):  # a perplexity of a cross-entropy, not of an MSE
                        entry["ppl"] = round(2 ** stats["nll"], 2)
                    self._record(entry)
                    bar.set_postfix(
                        upd=self.step, loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}", tok_s=f"{tps:.0f}", ep=self.epoch + 1
                    )
                    if bar.disable and self.world.is_main:
                        unit = getattr(self.task, "unit", "tokens")
                        rate = (
                            f"ppl {2 ** stats['nll']:.1f} lr {stats['lr']:.2e} {tps:.0f} tok/s"
                            if unit == "tokens"
                            else f"lr {stats['lr']:.2e} {tps:.0f} {unit}/s"
                        )
                        self.log(f"update {self.step} epoch {self.epoch + 1}: loss {stats['loss']:.3f} {rate}")
                if cfg.validate_every and self.step % cfg.validate_every == 0 and self.task.valid_data is not None:
                    paused = time.time()
                    self._validate_and_track()
                    last_valid = self.step
                    window_start += time.time() - paused  # the window's rate counts training time alone
                if cfg.save_every and self.step % cfg.save_every == 0:
                    paused = time.time()
                    self.train_seconds += paused - self._session_start
                    self._session_start = paused
                    self.save()
                    last_saved = self.step
                    window_start += time.time() - paused
                if cfg.patience and self.bad_validations >= cfg.patience:
                    self.stop_reason = "patience"
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.task.valid_data is not None and last_valid != self.step and self.stop_reason != "signal":
            self._validate_and_track()
        self.train_seconds += time.time() - self._session_start
        self._session_start = time.time()
        if last_saved != self.step or not list_checkpoints(self.run_dir):
            self.save()
        summary = {
            "type": "end",
            "reason": self.stop_reason,
            "updates": self.step,
            "tokens_seen": self.tokens_seen,
            "loss_tokens_seen": self.loss_tokens_seen,
            "nonfinite": self.nonfinite_total,
            "best": self.best,
        }
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
            metric = result[self.task.metric_name] if self.task.metric_name in result else -result["valid_loss"]
            improved = self.best is None or metric > self.best
            if improved:
                self.best = metric
                self.bad_validations = 0
                save_model(
                    self.run_dir / "checkpoints" / "best.safetensors",
                    self.weights_model,
                    self.task.assets(),
                    {"step": self.step, **result},
                    self.task.name,
                )
            else:
                self.bad_validations += 1
            self._record({"type": "valid", **{k: round(v, 4) for k, v in result.items()}, "best": improved})
            msg = ", ".join(f"{k[6:]} {v:.2f}" for k, v in result.items())
            self.log(f"validation at update {self.step}: {msg}{' (best)' if improved else ''}")
        if self.world.distributed:  # everyone needs the patience counter
            (self.bad_validations,) = [
                int(x) for x in distributed.all_reduce_sum([self.bad_validations if self.world.is_main else 0], self.world, self.device)
            ]
        return result


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups: with weight decay, only matrices and embeddings decay (2-D and
    up); biases, norm gains, LayerScale and CLIP's temperature (vectors and scalars) do not (nanoGPT,
    timm, open_clip). Without weight decay, one group."""
    params = list(model.parameters())
    if not weight_decay:
        return [{"params": params, "weight_decay": 0.0}]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def regroup_optimizer_state(saved: dict, model: nn.Module, weight_decay: float) -> dict:
    """An optimizer state saved with all parameters in one group (runs before parameter_groups split
    them) put into the groups of `parameter_groups`, so such a run resumes where it stopped."""
    groups = parameter_groups(model, weight_decay)
    if len(saved["param_groups"]) == len(groups):
        return saved
    position = {id(p): i for i, p in enumerate(model.parameters())}  # the old single group's order
    order = [position[id(p)] for g in groups for p in g["params"]]
    state = {new: saved["state"][old] for new, old in enumerate(order) if old in saved["state"]}
    old_group = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    param_groups, start = [], 0
    for g in groups:
        n = len(g["params"])
        param_groups.append({**old_group, "weight_decay": g["weight_decay"], "params": list(range(start, start + n))})
        start += n
    return {"state": state, "param_groups": param_groups}


def compile_stacks(model: nn.Module) -> None:
    """Compile every block of every Stack in the model (Stack.compile_blocks), for training."""
    for module in model.modules():
        if isinstance(module, Stack):
            module.compile_blocks()
