"""Other toolkits' formats: Hugging Face Marian (OPUS-MT) import and export, CTranslate2 export and decoding."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


class ExportError(OSError):
    """An export could not be written (a full disk, a read-only place); nothing was left under its name."""


@contextlib.contextmanager
def export_directory(out: str | Path, force: bool):
    """The directory an export writes to, as a temporary one beside it, renamed into place once
    whole: refused where `out` exists with files in it (unless `force`, which replaces it only
    then). A write that fails, whatever library raised it, leaves nothing behind and names the path."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; an export is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (KeyboardInterrupt, SystemExit, ValueError, FileNotFoundError, FileExistsError, ImportError)):
            raise  # aiayn's own refusals (a model that cannot be expressed, ...) say what they mean already
        cause = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
        full = "No space left" in str(e) or (isinstance(e, OSError) and e.errno == 28)
        raise ExportError(
            f"could not write {out}: {cause}{' (is the disk full?)' if full else ''}; nothing was left under that name"
        ) from e
