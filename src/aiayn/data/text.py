"""`aiayn prepare --task lm`: plain text for a language model, checked, tokenized and written as
one memory-mapped stream of token ids.

Documents are whole files or, by default, the blank-line-separated parts of each file. The stream
is  EOS doc₁ EOS doc₂ EOS … docₙ EOS : every document follows a separator, so a prompt is always
continued as the start of a document. The vocabulary is a sentencepiece BPE learned on the text
(byte-exact: no normalisation, newline a token of its own, no dummy space prefix, byte fallback),
one token per character (`--char`), or an imported model's (the `tokenizers` library, GPT-2).

A dataset directory holds meta.json (task "lm", vocabulary, counts, sha256 of the inputs), the
vocabulary (spm.model or chars.json), and {split}.bin (the token stream, uint16 or int32). It is
built in a temporary sibling directory and renamed into place when complete.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from aiayn import __version__
from aiayn.data.binarize import FORMAT_VERSION, _sample_lines, abandon_build, begin_build, check_output_dir, finish_build, load_meta
from aiayn.data.corpus import CorpusError
from aiayn.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0-3 of every vocabulary made here


# ---------------------------------------------------------------- vocabularies
class CharTokenizer:
    """One token per character (char-rnn, nanoGPT's shakespeare_char): ids 0-3 are the specials,
    then the characters of the training text in code-point order. Unknown characters are <unk>."""

    pad_id, unk_id, bos_id, eos_id = PAD, UNK, BOS, EOS
    kind = "chars"

    def __init__(self, chars: Iterable[str]):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(("chars\0" + self.chars).encode("utf-8")).hexdigest()

    def encode(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        get = self.index.get
        return [[get(c, UNK) for c in text] for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        n = len(SPECIALS)
        return "".join(self.chars[i - n] for i in map(int, ids) if n <= i < self.vocab_size)

    def data(self) -> str:
        return json.dumps(self.chars, ensure_ascii=False)


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (tokenizer.json), e.g. GPT-2's byte-level BPE."""

    kind = "hf"

    def __init__(self, tokenizer_json: str, eos_id: int, bos_id: int = -1, pad_id: int | None = None):
        from tokenizers import Tokenizer as Fast

        self.json = tokenizer_json
        self.fast = Fast.from_str(tokenizer_json)
        self.eos_id, self.bos_id = eos_id, bos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.unk_id = -1

    @property
    def vocab_size(self) -> int:
        return self.fast.get_vocab_size(with_added_tokens=True)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(("hf\0" + self.json).encode("utf-8")).hexdigest()

    def encode(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        return [e.ids for e in self.fast.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.fast.decode([int(i) for i in ids], skip_special_tokens=True)

    def data(self) -> str:
        return json.dumps({"tokenizer": self.json, "eos_id": self.eos_id, "bos_id": self.bos_id, "pad_id": self.pad_id})


def train_bpe(files: list[Path], vocab_size: int, threads: int | None = None) -> Tokenizer:
    """A sentencepiece BPE for running text that decodes to exactly what was encoded."""
    return Tokenizer.train(
        files,
        vocab_size,
        "bpe",
        normalization="identity",
        threads=threads,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        user_defined_symbols=["\n"],
        split_digits=True,
    )


def lm_tokenizer_assets(tok) -> dict[str, str]:
    """A language model's vocabulary as checkpoint assets."""
    if isinstance(tok, Tokenizer):
        return {"tokenizer": "sentencepiece", "tokenizer_data": base64.b64encode(tok.proto).decode("ascii")}
    return {"tokenizer": tok.kind, "tokenizer_data": tok.data()}


def lm_tokenizer_from_assets(assets: dict[str, str], source: str = "checkpoint"):
    from aiayn.io.checkpoint import CheckpointError

    try:
        kind, data = assets["tokenizer"], assets["tokenizer_data"]
        if kind == "sentencepiece":
            return Tokenizer(base64.b64decode(data))
        if kind == "chars":
            return CharTokenizer(json.loads(data))
        if kind == "hf":
            d = json.loads(data)
            return HFTokenizer(d["tokenizer"], d["eos_id"], d["bos_id"], d["pad_id"])
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    except (KeyError, ValueError, TypeError, RuntimeError, Exception) as e:
        raise CheckpointError(f"{source}: damaged tokenizer assets ({e})") from None


def load_lm_tokenizer(directory: str | Path, meta: dict | None = None):
    meta = meta or load_meta(directory)
    v = meta["vocab"]
    path = Path(directory) / v["file"]
    if v["kind"] == "chars":
        return CharTokenizer(json.loads(path.read_text(encoding="utf-8")))
    if v["kind"] == "hf":
        d = json.loads(path.read_text(encoding="utf-8"))
        return HFTokenizer(d["tokenizer"], d["eos_id"], d["bos_id"], d["pad_id"])
    return Tokenizer.from_file(path)


# ---------------------------------------------------------------- reading text
_BAD = {"invalid_utf8": "invalid UTF-8", "control_char": "control character"}


@dataclass
class TextStats:
    lines: int = 0
    documents: int = 0
    characters: int = 0
    skipped: Counter = None

    def __post_init__(self):
        self.skipped = Counter() if self.skipped is None else self.skipped


def read_documents(
    path: str | Path, documents: str = "blank-line", skip_bad: bool = False, stats: TextStats | None = None
) -> Iterator[list[str]]:
    """Yield each document of a UTF-8 text file as its lines (without newlines). documents="file":
    the whole file is one; "blank-line": blank lines separate them. A line that is not UTF-8 or holds
    a control character other than tab stops with an error naming the file and line, or with
    skip_bad is dropped and counted. Streams: one document is held at a time."""
    from aiayn.data.corpus import _control_char

    stats = stats if stats is not None else TextStats()
    doc: list[str] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            stats.lines += 1
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            raw = raw.rstrip(b"\n")
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                line = raw.decode("utf-8")
                bad = ch if (ch := _control_char(line)) else None
                kind, detail = ("control_char", f"U+{ord(bad):04X} at column {line.index(bad) + 1}") if bad else (None, "")
            except UnicodeDecodeError as e:
                kind, detail = "invalid_utf8", f"byte {e.start}: {raw[e.start : e.start + 4]!r}"
            if kind:
                if not skip_bad:
                    raise CorpusError(f"{path}, line {number}: {_BAD[kind]} ({detail}); fix the line or pass --skip-bad to drop such lines")
                stats.skipped[kind] += 1
                continue
            if documents == "blank-line" and not line.strip():
                if doc:
                    stats.documents += 1
                    yield doc
                doc = []
                continue
            doc.append(line)
            stats.characters += len(line) + 1
    if doc:
        stats.documents += 1
        yield doc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- prepare
@dataclass
class TextOptions:
    vocab_size: int = 4000  # BPE pieces; ignored with char
    char: bool = False  # one token per character
    documents: str = "blank-line"  # blank-line | file
    skip_bad: bool = False
    max_spm_sentences: int = 300_000
    seed: int = 1
    vocab_from: str | None = None  # a dataset or model whose vocabulary to use (learn none)
    workers: int = 0  # sentencepiece threads (0: all cores)
    progress: bool = True


def prepare_text(splits: dict[str, list], out_dir: str | Path, opts: TextOptions | None = None, force: bool = False, log=print) -> dict:
    """Build a language-modelling dataset in out_dir from {"train": [files], "valid": [files], ...}."""
    opts = opts or TextOptions()
    out_dir = Path(out_dir)
    if not splits.get("train"):
        raise ValueError("training text is needed: --train-text FILE ...")
    if opts.documents not in ("blank-line", "file"):
        raise ValueError(f"documents: blank-line or file, not {opts.documents!r}")
    check_output_dir(out_dir, force)
    for name, files in splits.items():
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{name}: no such file {f}")
    work = begin_build(out_dir, log)
    started = time.time()
    try:
        # 1. check every line, keep the clean text (documents end with an empty line)
        read, inputs, chars = {}, {}, set()
        for name, files in splits.items():
            stats = TextStats()
            with open(work / f"{name}.txt", "w", encoding="utf-8") as out:
                for f in files:
                    for doc in read_documents(f, opts.documents, opts.skip_bad, stats):
                        if name == "train" and opts.char:
                            for line in doc:
                                chars.update(line)
                        out.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in doc) + "\n")
                    inputs[str(f)] = {"split": name, "sha256": _sha256(Path(f))}
            if not stats.documents:
                raise CorpusError(f"{name}: no text in {', '.join(map(str, files))}")
            read[name] = stats

        # 2. the vocabulary
        if opts.vocab_from:
            tok = _vocabulary_from(opts.vocab_from)
            log(f"using the vocabulary of {opts.vocab_from} ({tok.vocab_size} tokens)")
        elif opts.char:
            chars.add("\n")
            tok = CharTokenizer(chars)
            log(f"a character vocabulary of {tok.vocab_size} tokens")
        else:
            log(f"learning a bpe vocabulary of {opts.vocab_size} pieces")
            lines = work / "train.lines"
            with open(work / "train.txt", encoding="utf-8") as fin, open(lines, "w", encoding="utf-8") as fout:
                n_lines = 0
                for row in fin:
                    if row != "\n":
                        fout.write(json.loads(row) + "\n")
                        n_lines += 1
            sample = _sample_lines([lines], n_lines, opts.max_spm_sentences, opts.seed, work)
            try:
                tok = train_bpe(sample, opts.vocab_size, opts.workers or None)
            except RuntimeError as e:
                raise CorpusError(f"sentencepiece could not learn a vocabulary of {opts.vocab_size}: {e}") from None
            for f in [lines, *work.glob("*.sample")]:
                f.unlink(missing_ok=True)
        vocab_file = {"sentencepiece": "spm.model", "chars": "chars.json", "hf": "tokenizer.json"}[_kind(tok)]
        if isinstance(tok, Tokenizer):
            tok.save(work / vocab_file)
        else:
            (work / vocab_file).write_text(tok.data(), encoding="utf-8")
        dtype = np.uint16 if tok.vocab_size <= 65535 else np.int32

        # 3. the token streams
        split_meta = {}
        for name in splits:
            counts = _encode_stream(work / f"{name}.txt", work / f"{name}.bin", tok, dtype)
            (work / f"{name}.txt").unlink()
            split_meta[name] = {
                "tokens": counts["tokens"],
                "documents": read[name].documents,
                "characters": read[name].characters,
                "lines_read": read[name].lines,
                "unknown": counts["unknown"],
                "skipped": dict(read[name].skipped),
            }
            note = [f"{name}: {read[name].documents} documents, {counts['tokens']} tokens"]
            note += [f"{n} lines dropped: {_BAD[k]}" for k, n in read[name].skipped.items()]
            if counts["unknown"]:
                note.append(f"{counts['unknown']} tokens unknown to the vocabulary")
            log("; ".join(note))
        meta = {
            "format_version": FORMAT_VERSION,
            "task": "lm",
            "aiayn_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 1),
            "dtype": np.dtype(dtype).name,
            "vocab": {"kind": _kind(tok), "file": vocab_file, "size": tok.vocab_size, "sha256": tok.sha256},
            "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id},
            "splits": split_meta,
            "inputs": inputs,
            "options": {k: v for k, v in vars(opts).items() if k not in ("workers", "progress")},
        }
        finish_build(work, out_dir, meta)
        return meta
    except BaseException as e:
        abandon_build(work, out_dir, e)
        raise


def _kind(tok) -> str:
    return "sentencepiece" if isinstance(tok, Tokenizer) else tok.kind


def _vocabulary_from(path: str | Path):
    path = Path(path)
    if path.is_dir() and (path / "meta.json").is_file():
        return load_lm_tokenizer(path)
    from aiayn.io.checkpoint import read_checkpoint, resolve_model_path

    ckpt = read_checkpoint(resolve_model_path(path))
    if ckpt.task != "lm":
        raise ValueError(f"{path} is a {ckpt.task} model; --vocab-from needs a language model or an lm dataset")
    return lm_tokenizer_from_assets(ckpt.assets, str(ckpt.path))


def _encode_stream(text: Path, out: Path, tok, dtype, chunk_lines: int = 4096) -> Counter:
    """Encode the cleaned text (JSON lines, documents ending with an empty line) into EOS doc EOS doc … EOS.
    Lines are encoded in chunks and joined by the newline token, so memory stays flat."""
    counts = Counter()
    newline = tok.encode(["\n"])[0]
    if len(newline) != 1 and not isinstance(tok, HFTokenizer):
        raise ValueError("the vocabulary has no single token for a newline")
    eos = np.array([tok.eos_id], dtype=dtype)

    with open(text, encoding="utf-8") as fin, open(out, "wb") as fout:
        fout.write(eos.tobytes())
        counts["tokens"] += 1
        pending: list[str] = []  # lines of the documents in this chunk; None marks a document's end
        marks: list[bool] = []

        def flush():
            if not pending:
                return
            encoded = tok.encode(pending)
            parts = []
            for ids, last in zip(encoded, marks):
                parts.append(ids)
                parts.append([tok.eos_id] if last else newline)
            flat = np.fromiter((t for p in parts for t in p), dtype=np.int64)
            if tok.unk_id >= 0:
                counts["unknown"] += int((flat == tok.unk_id).sum())
            fout.write(flat.astype(dtype).tobytes())
            counts["tokens"] += len(flat)
            pending.clear()
            marks.clear()

        for row in fin:
            if row == "\n":  # the end of a document: its last line ends with EOS, not a newline
                if marks:
                    marks[-1] = True
                continue
            pending.append(json.loads(row))
            marks.append(False)
            if len(pending) >= chunk_lines:
                # keep the last line back: it may be a document's last, which only the next row tells
                last, last_mark = pending.pop(), marks.pop()
                flush()
                pending.append(last)
                marks.append(last_mark)
        flush()
    return counts


# ---------------------------------------------------------------- reading a dataset
class TokenStream:
    """One split of a language-modelling dataset: its token ids, memory-mapped."""

    def __init__(self, directory: str | Path, split: str = "train"):
        self.directory, self.split = Path(directory), split
        self.meta = load_meta(directory)
        if split not in self.meta["splits"]:
            raise KeyError(f"{directory} has no {split!r} split (it has {', '.join(self.meta['splits'])})")
        info = self.meta["splits"][split]
        dtype = np.dtype(self.meta["dtype"])
        path = self.directory / f"{split}.bin"
        expected = int(info["tokens"]) * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            size = path.stat().st_size if path.is_file() else 0
            raise ValueError(f"{path} is {size} bytes, expected {expected}: the dataset is damaged; prepare it again")
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        vocab = self.meta["vocab"]["size"]
        if int(self.tokens.max()) >= vocab:
            raise ValueError(f"{path} holds token id {int(self.tokens.max())}, beyond the vocabulary of {vocab}: prepare it again")
        self.characters = int(info.get("characters", 0))

    def __len__(self) -> int:
        return len(self.tokens)
