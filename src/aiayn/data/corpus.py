"""Reading parallel text: one sentence a line (two files) or `source<TAB>target` (one TSV file).

Every line is checked; a bad one stops the run with an error naming the file and line, or,
with skip_bad=True, its pair is dropped and counted by kind. Files are read as bytes and
streamed, never held whole in memory.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

BAD_KINDS = {
    "invalid_utf8": "invalid UTF-8",
    "empty": "empty or whitespace-only line",
    "control_char": "control character",
    "tsv_fields": "not exactly two tab-separated fields",
}


class CorpusError(ValueError):
    """Bad input, with where it is."""


@dataclass
class ReadStats:
    pairs_read: int = 0
    pairs_kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # kind -> pairs dropped
    sha256: dict = field(default_factory=dict)  # path -> hex digest of the whole file


def count_lines(path: str | Path) -> int:
    """Lines in a file (a last line without a newline counts too)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def check_line_counts(src: str | Path, tgt: str | Path) -> int:
    n_src, n_tgt = count_lines(src), count_lines(tgt)
    if n_src != n_tgt:
        raise CorpusError(f"{src} has {n_src} lines but {tgt} has {n_tgt}: a parallel corpus needs one line per sentence on both sides")
    return n_src


# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; tab is allowed (it becomes a space)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _control_char(text: str) -> str | None:
    found = _CONTROL.search(text)
    return found.group() if found else None


def clean_line(raw: bytes, normalize: str | None = None) -> tuple[str | None, str | None, str]:
    """(text, bad kind, detail) for one line without its newline. Tabs become spaces, runs of
    spaces collapse, a trailing CR (Windows line ending) goes."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, "invalid_utf8", f"byte {e.start}: {raw[e.start : e.start + 4]!r}"
    if ch := _control_char(text):
        return None, "control_char", f"U+{ord(ch):04X} at column {text.index(ch) + 1}"
    if normalize:
        text = unicodedata.normalize(normalize.upper(), text)
    text = " ".join(text.replace("\t", " ").split())
    if not text:
        return None, "empty", ""
    return text, None, ""


class _HashingReader:
    """Iterates the lines of a file as bytes (newline stripped) and hashes the whole file."""

    def __init__(self, path: str | Path):
        self.path, self.sha = str(path), hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            for line in f:
                self.sha.update(line)
                if line.startswith(b"\xef\xbb\xbf") and f.tell() == len(line):  # a BOM on line 1
                    line = line[3:]
                yield line[:-1] if line.endswith(b"\n") else line


def _check_row(row: tuple[bytes, ...], paths: list[str], normalize: str | None):
    """([source, target], None) for a good row, or (None, (kind, detail, path)) for a bad one."""
    if len(row) == 1:  # one TSV line
        fields = row[0].split(b"\t")
        if len(fields) != 2:
            return None, ("tsv_fields", f"found {len(fields)}", paths[0])
        row, paths = fields, paths * 2
    texts = []
    for raw, path in zip(row, paths):
        text, kind, detail = clean_line(raw, normalize)
        if kind:
            return None, (kind, detail, path)
        texts.append(text)
    return texts, None


def read_parallel(
    src: str | Path,
    tgt: str | Path | None = None,
    *,
    skip_bad: bool = False,
    normalize: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[tuple[int, str, str]]:
    """Yield (line number, source, target) for every good pair.

    Two files, or one TSV file when tgt is None. Raises CorpusError at the first bad line
    unless skip_bad, which drops the pair and counts it in stats.skipped[kind].
    """
    stats = stats if stats is not None else ReadStats()
    if tgt is not None:
        check_line_counts(src, tgt)
    readers = [_HashingReader(p) for p in ([src, tgt] if tgt is not None else [src])]
    paths = [r.path for r in readers]
    for number, row in enumerate(zip(*readers), start=1):
        stats.pairs_read += 1
        texts, bad = _check_row(row, paths, normalize)
        if bad:
            kind, detail, path = bad
            if not skip_bad:
                detail = f" ({detail})" if detail else ""
                raise CorpusError(f"{path}, line {number}: {BAD_KINDS[kind]}{detail}; fix the line or pass --skip-bad to drop such pairs")
            stats.skipped[kind] += 1
            continue
        stats.pairs_kept += 1
        yield number, texts[0], texts[1]
    for reader in readers:
        stats.sha256[reader.path] = reader.sha.hexdigest()
