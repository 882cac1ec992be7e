"""What several benchmark scripts share: trial overrides of aiayn's config (--set KEY=VALUE)."""

from __future__ import annotations

import argparse

from aiayn.train.config import parse_overrides


def add_set_option(parser: argparse.ArgumentParser, judged_by: str) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a key of aiayn's config (repeatable), e.g. --set model.drop_path=0 --set lr=0.003: a trial, judged by {judged_by}",
    )


def read_set(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """args.set as a config mapping, read as `aiayn train --key value` reads its options."""
    if bad := [item for item in args.set if "=" not in item]:
        parser.error(f"--set {bad[0]!r}: expected KEY=VALUE")
    return parse_overrides([f"--{item}" for item in args.set])
