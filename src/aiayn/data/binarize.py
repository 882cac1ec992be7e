"""`aiayn prepare`: validate and clean parallel text, learn a sentencepiece vocabulary, and write a
binarized dataset that training streams from.

A dataset directory holds:
    meta.json                 vocabulary, special ids, counts, sha256 of the inputs, what was dropped
    spm.model                 the joint sentencepiece model (or spm.src.model + spm.tgt.model)
    vocab*.json               only with --vocab-from a model whose tokenizer maps pieces to ids (Marian)
    {split}.{src,tgt}.bin     token ids of every sentence back to back (no BOS/EOS), uint16 or int32
    {split}.{src,tgt}.len     int32 length of each sentence
    {split}.{src,tgt}.txt     the cleaned text of valid/test (references for BLEU)
    shortlist.safetensors     source piece -> associated target pieces (data.lexicon), for --shortlist
It is built in a temporary sibling directory and renamed into place when complete, so an
interrupted run never leaves something that looks like a dataset.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aiayn import __version__
from aiayn.data.corpus import BAD_KINDS, CorpusError, ReadStats, check_line_counts, read_parallel
from aiayn.data.tokenizer import Tokenizer

FORMAT_VERSION = 1
SIDES = ("src", "tgt")
MAX_SPM_LINE_BYTES = 1 << 16  # data.tokenizer trains sentencepiece with max_sentence_length=65536


@dataclass
class PrepareOptions:
    vocab_size: int = 8000  # suits tens of thousands of pairs; use ~37000 for WMT-scale data (§5.1)
    model_type: str = "bpe"  # bpe | unigram
    joint_vocab: bool = True  # one vocabulary for both languages (§5.1), needed for shared embeddings
    max_len: int = 256  # training pairs with more subwords on either side are dropped (0: no limit)
    max_ratio: float = 3.0  # training pairs whose longer side exceeds ratio × the shorter are dropped (0: off)
    skip_bad: bool = False  # drop bad lines (counted by kind) instead of stopping with an error
    normalize: str | None = None  # optional Unicode normalisation before anything else: NFC | NFKC
    spm_normalization: str = "nmt_nfkc"  # sentencepiece's own rule (identity keeps text byte-exact)
    max_spm_sentences: int = 300_000  # lines sampled to learn the vocabulary: bounds memory (~0.5 KB a line)
    seed: int = 1  # picks the sample the vocabulary is learned from
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    chunk_size: int = 2000  # lines per encoding task
    progress: bool = True
    vocab_from: str | None = None  # use this model's vocabulary (checkpoint, run/model dir, dataset or .model file), learn none


def vocabulary_from(path: str | Path) -> tuple[Tokenizer, Tokenizer]:
    """The (source, target) tokenizers of an existing model, to prepare data for fine-tuning it: an aiayn
    checkpoint or run/model directory (e.g. from 'aiayn import-hf'), a dataset directory, or a sentencepiece
    model file (joint)."""
    path = Path(path)
    if path.is_dir() and (path / "meta.json").is_file():
        return load_tokenizers(path)
    if path.is_file() and path.suffix != ".safetensors":
        tok = Tokenizer.from_file(path)
        return tok, tok
    from aiayn.io.checkpoint import read_checkpoint, resolve_model_path  # a model: late import (no cycle)

    return read_checkpoint(resolve_model_path(path)).tokenizers


# ---------------------------------------------------------------- encoding workers
_TOKENIZERS: tuple[Tokenizer, Tokenizer] | None = None


def _init_worker(src: Tokenizer, tgt: Tokenizer) -> None:
    global _TOKENIZERS
    _TOKENIZERS = (src, tgt)


def _encode_chunk(src_lines: list[str], tgt_lines: list[str], max_len: int, max_ratio: float):
    """Encode a chunk; returns token arrays, lengths and the count of pairs each filter removed."""
    src_tok, tgt_tok = _TOKENIZERS
    # one thread per worker process: --workers is the number of cores encoding uses
    src_ids, tgt_ids = src_tok.encode(src_lines, threads=1), tgt_tok.encode(tgt_lines, threads=1)
    keep, dropped = [], Counter()
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if max_len and max(len(s), len(t)) > max_len:
            dropped["max_len"] += 1
        elif max_ratio and max(len(s), len(t)) > max_ratio * max(1, min(len(s), len(t))):
            dropped["max_ratio"] += 1
        else:
            keep.append(i)
    out = []
    for ids in (src_ids, tgt_ids):
        kept = [ids[i] for i in keep]
        lengths = np.fromiter((len(x) for x in kept), dtype=np.int32, count=len(kept))
        flat = np.fromiter((t for x in kept for t in x), dtype=np.int64, count=int(lengths.sum()))
        out += [flat, lengths]
    return (*out, dropped)


def _chunks(src_path: Path, tgt_path: Path, size: int):
    with open(src_path, encoding="utf-8") as fs, open(tgt_path, encoding="utf-8") as ft:
        src, tgt = [], []
        for s, t in zip(fs, ft):
            src.append(s.rstrip("\n"))
            tgt.append(t.rstrip("\n"))
            if len(src) == size:
                yield src, tgt
                src, tgt = [], []
        if src:
            yield src, tgt


def _encode_split(work: Path, split: str, n_pairs: int, tokenizers, opts: PrepareOptions, filtering: bool, dtype) -> dict:
    """Encode {split}.{src,tgt}.txt in `work` into .bin/.len files, in order, with a bounded number of
    chunks in flight (memory stays flat however large the corpus)."""
    from tqdm import tqdm

    max_len, max_ratio = (opts.max_len, opts.max_ratio) if filtering else (0, 0.0)
    files = {(side, kind): open(work / f"{split}.{side}.{kind}", "wb") for side in SIDES for kind in ("bin", "len")}
    counts, dropped = Counter(), Counter()
    bar = tqdm(total=n_pairs, unit=" sent", desc=f"encode {split}", disable=not opts.progress, dynamic_ncols=True)

    def write(result):
        src_flat, src_len, tgt_flat, tgt_len, chunk_dropped = result
        for side, flat, lengths in (("src", src_flat, src_len), ("tgt", tgt_flat, tgt_len)):
            files[side, "bin"].write(flat.astype(dtype).tobytes())
            files[side, "len"].write(lengths.tobytes())
            counts[f"{side}_tokens"] += int(lengths.sum())
        counts["pairs"] += len(src_len)
        dropped.update(chunk_dropped)
        bar.update(len(src_len) + sum(chunk_dropped.values()))

    chunks = _chunks(work / f"{split}.src.txt", work / f"{split}.tgt.txt", opts.chunk_size)
    try:
        if opts.workers <= 1:
            _init_worker(*tokenizers)
            for src, tgt in chunks:
                write(_encode_chunk(src, tgt, max_len, max_ratio))
        else:
            with ProcessPoolExecutor(opts.workers, initializer=_init_worker, initargs=tuple(tokenizers)) as pool:
                pending = deque()
                for src, tgt in chunks:
                    pending.append(pool.submit(_encode_chunk, src, tgt, max_len, max_ratio))
                    if len(pending) >= 2 * opts.workers:
                        write(pending.popleft().result())
                while pending:
                    write(pending.popleft().result())
    finally:
        bar.close()
        for f in files.values():
            f.close()
    return {**counts, "dropped": dict(dropped)}


def _sample_lines(files: list[Path], n_lines: int, max_lines: int, seed: int, out: Path) -> list[Path]:
    """The text the vocabulary is learned from: every line if the files hold at most max_lines in all,
    else the same random pairs (max_lines / len(files) of them) from each file, in corpus order.

    Only the chosen line numbers are held (a sorted index array); the text streams from disk to disk.
    Sampling here rather than in sentencepiece (input_sentence_size) keeps its reservoir from fragmenting
    the heap while it reads the whole corpus (measured: ~45 MiB more at 1M pairs), and seeds the sample.
    """
    per_file = max_lines // len(files)
    if n_lines * len(files) <= max_lines or per_file <= 0:
        return files
    chosen = np.sort(np.random.default_rng(seed).choice(n_lines, size=per_file, replace=False))
    samples = []
    for f in files:
        sample = out / f"{f.name}.sample"
        with open(f, encoding="utf-8") as fin, open(sample, "w", encoding="utf-8") as fout:
            k = 0
            for i, line in enumerate(fin):
                if i == chosen[k]:
                    fout.write(line)
                    k += 1
                    if k == per_file:
                        break
        samples.append(sample)
    return samples


# ---------------------------------------------------------------- prepare
def prepare(splits: dict[str, tuple], out_dir: str | Path, opts: PrepareOptions | None = None, force: bool = False, log=print) -> dict:
    """Build a dataset in out_dir from splits {"train": (src, tgt) or (tsv,), "valid": …, "test": …}.

    Raises CorpusError for bad input (naming file and line) unless opts.skip_bad.
    """
    from tqdm import tqdm

    opts = opts or PrepareOptions()
    out_dir = Path(out_dir)
    if "train" not in splits:
        raise ValueError("a train split is needed to learn the vocabulary")
    check_output_dir(out_dir, force)
    for name, files in splits.items():  # fail fast, before any work
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{name}: no such file {f}")
        if len(files) == 2:
            check_line_counts(*files)
    work = begin_build(out_dir, log)
    started = time.time()
    try:
        # 1. validate and clean, streaming into text files
        inputs, read = {}, {}
        for name, files in splits.items():
            stats = ReadStats()
            with open(work / f"{name}.src.txt", "w", encoding="utf-8") as fs, open(work / f"{name}.tgt.txt", "w", encoding="utf-8") as ft:
                pairs = read_parallel(*files, skip_bad=opts.skip_bad, normalize=opts.normalize, stats=stats)
                for _, s, t in tqdm(pairs, unit=" sent", desc=f"read {name}", disable=not opts.progress, dynamic_ncols=True):
                    fs.write(s + "\n")
                    ft.write(t + "\n")
            if stats.pairs_kept == 0:
                raise CorpusError(f"{name}: no usable pairs in {', '.join(map(str, files))}")
            read[name] = stats
            for f in files:
                inputs[str(f)] = {"split": name, "lines": stats.pairs_read, "sha256": stats.sha256[str(f)]}

        # 2. learn the vocabulary (sentencepiece's trainer) on the cleaned training text, or take a model's
        joint = opts.joint_vocab
        if opts.vocab_from:
            src_tok, tgt_tok = vocabulary_from(opts.vocab_from)
            joint = src_tok is tgt_tok or src_tok.sha256 == tgt_tok.sha256
            src_tok = tgt_tok if joint else src_tok
            if (src_tok.pad_id, src_tok.eos_id) != (tgt_tok.pad_id, tgt_tok.eos_id):
                raise ValueError(f"{opts.vocab_from}: the source and target vocabularies have different <pad>/</s> ids")
            log(f"using the {'joint ' if joint else ''}vocabulary of {opts.vocab_from} ({src_tok.vocab_size} pieces)")
        else:
            log(f"learning a {'joint ' if joint else ''}{opts.model_type} vocabulary of {opts.vocab_size} pieces")
            n_train, cap = read["train"].pairs_kept, opts.max_spm_sentences
            train_text = [work / "train.src.txt", work / "train.tgt.txt"]
            kw = dict(max_sentences=cap, normalization=opts.spm_normalization, threads=opts.workers)
            try:
                if joint:
                    sample = _sample_lines(train_text, n_train, cap, opts.seed, work)
                    src_tok = tgt_tok = Tokenizer.train(sample, opts.vocab_size, opts.model_type, **kw)
                else:
                    src_tok = Tokenizer.train(
                        _sample_lines(train_text[:1], n_train, cap, opts.seed, work), opts.vocab_size, opts.model_type, **kw
                    )
                    tgt_tok = Tokenizer.train(
                        _sample_lines(train_text[1:], n_train, cap, opts.seed, work), opts.vocab_size, opts.model_type, **kw
                    )
            except RuntimeError as e:
                if "sentences_.empty()" in str(e) or "sentences_.size()" in str(e):
                    raise CorpusError(
                        f"sentencepiece found no line to learn a vocabulary from: it skips lines longer than {MAX_SPM_LINE_BYTES:,} bytes, "
                        f"and the training text has no shorter non-empty line; split long lines (one sentence a line)"
                    ) from None
                raise CorpusError(f"sentencepiece could not learn a vocabulary of {opts.vocab_size}: {e}") from None
            for f in work.glob("*.sample"):
                f.unlink()
            from aiayn.runtime import release_freed_memory

            release_freed_memory()  # sentencepiece's sample would otherwise stay resident (and be inherited by the workers)
        vocab_files = {"src": "spm.model", "tgt": "spm.model"} if joint else {"src": "spm.src.model", "tgt": "spm.tgt.model"}
        mapping_files = {"src": "vocab.json", "tgt": "vocab.json"} if joint else {"src": "vocab.src.json", "tgt": "vocab.tgt.json"}
        for side, tok in (("src", src_tok), ("tgt", tgt_tok)):
            tok.save(work / vocab_files[side])
            if tok.vocab is not None:
                (work / mapping_files[side]).write_text(tok.vocab_json(), encoding="utf-8")
        dtype = np.uint16 if max(src_tok.vocab_size, tgt_tok.vocab_size) <= 65535 else np.int32

        # 3. encode with all cores; filter the training pairs
        split_meta = {}
        for name in splits:
            encoded = _encode_split(work, name, read[name].pairs_kept, (src_tok, tgt_tok), opts, name == "train", dtype)
            skipped = dict(read[name].skipped)
            split_meta[name] = {
                "pairs": encoded["pairs"],
                "src_tokens": encoded["src_tokens"],
                "tgt_tokens": encoded["tgt_tokens"],
                "lines_read": read[name].pairs_read,
                "skipped": skipped,
                "filtered": encoded["dropped"],
            }
            report = [f"{name}: {encoded['pairs']} pairs kept of {read[name].pairs_read}"]
            report += [f"{n} dropped: {BAD_KINDS[k]}" for k, n in skipped.items()]
            report += [f"{n} dropped by the {k} filter" for k, n in encoded["dropped"].items()]
            log("; ".join(report))
            if name == "train":  # the training text is not needed again; valid/test text are BLEU references
                for side in SIDES:
                    (work / f"{name}.{side}.txt").unlink()

        # 4. the lexical table of vocabulary shortlists (generate.shortlist), from the training pairs
        from aiayn.data.lexicon import learn_lexicon, save_lexicon

        arrays = {}
        for side in SIDES:
            lengths = np.fromfile(work / f"train.{side}.len", dtype=np.int32)
            arrays[side] = (np.fromfile(work / f"train.{side}.bin", dtype=dtype), np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]))
        table, frequent = learn_lexicon(*arrays["src"], *arrays["tgt"], src_tok.vocab_size, tgt_tok.vocab_size)
        save_lexicon(work / "shortlist.safetensors", table, frequent, {"src_sha256": src_tok.sha256, "tgt_sha256": tgt_tok.sha256})
        del arrays

        meta = {
            "format_version": FORMAT_VERSION,
            "aiayn_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 1),
            "dtype": np.dtype(dtype).name,
            "joint_vocab": joint,
            "vocab": {
                side: {
                    "file": vocab_files[side],
                    "size": tok.vocab_size,
                    "sha256": tok.sha256,
                    **({"mapping": mapping_files[side]} if tok.vocab is not None else {}),
                }
                for side, tok in (("src", src_tok), ("tgt", tgt_tok))
            },
            "special_ids": {"pad": src_tok.pad_id, "unk": src_tok.unk_id, "bos": src_tok.bos_id, "eos": src_tok.eos_id},
            "splits": split_meta,
            "shortlist": "shortlist.safetensors",
            "inputs": inputs,
            "options": {k: v for k, v in asdict(opts).items() if k not in ("workers", "progress")},
        }
        finish_build(work, out_dir, meta)
        return meta
    except BaseException as e:
        abandon_build(work, out_dir, e)
        raise


def check_output_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} exists; choose another --out or pass --force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a dataset directory; --force replaces only a directory")


def begin_build(out_dir: Path, log=print) -> Path:
    """A fresh temporary sibling directory to build a dataset in (removing those that killed runs on
    this host left behind); `finish_build` renames it into place, `abandon_build` removes it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-{host}-*"):  # left by a killed run on this host (SIGKILL, power loss)
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            log(f"removing {stale}, left behind by an interrupted 'aiayn prepare' (process {pid})")
            shutil.rmtree(stale, ignore_errors=True)
    work = out_dir.parent / f".{out_dir.name}.tmp-{host}-{os.getpid()}"  # the host: other machines may share the disk
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return work


