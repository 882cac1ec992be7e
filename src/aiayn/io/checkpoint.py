"""Checkpoints: weights in safetensors, everything needed to resume in a separate state file.

A weights file (`*.safetensors`) is self-contained. Its metadata names the model's architecture
(models.ARCHITECTURES) and config, the task it was trained for, and the task's assets (for
translation: the sentencepiece model(s)), so `translate`, `serve` and `export` need nothing else
and a model can never meet the wrong vocabulary. Files of the first format, `aiayn-transformer/1`
(an encoder-decoder and its tokenizers), still load. Training state (`*.state.pt`: optimizer,
step, sampler position, RNG states) is loaded with `torch.load(weights_only=True)`. Every file is
written to a temporary name in the same directory, then renamed: a crash or a full disk never
leaves a half-written checkpoint under a real name.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from aiayn import __version__, models

FORMAT = "aiayn/2"
FORMAT_1 = "aiayn-transformer/1"  # architecture "transformer", task "translation"; assets at the metadata's top level
ASSET_KEYS_1 = ("spm_src", "spm_tgt", "vocab_src", "vocab_tgt")
STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with what is wrong with it."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """write(tmp_path), fsync, then rename to path. On failure (e.g. disk full) the temporary file
    is removed, any previous file at path is untouched, and CheckpointError says what happened."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if not path.parent.is_dir():
            raise CheckpointError(f"could not write {path}: the directory {path.parent} does not exist") from e
        # whatever library raised it (OSError, safetensors' SafetensorError, torch's "unexpected pos ..."):
        # say what happened, whether the disk is full, and that the file under the real name is untouched
        hint = " (is the disk full?)" if disk_full(e, path.parent) else ""
        raise CheckpointError(f"could not write {path}: {cause_of(e)}{hint}; the previous checkpoint is intact") from e


def disk_full(error: BaseException, directory: Path | None = None) -> bool:
    """Whether a failed write failed for want of space, whatever library raised it (an OSError with
    ENOSPC/EDQUOT, safetensors' and torch's own errors that say so, or a directory now nearly full)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left" in str(error) or (directory is not None and _nearly_full(directory))


def cause_of(error: BaseException) -> str:
    """A failed write's cause in a few words: the OS's, else the library's message."""
    return (error.strerror if isinstance(error, OSError) and error.strerror else str(error)) or type(error).__name__


def _nearly_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < (16 << 20)
    except OSError:
        return False


