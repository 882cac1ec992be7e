"""The models of the family, each a short assembly of the block set (aiayn.nn), and one registry.

`ARCHITECTURES` maps an architecture's name (as checkpoints record it) to its config class and
model class; `presets.PRESETS` names every model shape. A new model registers here and the
checkpoint format, `aiayn train --config PRESET` and the parametrized model tests pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from aiayn.models.clip import CLIP, CLIPConfig
from aiayn.models.dit import DiT, DiTConfig
from aiayn.models.gpt import GPT, GPTConfig, GPTState
from aiayn.models.presets import PRESETS
from aiayn.models.rnnsearch import RNNSearch, RNNSearchConfig, RNNState
from aiayn.models.seq2seq import EncoderOut, Seq2SeqState, Transformer, TransformerConfig
from aiayn.models.vit import ViT, ViTConfig, attention_rollout


@dataclass(frozen=True)
class Architecture:
    name: str
    config: type  # a dataclass with to_dict() / from_dict() / preset()
    model: type  # an nn.Module built from one config
    task: str  # the task it serves by default


ARCHITECTURES: dict[str, Architecture] = {
    "transformer": Architecture("transformer", TransformerConfig, Transformer, "translation"),
    "gpt": Architecture("gpt", GPTConfig, GPT, "lm"),
    "vit": Architecture("vit", ViTConfig, ViT, "images"),
    "rnnsearch": Architecture("rnnsearch", RNNSearchConfig, RNNSearch, "translation"),
    "clip": Architecture("clip", CLIPConfig, CLIP, "image-text"),
    "dit": Architecture("dit", DiTConfig, DiT, "image-generation"),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (one of {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def architecture_of(model: nn.Module) -> Architecture:
    """The registered architecture of a model (by its class)."""
    for arch in ARCHITECTURES.values():
        if type(model) is arch.model:
            return arch
    raise ValueError(f"{type(model).__name__} is not a registered architecture")


def build(name: str, config) -> nn.Module:
    """A model of architecture `name` from its config (a config object or its dict)."""
    arch = architecture(name)
    if isinstance(config, dict):
        config = arch.config.from_dict(config)
    return arch.model(config)


def preset_config(name: str, **overrides):
    """(architecture name, config) of a named preset with overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    arch_name = PRESETS[name][0]
    return arch_name, architecture(arch_name).config.preset(name, **overrides)


__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "Architecture",
    "CLIP",
    "CLIPConfig",
    "DiT",
    "DiTConfig",
    "EncoderOut",
    "GPT",
    "GPTConfig",
    "GPTState",
    "RNNSearch",
    "RNNSearchConfig",
    "RNNState",
    "Seq2SeqState",
    "Transformer",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "attention_rollout",
    "architecture",
    "architecture_of",
    "build",
    "preset_config",
]