def finish_build(work: Path, out_dir: Path, meta: dict) -> None:
    (work / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    if out_dir.exists():  # --force: replace only now that the new one is complete
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)


def abandon_build(work: Path, out_dir: Path, error: BaseException) -> None:
    """Remove the temporary directory; a full disk becomes a CorpusError that says so."""
    shutil.rmtree(work, ignore_errors=True)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):  # io.checkpoint.disk_full, without importing torch
        raise CorpusError(
            f"could not write the dataset {out_dir}: {error.strerror} (is the disk full?); nothing was left under that name"
        ) from error


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# ---------------------------------------------------------------- reading a dataset
def load_meta(directory: str | Path) -> dict:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an aiayn dataset (no meta.json); create one with 'aiayn prepare'")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); prepare the dataset again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is damaged (not a JSON object); prepare the dataset again")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: dataset format {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    return meta


def load_tokenizers(directory: str | Path) -> tuple[Tokenizer, Tokenizer]:
    meta = load_meta(directory)

    def load(side: str) -> Tokenizer:
        v = meta["vocab"][side]
        return Tokenizer.from_file(Path(directory) / v["file"], Path(directory) / v["mapping"] if v.get("mapping") else None)

    src = load("src")
    tgt = src if meta["joint_vocab"] else load("tgt")
    return src, tgt


class ParallelDataset:
    """One split of a binarized dataset: token arrays memory-mapped, never loaded whole."""

    def __init__(self, directory: str | Path, split: str = "train"):
        self.directory, self.split = Path(directory), split
        self.meta = load_meta(directory)
        if split not in self.meta["splits"]:
            raise KeyError(f"{directory} has no {split!r} split (it has {', '.join(self.meta['splits'])})")
        dtype = np.dtype(self.meta["dtype"])
        self.tokens, self.lengths, self.offsets = {}, {}, {}
        for side in SIDES:
            lengths = np.fromfile(self.directory / f"{split}.{side}.len", dtype=np.int32)
            bin_path = self.directory / f"{split}.{side}.bin"
            expected = int(lengths.sum()) * dtype.itemsize
            if bin_path.stat().st_size != expected:
                raise ValueError(
                    f"{bin_path} is {bin_path.stat().st_size} bytes, expected {expected}: the dataset is damaged; prepare it again"
                )
            self.tokens[side] = np.memmap(bin_path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
            vocab = self.meta["vocab"][side]["size"]
            if expected and (int(self.tokens[side].max()) >= vocab or int(self.tokens[side].min()) < 0):  # a pass over the array
                raise ValueError(
                    f"{bin_path} holds token id {int(self.tokens[side].max())}, beyond the vocabulary of {vocab}: "
                    f"the dataset is damaged; prepare it again"
                )
            self.lengths[side] = lengths
            self.offsets[side] = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        if len(self.lengths["src"]) != len(self.lengths["tgt"]):
            raise ValueError(f"{directory}/{split}: source and target sentence counts differ; prepare it again")

    def __len__(self) -> int:
        return len(self.lengths["src"])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return tuple(self.tokens[s][self.offsets[s][i] : self.offsets[s][i + 1]] for s in SIDES)

    @property
    def src_lengths(self) -> np.ndarray:
        return self.lengths["src"]

    @property
    def tgt_lengths(self) -> np.ndarray:
        return self.lengths["tgt"]

    def text(self, side: str) -> list[str] | None:
        """The cleaned text of a valid/test split (the reference for BLEU), if stored."""
        path = self.directory / f"{self.split}.{side}.txt"
        return path.read_text(encoding="utf-8").splitlines() if path.is_file() else None
