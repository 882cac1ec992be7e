"""Other toolkits' formats: Hugging Face Marian (OPUS-MT) import and export, CTranslate2 export and decoding."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


class ExportError(OSError):
    """An export could not be written (a full disk, a read-only place); nothing was left under its name."""


def export_target(out: str | Path, force: bool, model: str | Path | None = None) -> Path:
    """Check where an export goes, before any work: refused where it is a file, holds files (unless
    `force`), or is (or holds) the working directory or the model being exported."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; an export is a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force")
    for inside, what in ((Path.cwd().resolve(), "the working directory"), (Path(model).resolve() if model else None, "the model")):
        if inside is not None and (inside == out or out in inside.parents):
            raise FileExistsError(f"--out {out} is or holds {what}; export somewhere else")
    return out


@contextlib.contextmanager
def export_directory(out: str | Path, force: bool, model: str | Path | None = None):
    """A temporary directory beside `out` to write an export into; once whole it becomes `out` (a
    new one is renamed into place; an existing directory, which may be a mount point or a link, gets
    the files, after its old ones are removed with `force`). A write that fails, whatever library
    raised it, leaves nothing behind and names the path."""
    out = export_target(out, force, model)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise ExportError(f"could not write {out}: {e.strerror or e}") from None
    try:
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
            return
        for old in list(out.iterdir()):  # only with --force: export_target refused a non-empty one
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for new in tmp.iterdir():
            os.replace(new, out / new.name)
        tmp.rmdir()
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        from aiayn.io.checkpoint import cause_of, disk_full

        full = disk_full(e)
        if not (isinstance(e, OSError) or full):
            raise  # aiayn's refusals, a converter's own errors: they say what they mean
        raise ExportError(
            f"could not write {out}: {cause_of(e)}{' (is the disk full?)' if full else ''}; nothing was left under that name"
        ) from e