# ---------------------------------------------------------------- weights
def unique_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """The state dict without aliases (tied embeddings appear once, under their first name)."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.stride()) if tensor.numel() else (name,)
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def load_weights(model: torch.nn.Module, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load tensors into model; keys may be missing only where the model ties them to a present one."""
    expected = unique_tensors(model)
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit this model: missing {sorted(missing)[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {sorted(unexpected)[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    own = model.state_dict()
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}")
    model.load_state_dict(tensors, strict=False)


def save_model(
    path: str | Path, model: torch.nn.Module, assets: dict[str, str], extra: dict | None = None, task: str | None = None
) -> None:
    """Write weights + architecture + config + the task's assets (strings) to one safetensors file, atomically."""
    from safetensors.torch import save_file

    from aiayn.nn.int8 import is_int8

    arch = models.architecture_of(model)
    extra = dict(extra or {})
    if is_int8(model):
        extra["weights"] = "int8"
    metadata = {
        "format": FORMAT,
        "aiayn_version": __version__,
        "architecture": arch.name,
        "config": json.dumps(model.config.to_dict()),
        "task": task or arch.task,
        "assets": json.dumps(assets),
        "extra": json.dumps(extra),
    }
    tensors = unique_tensors(model)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


@dataclass
class Checkpoint:
    path: Path
    architecture: str
    config: object  # the architecture's config dataclass
    tensors: dict[str, Tensor]
    task: str
    assets: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def build(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        model = models.build(self.architecture, self.config)
        if self.extra.get("weights") == "int8":  # written by `aiayn export --format int8`: the projections are int8
            from aiayn.nn.int8 import quantize_int8

            if torch.device(device).type != "cpu":
                raise CheckpointError(f"{self.path} holds int8 weights, which run on the CPU only (use --device cpu)")
            quantize_int8(model)
        load_weights(model, self.tensors, str(self.path))
        return model.to(device).eval()

    @functools.cached_property
    def tokenizers(self):
        """(source, target) tokenizers of a translation checkpoint."""
        from aiayn.tasks.translation import tokenizers_from_assets

        if self.task != "translation":
            raise CheckpointError(f"{self.path} is a {self.task} model, not a translation model")
        return tokenizers_from_assets(self.assets, str(self.path))

    @functools.cached_property
    def tokenizer(self):
        """The vocabulary of a language model (a sentencepiece, character or Hugging Face tokenizer)."""
        from aiayn.data.text import lm_tokenizer_from_assets

        if self.task != "lm":
            raise CheckpointError(f"{self.path} is a {self.task} model, not a language model")
        return lm_tokenizer_from_assets(self.assets, str(self.path))

    @property
    def src_tokenizer(self):
        return self.tokenizers[0]

    @property
    def tgt_tokenizer(self):
        return self.tokenizers[1]


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged files
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} ({size} bytes) is not a readable safetensors file: it is truncated, damaged or of another format ({e})"
        ) from None
    if metadata.get("format") not in (FORMAT, FORMAT_1):
        hint = " (a Hugging Face model? convert it with 'aiayn import-hf')" if "format" in metadata and metadata["format"] == "pt" else ""
        raise CheckpointError(f"{path} is not an aiayn checkpoint: its metadata has no '{FORMAT}' format tag{hint}")
    return metadata


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a weights file with clear errors for a missing, truncated, damaged or foreign file."""
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path} is damaged: {e}") from None
    try:
        if metadata["format"] == FORMAT_1:
            arch, task, config = "transformer", "translation", json.loads(metadata["model_config"])
            assets = {k: metadata[k] for k in ASSET_KEYS_1 if metadata.get(k)}
        else:
            arch, task, config = metadata["architecture"], metadata["task"], json.loads(metadata["config"])
            assets = json.loads(metadata["assets"])
        config = models.architecture(arch).config.from_dict(config)
        extra = json.loads(metadata.get("extra") or "{}")
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged aiayn metadata ({e})") from None
    ckpt = Checkpoint(path, arch, config, tensors, task, assets, extra)
    if task == "translation":
        ckpt.tokenizers  # decoded now, so that damaged assets are refused with the file's name  # noqa: B018
    elif task == "lm":
        ckpt.tokenizer  # noqa: B018
    return ckpt


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, task: str | None = None, what: str = ""
) -> tuple[torch.nn.Module, Checkpoint]:
    """A ready model (eval mode) from a weights file or a run directory. task: refuse a checkpoint of
    any other task, before its weights are built, saying it is not `what` (e.g. "an image classifier")."""
    ckpt = read_checkpoint(resolve_model_path(path))
    if task is not None and ckpt.task != task:
        raise ValueError(f"{ckpt.path} is a {ckpt.task} model, not {what or f'a {task!r} model'}")
    return ckpt.build(device), ckpt


# ---------------------------------------------------------------- training state
def save_training_state(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable training state (truncated or foreign?): {e}") from None


# ---------------------------------------------------------------- run directories
def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(update number, weights file) of the step checkpoints in a run directory, oldest first."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    found = []
    for p in ckpt_dir.glob("step-*.safetensors") if ckpt_dir.is_dir() else []:
        m = STEP_FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def step_paths(run_dir: str | Path, step: int) -> tuple[Path, Path]:
    ckpt_dir = Path(run_dir) / "checkpoints"
    return ckpt_dir / f"step-{step:08d}.safetensors", ckpt_dir / f"step-{step:08d}.state.pt"


def resolve_model_path(path: str | Path) -> Path:
    """A weights file as given, or for a directory: averaged.safetensors, else best, else the latest step
    (a run directory), else model.safetensors (a model directory, e.g. from 'aiayn import-hf')."""
    path = Path(path)
    if path.is_dir():
        for name in ("averaged.safetensors", "checkpoints/best.safetensors"):
            if (path / name).is_file():
                return path / name
        steps = list_checkpoints(path)
        if not steps and (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        if not steps:
            raise FileNotFoundError(
                f"{path} holds no checkpoint (no averaged.safetensors, checkpoints/best.safetensors, checkpoints/step-*.safetensors or model.safetensors)"
            )
        return steps[-1][1]
    return path


def average_checkpoints(paths: list[str | Path], out: str | Path) -> None:
    """§6.1: "a single model obtained by averaging the last 5 checkpoints": the element-wise mean
    of the weights (accumulated in float64), with the config and assets of the last one."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = read_checkpoint(paths[-1])
    if first.extra.get("weights") == "int8":
        raise CheckpointError(f"{paths[-1]} holds int8 weights: average the float checkpoints, then quantize")
    total = {k: v.double() for k, v in first.tensors.items()}
    for p in paths[:-1]:
        ckpt = read_checkpoint(p)
        if (ckpt.architecture, ckpt.config, ckpt.assets) != (first.architecture, first.config, first.assets):
            raise CheckpointError(
                f"{p} has another model config or vocabulary than {paths[-1]}; only checkpoints of one run can be averaged"
            )
        if set(ckpt.tensors) != set(total) or ckpt.extra.get("weights") == "int8":
            raise CheckpointError(f"{p} holds other tensors than {paths[-1]}")
        for k, v in ckpt.tensors.items():
            total[k] += v.double()
    model = models.build(first.architecture, first.config)
    load_weights(model, {k: (v / len(paths)).to(first.tensors[k].dtype) for k, v in total.items()}, str(paths[-1]))
    extra = {**first.extra, "averaged": [str(p) for p in paths]}
    save_model(out, model, first.assets, extra, first.task)


def export_int8(model_path: str | Path, out: str | Path, force: bool = False) -> Path:
    """`aiayn export MODEL --format int8 --out DIR`: DIR/model.safetensors with every projection
    int8 per output channel (nn.int8), ~4× smaller for those weights; the tokenizers and config
    are the model's own. `translate`, `generate`, `classify` and `serve` decode it in int8."""
    from aiayn.interop import export_directory
    from aiayn.nn.int8 import quantize_int8

    source = resolve_model_path(model_path)
    ckpt = read_checkpoint(source)
    if ckpt.extra.get("weights") == "int8":
        raise CheckpointError(f"{source} is already int8")
    model = quantize_int8(ckpt.build("cpu"))
    with export_directory(out, force, source) as tmp:
        save_model(tmp / "model.safetensors", model, ckpt.assets, {**ckpt.extra, "quantized_from": str(source)}, ckpt.task)
    return Path(out).resolve()
