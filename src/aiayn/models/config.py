"""What every model config shares: building one from a named preset (models/presets.py), to and
from a dict (checkpoints), and the divisibility check of d_model by n_heads."""

from __future__ import annotations

import dataclasses


class ModelConfig:
    """Mixed into each architecture's config dataclass; ARCHITECTURE names its entries in PRESETS."""

    ARCHITECTURE = ""

    @classmethod
    def preset(cls, name: str, **overrides):
        """A named configuration (models/presets.py) with overrides; `vocab_size=` sets both vocabularies of an encoder-decoder."""
        from aiayn.models.presets import PRESETS

        if name not in PRESETS or PRESETS[name][0] != cls.ARCHITECTURE:
            names = [n for n, (arch, _) in PRESETS.items() if arch == cls.ARCHITECTURE]
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(names)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        if "vocab_size" in overrides and "vocab_size" not in fields:  # an encoder-decoder: both vocabularies
            vocab = overrides.pop("vocab_size")
            overrides = {"src_vocab_size": vocab, "tgt_vocab_size": vocab, **overrides}
        return cls(**{**PRESETS[name][1], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def check(cls, values: dict, where: str = "") -> None:  # each config adds its own rules
        check_heads(values, where)

    @classmethod
    def from_dict(cls, values: dict):
        cls.check(values)
        return cls(**values)


def check_heads(values: dict, where: str = "") -> None:
    if "d_model" in values and "n_heads" in values and values["d_model"] % values["n_heads"]:
        raise ValueError(f"{where}d_model={values['d_model']} is not divisible by {where}n_heads={values['n_heads']}")
