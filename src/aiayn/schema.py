"""Values checked where they come in: command-line options and config keys, typed and range-checked
before any work, so that a bad value fails with one line naming the option and what it accepts.

`check(cls, values, where, rules)` checks a dict meant for a config dataclass: unknown keys, the
type of each value (from the dataclass's annotations), and the rules of the fields that have one.
The argparse types below do the same for options.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """What a field accepts beyond its type: a range (inclusive bounds unless `open_low`/`open_high`) or choices."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '≥'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '≤'} {self.high:g}")
        return " and ".join(parts)

    def accepts(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))


AT_LEAST_0 = Rule(low=0)
AT_LEAST_1 = Rule(low=1)
PROBABILITY = Rule(low=0, high=1, open_high=True)  # a dropout rate, label smoothing
POSITIVE = Rule(low=0, open_low=True)

_TYPES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "tuple": (list, tuple),
    "dict": (dict,),
    "list": (list, tuple),
}
_NAMES = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "tuple": "a list",
    "dict": "a mapping",
    "list": "a list",
}


def _kinds(annotation) -> list[str]:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return [part.strip() for part in text.replace("None", "").split("|") if part.strip()]


def check_value(name: str, value, annotation, rule: Rule | None, where: str) -> None:
    kinds = _kinds(annotation)
    ok_type = False
    for kind in kinds:
        types = _TYPES.get(kind)
        if types is None:  # an annotation this schema does not know: not checked here
            ok_type = True
            break
        if isinstance(value, bool) and kind != "bool":
            continue
        if isinstance(value, types):
            ok_type = True
            break
    if not ok_type:
        expected = " or ".join(_NAMES.get(k, k) for k in kinds)
        raise ValueError(f"{where}{name}: expected {expected}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}{name}: expected a finite number, got {value!r}")
    if rule is not None and not isinstance(value, (bool, list, tuple, dict)) and not rule.accepts(value):
        raise ValueError(f"{where}{name}: expected {rule.describe()}, got {value!r}")


def check_keys(cls, values, where: str = "", what: str = "config", hint: str = "") -> None:
    """`values` is a mapping whose keys are all fields of the dataclass `cls`."""
    if not isinstance(values, dict):
        raise ValueError(f"{where.rstrip('.') or what}: expected a mapping of keys to values, got {values!r}")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(where + k for k in unknown)}{hint}")


def check(cls, values, where: str = "", rules: dict[str, Rule] | None = None, what: str = "config") -> None:
    """Check a dict of values for the dataclass `cls`; `where` prefixes each message (e.g. "model.")."""
    check_keys(cls, values, where, what)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        check_value(name, value, fields[name].type, (rules or {}).get(name), where)


# ---------------------------------------------------------------- argparse types
def _number(kind, rule: Rule | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if rule is not None and not rule.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {rule.describe()}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def int_at_least(low: int):
    return _number(int, Rule(low=low))


def int_between(low: int, high: int):
    return _number(int, Rule(low=low, high=high))


def number(low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False):
    return _number(float, Rule(low=low, high=high, open_low=open_low, open_high=open_high))


any_int = _number(int)
