"""The parallel corpus shipped inside the package (public-domain Bible verses, English–Spanish)."""

from __future__ import annotations

import lzma
from importlib import resources
from pathlib import Path


def shipped_corpus_path() -> Path:
    return Path(str(resources.files("aiayn") / "assets" / "bible-en-es.tsv.xz"))


def write_shipped_corpus(out_dir: str | Path, limit: dict[str, int] | None = None) -> dict[str, tuple[Path, Path]]:
    """Write the shipped corpus as {split}.en / {split}.es files (one verse a line) in out_dir.

    limit: at most this many pairs per split (e.g. {"train": 2000}); returns {split: (en, es)}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    try:
        with lzma.open(shipped_corpus_path(), "rt", encoding="utf-8") as f:
            next(f)  # header
            for line in f:
                split, _ref, en, es = line.rstrip("\n").split("\t")
                if limit is not None and counts.get(split, 0) >= limit.get(split, 1 << 62):
                    continue
                if split not in files:
                    files[split] = (
                        open(out_dir / f"{split}.en", "w", encoding="utf-8"),
                        open(out_dir / f"{split}.es", "w", encoding="utf-8"),
                    )
                files[split][0].write(en + "\n")
                files[split][1].write(es + "\n")
                counts[split] = counts.get(split, 0) + 1
    finally:
        for pair in files.values():
            for handle in pair:
                handle.close()
    return {split: (out_dir / f"{split}.en", out_dir / f"{split}.es") for split in files}
