"""Training configuration: a dataclass, filled from a named config (configs/*.yaml), a YAML file of
one's own, and `--key value` overrides (`--model.dropout 0.2` reaches into the model section)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from aiayn import schema


@dataclass
class TrainConfig:
    # the model: a preset (models/presets.py, listed at the end of 'aiayn train --help-config') and overrides of its fields
    model: dict = field(default_factory=lambda: {"preset": "base"})
    # §5.1 batching: padded tokens per side per batch; update_freq batches make one update
    max_tokens: int = 4096
    update_freq: int = 1
    max_sentences: int = 0  # cap on sentences per batch (0: none)
    # §5.3 optimizer: Adam, β1 = 0.9, β2 = 0.98, ε = 1e-9, and the schedule of Eq. (3)
    adam_betas: tuple = (0.9, 0.98)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam (the paper's; weight_decay is an L2 term) | adamw (decoupled weight decay, Loshchilov & Hutter)
    lr_schedule: str = "paper"  # paper: d_model^-0.5·min(step^-0.5, step·warmup^-1.5)·lr_scale | inverse_sqrt: peak lr | cosine | linear (both end at min_lr with the budget)
    lr_scale: float = 1.0
    lr: float = 0.0  # peak learning rate, for lr_schedule=inverse_sqrt, cosine and linear
    min_lr: float = 0.0  # where cosine and linear end, at the end of the budget (max_updates or max_time)
    decay_fraction: float = 1.0  # cosine/linear decay over this last share of the budget, at the peak before it
    warmup_steps: int = 4000
    clip_norm: float = 0.0  # gradient clipping by global norm (0: off)
    # §5.4 regularization (dropout lives in the model section)
    label_smoothing: float = 0.1
    # image classification: zero padding (pixels) around each training image before its random crop
    # back to size (-1: a seventh of the height, 4 pixels of a 28-pixel image; 0: no crop)
    crop_padding: int = -1
    # image tasks: mirror a random half of the training images (null: where the dataset allows it, prepare's
    # `flip`). A generator learns the mirrored images too (Fashion-MNIST's shoes all face left; a DiT trained
    # on mirrored ones draws about half of them facing right)
    random_flip: bool | None = None
    # an exponential moving average of the weights (train/ema.py): its decay, 0 for none; when kept,
    # checkpoints hold the average (what sampling and validation use), the training state the weights
    ema_decay: float = 0.0
    # stopping
    max_updates: int = 0  # 0: no limit
    max_epochs: int = 0
    max_time: float = 0.0  # minutes of wall-clock time
    # checkpoints and validation
    save_every: int = 1000  # updates
    keep_last: int = 5
    validate_every: int = 1000  # updates (0: only at the end)
    valid_bleu: bool = True  # also decode the valid set and score it with sacreBLEU
    valid_beam: int = 1  # 1: greedy
    valid_max_sentences: int = 0  # decode at most this many valid sentences for BLEU (0: all)
    patience: int = 0  # stop after this many validations without improvement (0: never)
    # machinery
    seed: int = 1
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with bf16 units, else fp32) | fp32 | bf16 | fp16 (CUDA, with a grad scaler)
    compile: bool = False  # torch.compile each encoder/decoder layer (Stack.compile_blocks); a DiT whole (its batches keep one shape)
    device: str = "auto"  # auto | cpu | cuda
    cudnn_attention: bool = False  # allow cuDNN's attention kernel on CUDA (it builds a plan per batch shape: slow here)
    threads: int = 0  # CPU threads for torch (0: torch's default)
    num_workers: int = 0  # DataLoader worker processes
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    log_every: int = 50  # updates between log lines
    deterministic: bool = False  # deterministic kernels (bit-exact resume on CPU is the default anyway)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a dict, every key checked for its type and range (see RULES) before any work."""
        schema.check_keys(cls, values, what="training config", hint=" (see 'aiayn train --help-config')")
        floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
        values = {  # null means the default (as it always has: "off", "auto"); 1e-3 is a number (YAML 1.1 reads it as text)
            k: (_as_float(v) if k in floats else v) for k, v in values.items() if v is not None
        }
        schema.check(cls, values, rules=RULES, what="training config")
        if "adam_betas" in values:
            betas = values["adam_betas"]
            if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
                raise ValueError(f"adam_betas: expected two numbers in [0, 1), got {betas!r}")
            values["adam_betas"] = tuple(betas)
        check_model_section(values.get("model", {"preset": "base"}))
        return cls(**values)


