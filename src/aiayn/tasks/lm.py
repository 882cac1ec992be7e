"""Language modelling (GPT): a token stream cut into contiguous context windows at random
offsets, the next-token loss at every position, validation by loss, perplexity and bits per
character, and the vocabulary that travels with the model as its asset."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from aiayn import models, runtime
from aiayn.data.binarize import load_meta
from aiayn.data.text import TokenStream, lm_tokenizer_assets, load_lm_tokenizer
from aiayn.train.loss import projected_label_smoothed_nll


@dataclass
class WindowBatch:
    """B windows of the stream: inputs [B, T] and the tokens that follow each, targets [B, T]."""

    inputs_: Tensor
    targets: Tensor

    def to(self, device, non_blocking: bool = False) -> "WindowBatch":
        return WindowBatch(self.inputs_.to(device, non_blocking=non_blocking), self.targets.to(device, non_blocking=non_blocking))

    @property
    def inputs(self) -> tuple[Tensor, Tensor]:
        return self.inputs_, self.targets

    @property
    def loss_tokens(self) -> int:
        return self.targets.numel()

    @property
    def tokens(self) -> int:
        return self.inputs_.numel()


class WindowSampler:
    """Which windows of `context` + 1 tokens each batch holds. Epoch e cuts the stream at a random
    phase (seeded by seed and e) into consecutive windows and visits them in a seeded random order:
    every token once per epoch, at different window boundaries each epoch. Deterministic from
    (seed, epoch, position), so a resumed run sees exactly the batches it would have seen. Under
    DDP each rank takes its own share of every batch-sized group of windows."""

    def __init__(self, n_tokens: int, context: int, batch_windows: int, seed: int = 1, rank: int = 0, world_size: int = 1):
        if n_tokens < context + 2:
            raise ValueError(f"the training text has {n_tokens} tokens, fewer than one window of {context + 1}; use a smaller context")
        self.n_tokens, self.context, self.batch = n_tokens, context, batch_windows
        self.seed, self.rank, self.world = seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.start = epoch, position

    def _starts(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        phase = int(rng.integers(self.context))
        n = (self.n_tokens - 1 - phase) // self.context
        starts = phase + self.context * np.arange(n)
        return starts[rng.permutation(n)]

    def __len__(self) -> int:
        return len(self._starts()) // (self.batch * self.world)

    def __iter__(self):
        starts = self._starts()
        step = self.batch * self.world
        for i in range(self.start, len(starts) // step):
            group = starts[i * step : (i + 1) * step]
            yield group[self.rank * self.batch : (self.rank + 1) * self.batch]


def windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> tuple[Tensor, Tensor]:
    rows = np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in starts])
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]


class LossModel(nn.Module):
    """The language model with its loss attached, so DDP sees one forward."""

    def __init__(self, model: nn.Module, label_smoothing: float):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        hidden, _ = self.model.hidden(inputs)
        hidden = hidden.reshape(-1, hidden.size(-1))
        return projected_label_smoothed_nll(hidden, *self.model.output_projection(), targets.reshape(-1), self.label_smoothing)


class LanguageModelTask:
    """A dataset from 'aiayn prepare --task lm' and what training needs of it."""

    name = "lm"
    metric_name = None  # the best checkpoint has the lowest valid loss
    fine_tune_keys = ("dropout", "attn_dropout")

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir)
        self.tokenizer = load_lm_tokenizer(self.data_dir, self.meta)
        self.vocab_id = self.tokenizer.sha256
        self.train_data = TokenStream(self.data_dir, "train")
        self.valid_data = TokenStream(self.data_dir, "valid") if "valid" in self.meta["splits"] else None
        self.context = 0  # set with the model's

    def describe(self) -> str:
        return f"{len(self.train_data)} tokens in windows of {self.context}"

    # ----- the model
    def model_config(self, values: dict):
        values = dict(values)
        preset = values.pop("preset", "gpt-tiny")
        ids = self.meta["special_ids"]
        return models.preset_config(
            preset, vocab_size=self.meta["vocab"]["size"], eos_id=ids["eos"], bos_id=ids["eos"], pad_id=ids["pad"], **values
        )

    def check_compatible(self, ckpt, what: str) -> None:
        from aiayn.data.text import lm_tokenizer_from_assets
        from aiayn.io.checkpoint import CheckpointError

        if ckpt.task != self.name or lm_tokenizer_from_assets(ckpt.assets, str(ckpt.path)).sha256 != self.vocab_id:
            raise CheckpointError(
                f"{what} {ckpt.path}: its vocabulary differs from the dataset's ({self.data_dir}); "
                f"prepare the text with that model's vocabulary ('aiayn prepare --task lm --vocab-from {ckpt.path} ...')"
            )

    def assets(self) -> dict[str, str]:
        return lm_tokenizer_assets(self.tokenizer)

    # ----- batches: max_tokens is tokens per batch, in windows of the model's context
    def sampler(self, model: nn.Module, cfg, rank: int = 0, world_size: int = 1) -> WindowSampler:
        self.context = model.config.context
        batch = max(1, cfg.max_tokens // self.context)
        return WindowSampler(len(self.train_data), self.context, batch, cfg.seed, rank, world_size)

    def batches(self, sampler: WindowSampler, model: nn.Module, num_workers: int = 0, pin_memory: bool = False):
        tokens = self.train_data.tokens
        return (WindowBatch(*windows(tokens, starts, sampler.context)) for starts in sampler)

    def loss_model(self, model: nn.Module, label_smoothing: float) -> nn.Module:
        return LossModel(model, label_smoothing)

    # ----- validation
    @torch.no_grad()
    def validate(self, model: nn.Module, cfg, where: torch.device, precision: str) -> dict:
        return evaluate_stream(
            model, self.valid_data.tokens, where, precision, cfg.max_tokens, self.valid_data.characters, cfg.label_smoothing
        )


@torch.no_grad()
def evaluate_stream(
    model, tokens: np.ndarray, where, precision: str = "fp32", max_tokens: int = 8192, characters: int = 0, label_smoothing: float = 0.0
) -> dict:
    """Loss and perplexity of a token stream, in consecutive windows of the model's context: every
    token after the first is predicted once. Losses in bits; bits per character where the text's
    length in characters is known (comparable across vocabularies)."""
    model.eval()
    T = model.config.context
    n = len(tokens) - 1
    if n < 1:
        raise ValueError("the text has fewer than two tokens: nothing to predict")
    starts = np.arange(0, n, T)
    per_batch = max(1, max_tokens // T)
    loss = nll = 0.0
    loss_model = LossModel(model, label_smoothing)
    for i in range(0, len(starts), per_batch):
        group = starts[i : i + per_batch]
        full = [s for s in group if s + T <= n]
        parts = [full] if full else []
        parts += [[s] for s in group if s + T > n]  # the last, shorter window alone
        for part in parts:
            length = min(T, n - part[0])
            x, y = windows(tokens, np.asarray(part), length)
            with runtime.autocast(precision, where):
                total, total_nll = loss_model(x.to(where), y.to(where))
            loss, nll = loss + total.item(), nll + total_nll.item()
    result = {"valid_loss": loss / n / math.log(2), "valid_nll": nll / n / math.log(2)}
    result["valid_ppl"] = 2 ** result["valid_nll"]
    if characters:
        result["valid_bpc"] = nll / math.log(2) / characters
    return result
