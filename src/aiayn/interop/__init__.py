"""Other toolkits' formats: Hugging Face Marian (OPUS-MT) import and export, CTranslate2 export and decoding."""

from __future__ import annotations

from pathlib import Path


def export_directory(out: str | Path, force: bool) -> Path:
    """The directory an export writes to: refused where it exists with files in it, unless `force`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force")
    return out