def _as_float(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_model_section(values) -> None:
    """The `model` section: a preset name and fields of that preset's config, checked against it."""
    from aiayn import models

    if not isinstance(values, dict):
        raise ValueError(f"model: expected a mapping (e.g. {{preset: tiny, dropout: 0.2}}), got {values!r}")
    values = dict(values)
    preset = values.pop("preset", "base")
    if preset not in models.PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; choose one of {', '.join(models.PRESETS)}")
    arch, defaults = models.PRESETS[preset]
    models.architecture(arch).config.check(values, where="model.")
    d_model, n_heads = values.get("d_model", defaults.get("d_model")), values.get("n_heads", defaults.get("n_heads"))
    if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 and d_model % n_heads:
        raise ValueError(f"model: d_model={d_model} is not divisible by n_heads={n_heads}")


S = schema
RULES = {
    "max_tokens": S.AT_LEAST_1,
    "update_freq": S.AT_LEAST_1,
    "max_sentences": S.AT_LEAST_0,
    "adam_eps": S.POSITIVE,
    "weight_decay": S.AT_LEAST_0,
    "optimizer": S.Rule(choices=("adam", "adamw")),
    "lr_schedule": S.Rule(choices=("paper", "inverse_sqrt", "cosine", "linear")),
    "min_lr": S.AT_LEAST_0,
    "decay_fraction": S.Rule(low=0, high=1, open_low=True),
    "lr_scale": S.POSITIVE,
    "lr": S.AT_LEAST_0,
    "warmup_steps": S.AT_LEAST_1,
    "clip_norm": S.AT_LEAST_0,
    "label_smoothing": S.PROBABILITY,
    "ema_decay": S.PROBABILITY,
    "crop_padding": S.Rule(low=-1),
    "max_updates": S.AT_LEAST_0,
    "max_epochs": S.AT_LEAST_0,
    "max_time": S.AT_LEAST_0,
    "save_every": S.AT_LEAST_0,
    "keep_last": S.AT_LEAST_0,
    "validate_every": S.AT_LEAST_0,
    "valid_beam": S.AT_LEAST_1,
    "valid_max_sentences": S.AT_LEAST_0,
    "patience": S.AT_LEAST_0,
    "precision": S.Rule(choices=("auto", "fp32", "bf16", "fp16")),
    "seed": S.AT_LEAST_0,
    "threads": S.AT_LEAST_0,
    "num_workers": S.AT_LEAST_0,
    "max_nonfinite": S.AT_LEAST_1,
    "log_every": S.AT_LEAST_1,
}


def named_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("aiayn").joinpath("configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        text = path.read_text()
    else:
        source = resources.files("aiayn").joinpath("configs", f"{name_or_path}.yaml")
        if not source.is_file():
            raise ValueError(f"unknown config {name_or_path!r}: use one of {', '.join(named_configs())} or a YAML file")
        text = source.read_text()
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{name_or_path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{name_or_path}: a config is a YAML mapping of keys to values")
    return values


def _parse_value(text: str):
    value = yaml.safe_load(text)
    return text if value is None and text not in ("null", "~") else value


def parse_overrides(args: list[str]) -> dict:
    """['--max-tokens', '2048', '--model.dropout', '0.2'] -> {'max_tokens': 2048, 'model': {'dropout': 0.2}}"""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ValueError(f"expected --key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"{arg} needs a value")
            text = args[i + 1]
            i += 2
        path = key.replace("-", "_").split(".")
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = _parse_value(text)
    return out


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(name_or_path: str, overrides: dict | None = None) -> TrainConfig:
    """A named config or YAML file, its `budgets` entry for the run's max_time, then the overrides."""
    values, budgets = _read_with_budgets(name_or_path)
    overrides = overrides or {}
    entry = dict(budget_for(budgets, merge(values, overrides).get("max_time") or 0))
    entry.pop("minutes", None)
    return TrainConfig.from_dict(merge(merge(values, entry), overrides))


def config_budget(name_or_path: str, minutes: float) -> dict:
    """The `budgets` entry a run of this config with max_time=minutes takes ({} for none), its minutes included."""
    return budget_for(_read_with_budgets(name_or_path)[1], minutes)


def _read_with_budgets(name_or_path: str) -> tuple[dict, list[dict]]:
    values = _read_yaml(name_or_path)
    return values, _check_budgets(values.pop("budgets", None), values, where=name_or_path)


def budget_for(budgets: list[dict], minutes: float) -> dict:
    """A recipe for a budget (Li, Yumer & Ramanan 2020): a config's `budgets` list holds entries
    {minutes: M, key: value, ...}; the one with the largest M at or under a run's max_time applies
    over the rest of the config (and the command line over both). None applies without max_time."""
    fitting = [b for b in budgets if minutes and b["minutes"] <= minutes]
    return max(fitting, key=lambda b: b["minutes"]) if fitting else {}


def _check_budgets(budgets, values: dict, where: str) -> list[dict]:
    if budgets is None:
        return []
    if not isinstance(budgets, list):
        raise ValueError(f"{where}: budgets: expected a list of {{minutes: M, key: value, ...}}, got {budgets!r}")
    for i, entry in enumerate(budgets):
        minutes = entry.get("minutes") if isinstance(entry, dict) else None
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
            raise ValueError(f"{where}: budgets[{i}]: expected a mapping with minutes > 0 and the keys it sets, got {entry!r}")
        rest = {k: v for k, v in entry.items() if k != "minutes"}
        for key in ("max_time", "budgets"):
            if key in rest:
                raise ValueError(f"{where}: budgets[{i}] may not set {key}")
        try:
            TrainConfig.from_dict(merge(values, rest))
        except ValueError as e:
            raise ValueError(f"{where}: budgets[{i}] (from {minutes:g} minutes): {e}") from None
    if len({b["minutes"] for b in budgets}) < len(budgets):
        raise ValueError(f"{where}: budgets: two entries for the same minutes")
    return budgets
