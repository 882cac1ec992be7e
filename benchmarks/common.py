"""What several benchmark scripts share: trial overrides of aiayn's config (--set KEY=VALUE), and
the results record (command, date, settings, machine, results) written as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def write_record(path: Path, args: argparse.Namespace, results, threads: int | None = None, **extra) -> None:
    """The benchmark's JSON record at `path`: its command line, date, settings (args), the machine
    (`runtime.machine`: CPU model, flags, threads, versions), `extra` fields and the results;
    written to a temporary file and renamed, so that an interrupted run leaves no half-written record."""
    from aiayn.runtime import machine

    record = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(threads),
        **extra,
        "results": results,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(path)
    print(f"wrote {path}")
