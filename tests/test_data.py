"""The data pipeline: vocabulary, validation with clear errors, binarized datasets, token-bucket batches."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aiayn.data import (
    CorpusError,
    ParallelDataset,
    PrepareOptions,
    TokenBucketSampler,
    Tokenizer,
    collate,
    load_tokenizers,
    make_dataloader,
    prepare,
)
from aiayn.data.batching import make_batches
from aiayn.models import TransformerConfig

QUIET = dict(workers=1, progress=False)


def write(path: Path, lines, raw: bytes | None = None) -> Path:
    path.write_bytes(raw if raw is not None else ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def corpus(tmp_path, n=300, src_lines=None, tgt_lines=None):
    words = "the of and to in that he shall for unto i his a lord they be is him not them it with all".split()
    rng = np.random.default_rng(0)
    src = src_lines or [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(n)]
    tgt = tgt_lines or [s.upper() for s in src]
    return write(tmp_path / "a.en", src), write(tmp_path / "a.es", tgt)


def run_prepare(tmp_path, src, tgt, **opts):
    return prepare({"train": (src, tgt)}, tmp_path / "out", PrepareOptions(vocab_size=300, **{**QUIET, **opts}), log=lambda *a: None)


# ---------------------------------------------------------------- tokenizer
def test_roundtrip_and_byte_fallback(small_dataset):
    tok, tgt_tok = load_tokenizers(small_dataset)
    assert tok is tgt_tok  # joint vocabulary
    texts = [
        "In the beginning God created the heavens and the earth.",
        "Y dijo Dios: Sea la luz: y fué la luz.",
        "Ωμέγα 漢字 emoji 🙂 — never seen in training",
        "tabs\tand  double spaces are normalised",
    ]
    for text in texts[:3]:
        ids = tok.encode([text])[0]
        assert tok.unk_id not in ids  # byte fallback: nothing becomes <unk>
        assert tok.decode(ids) == text
    assert tok.decode(tok.encode([texts[3]])[0]) == "tabs and double spaces are normalised"


def test_special_ids_agree_with_the_model_config(small_dataset):
    tok, _ = load_tokenizers(small_dataset)
    cfg = TransformerConfig()
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (cfg.pad_id, cfg.unk_id, cfg.bos_id, cfg.eos_id)
    meta = json.loads((small_dataset / "meta.json").read_text())
    assert meta["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert tok.pieces([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]


def test_not_a_sentencepiece_model():
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        Tokenizer(b"garbage")


# ---------------------------------------------------------------- dataset
def test_dataset_contents_match_the_encoder(small_dataset, shipped):
    ds = ParallelDataset(small_dataset, "train")
    tok, _ = load_tokenizers(small_dataset)
    en = shipped["train"][0].read_text().splitlines()
    es = shipped["train"][1].read_text().splitlines()
    meta = json.loads((small_dataset / "meta.json").read_text())
    assert len(ds) == meta["splits"]["train"]["pairs"] == 2000 - sum(meta["splits"]["train"]["filtered"].values())
    for i in (0, 17, len(ds) - 1):
        s, t = ds[i]
        assert tok.decode(s) in en and tok.decode(t) in es
    assert int(ds.src_lengths.sum()) == meta["splits"]["train"]["src_tokens"]
    valid = ParallelDataset(small_dataset, "valid")
    assert valid.text("tgt") == shipped["valid"][1].read_text().splitlines()  # references kept whole
    with pytest.raises(KeyError, match="no 'dev' split"):
        ParallelDataset(small_dataset, "dev")


def test_meta_records_inputs_and_vocabulary(small_dataset, shipped):
    import hashlib

    meta = json.loads((small_dataset / "meta.json").read_text())
    en = str(shipped["train"][0])
    assert meta["inputs"][en]["sha256"] == hashlib.sha256(Path(en).read_bytes()).hexdigest()
    assert meta["vocab"]["src"]["size"] == 1000 and meta["joint_vocab"]
    assert meta["vocab"]["src"]["sha256"] == hashlib.sha256((small_dataset / "spm.model").read_bytes()).hexdigest()


def test_separate_vocabularies_and_tsv(tmp_path):
    src, tgt = corpus(tmp_path)
    tsv = write(tmp_path / "a.tsv", [f"{s}\t{t}" for s, t in zip(src.read_text().splitlines(), tgt.read_text().splitlines())])
    meta = prepare({"train": (tsv,)}, tmp_path / "sep", PrepareOptions(vocab_size=300, joint_vocab=False, **QUIET), log=lambda *a: None)
    assert meta["vocab"]["src"]["file"] == "spm.src.model" and meta["vocab"]["tgt"]["file"] == "spm.tgt.model"
    s, t = load_tokenizers(tmp_path / "sep")
    assert s.sha256 != t.sha256 and meta["splits"]["train"]["pairs"] == 300


def test_vocabulary_sample_takes_whole_pairs_and_is_seeded(tmp_path):
    from aiayn.data.binarize import _sample_lines

    src, tgt = corpus(tmp_path, n=300, tgt_lines=[f"line {i}" for i in range(300)])
    assert _sample_lines([src, tgt], 300, 600, seed=1, out=tmp_path) == [src, tgt]  # small enough: every line
    (tmp_path / "s1").mkdir(), (tmp_path / "s2").mkdir(), (tmp_path / "s3").mkdir()
    a = _sample_lines([src, tgt], 300, 100, seed=1, out=tmp_path / "s1")
    b = _sample_lines([src, tgt], 300, 100, seed=1, out=tmp_path / "s2")
    c = _sample_lines([src, tgt], 300, 100, seed=2, out=tmp_path / "s3")
    picked = [int(t.split()[1]) for t in a[1].read_text().splitlines()]
    assert len(picked) == 50 and picked == sorted(set(picked))  # 100 lines: 50 pairs, each once, in corpus order
    src_lines = src.read_text().splitlines()
    assert a[0].read_text().splitlines() == [src_lines[i] for i in picked]  # the same pairs from both sides
    assert a[1].read_text() == b[1].read_text() != c[1].read_text()
    meta = run_prepare(tmp_path, *corpus(tmp_path / "s1"), max_spm_sentences=200)  # from a sample; no sample file left
    assert meta["splits"]["train"]["pairs"] == 300 and not list((tmp_path / "out").glob("*.sample"))


# ---------------------------------------------------------------- bad input
def test_line_count_mismatch_reports_both_counts(tmp_path):
    src = write(tmp_path / "a.en", ["one", "two", "three"])
    tgt = write(tmp_path / "a.es", ["uno", "dos"])
    with pytest.raises(CorpusError, match=r"a\.en has 3 lines but .*a\.es has 2"):
        run_prepare(tmp_path, src, tgt)


@pytest.mark.parametrize(
    "raw, kind, message",
    [
        (b"good line\nbad \xff\xfe line\nok\n", "invalid_utf8", r"a\.es, line 2: invalid UTF-8 \(byte 4"),
        (b"good line\n\nok\n", "empty", r"a\.es, line 2: empty or whitespace-only line"),
        (b"good line\n   \t \nok\n", "empty", r"a\.es, line 2: empty or whitespace-only line"),
        (b"good line\nbell\x07here\nok\n", "control_char", r"a\.es, line 2: control character \(U\+0007 at column 5\)"),
    ],
)
def test_bad_lines_are_named_or_skipped(tmp_path, raw, kind, message):
    src, _ = corpus(tmp_path, n=3)
    tgt = write(tmp_path / "a.es", None, raw)
    with pytest.raises(CorpusError, match=message):
        run_prepare(tmp_path, src, tgt)
    assert not (tmp_path / "out").exists()
    # --skip-bad drops the pair and counts it; a bigger corpus so sentencepiece has text to learn from
    good = corpus(tmp_path, n=300)[0].read_text().splitlines()
    src = write(tmp_path / "b.en", good + ["x", "y", "z"])
    tgt = write(tmp_path / "b.es", None, ("\n".join(good) + "\n").encode() + raw)
    meta = run_prepare(tmp_path, src, tgt, skip_bad=True, max_ratio=0)
    assert meta["splits"]["train"]["skipped"] == {kind: 1}
    assert meta["splits"]["train"]["pairs"] == 302 and meta["splits"]["train"]["lines_read"] == 303


def test_tsv_with_wrong_fields(tmp_path):
    tsv = write(tmp_path / "a.tsv", ["a\tb", "only one field", "c\td"])
    with pytest.raises(CorpusError, match=r"a\.tsv, line 2: not exactly two tab-separated fields \(found 1\)"):
        prepare({"train": (tsv,)}, tmp_path / "out", PrepareOptions(vocab_size=300, **QUIET), log=lambda *a: None)


def test_crlf_and_bom_are_accepted(tmp_path):
    src, tgt = corpus(tmp_path)
    lines = src.read_text().splitlines()
    src.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    meta = run_prepare(tmp_path, src, tgt)
    assert meta["splits"]["train"]["pairs"] == 300
    tok, _ = load_tokenizers(tmp_path / "out")
    first, _ = ParallelDataset(tmp_path / "out")[0]
    assert tok.decode(first) == lines[0]


def test_length_filters_are_counted(tmp_path):
    src_lines = ["word " * 5] * 200 + ["long " * 80] * 7 + ["short"] * 5
    tgt_lines = ["WORD " * 5] * 200 + ["LONG " * 80] * 7 + ["much much much much much much much longer than that"] * 5
    src, tgt = corpus(tmp_path, src_lines=src_lines, tgt_lines=tgt_lines)
    meta = run_prepare(tmp_path, src, tgt, max_len=60, max_ratio=3.0)
    assert meta["splits"]["train"]["filtered"] == {"max_len": 7, "max_ratio": 5}
    assert meta["splits"]["train"]["pairs"] == 200


def test_output_exists_needs_force(tmp_path):
    src, tgt = corpus(tmp_path)
    run_prepare(tmp_path, src, tgt)
    with pytest.raises(FileExistsError, match="--force"):
        run_prepare(tmp_path, src, tgt)
    meta = prepare({"train": (src, tgt)}, tmp_path / "out", PrepareOptions(vocab_size=320, **QUIET), force=True, log=lambda *a: None)
    assert meta["vocab"]["src"]["size"] == 320 and json.loads((tmp_path / "out" / "meta.json").read_text())["vocab"]["src"]["size"] == 320


def test_failure_half_way_leaves_no_dataset(tmp_path, monkeypatch):
    import aiayn.data.binarize as binarize

    src, tgt = corpus(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(binarize, "_encode_split", boom)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tmp_path, src, tgt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.en", "a.es"]  # no out, no temp dir


@pytest.mark.slow
def test_killed_run_leaves_nothing_that_looks_complete(tmp_path):
    """SIGKILL mid-run (no chance to clean up): only a hidden temp dir remains, never --out."""
    words = [f"w{i}" for i in range(3000)]
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 30)) for _ in range(150000)]  # long enough to be mid-run on a fast CPU
    src, tgt = corpus(tmp_path, src_lines=lines, tgt_lines=lines)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiayn",
            "prepare",
            "--train-src",
            str(src),
            "--train-tgt",
            str(tgt),
            "--out",
            str(out),
            "--vocab-size",
            "4000",
            "--workers",
            "1",
        ],
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())


# ---------------------------------------------------------------- batching
def lengths(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 60, n), rng.integers(1, 60, n)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_pair_once_per_epoch_across_ranks(world_size):
    src_len, tgt_len = lengths()
    max_tokens = 500
    for epoch in (0, 1):
        seen = []
        counts = set()
        for rank in range(world_size):
            sampler = TokenBucketSampler(src_len, tgt_len, max_tokens, seed=7, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            counts.add(len(batches))
            for b in batches:
                assert len(b) * (src_len[b].max() + 1) <= max_tokens and len(b) * (tgt_len[b].max() + 1) <= max_tokens
                seen.extend(b)
        assert sorted(seen) == list(range(1000))
        assert len(counts) == 1  # every rank takes the same number of steps


def test_batches_group_lengths_and_shuffle_per_epoch():
    src_len, tgt_len = lengths()
    sampler = TokenBucketSampler(src_len, tgt_len, 800, seed=3)
    e0 = list(sampler)
    sampler.set_epoch(1)
    e1 = list(sampler)
    assert e0 != e1
    spread = np.mean([tgt_len[b].max() - tgt_len[b].min() for b in e0])
    assert spread < 4  # similar target lengths together (in steps of LENGTH_STEP = 4)
    padded = sum(len(b) * (tgt_len[b].max() + 1) for b in e0)
    assert (tgt_len + 1).sum() / padded > 0.9  # little target padding
    # the source side: these lengths are independent of the targets' (the worst case), yet sorting
    # by source within steps of target length pads far less than sorting by exact target length
    padded_src = sum(len(b) * (src_len[b].max() + 1) for b in e0)
    exact = make_batches(src_len, tgt_len, 800, np.lexsort((src_len, tgt_len)))
    padded_src_exact = sum(len(b) * (src_len[b].max() + 1) for b in exact)
    assert padded_src < 0.85 * padded_src_exact
    again = TokenBucketSampler(src_len, tgt_len, 800, seed=3)
    assert list(again) == e0  # same seed, same batches


def test_resume_mid_epoch_gives_exactly_the_rest():
    src_len, tgt_len = lengths()
    sampler = TokenBucketSampler(src_len, tgt_len, 600, seed=5, rank=1, world_size=2)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4)
    it = iter(sampler)
    head = [next(it) for _ in range(7)]
    resumed = TokenBucketSampler(src_len, tgt_len, 600, seed=5, rank=1, world_size=2)
    resumed.set_epoch(4, position=sampler.position)  # what the trainer saves and restores
    assert sampler.position == 7 and head + list(resumed) == full


def test_a_sentence_longer_than_max_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="sentence pair 1 has 3 source and 100 target tokens, more than max_tokens=50"):
        list(TokenBucketSampler(np.array([3, 2]), np.array([3, 99]), 50))


def test_collate_adds_eos_and_start_symbol():
    batch = collate([(np.array([5, 6, 7]), np.array([8])), (np.array([9]), np.array([10, 11]))], [4, 9], pad=0, start=2, eos=3)
    assert batch.src.tolist() == [[5, 6, 7, 3], [9, 3, 0, 0]]
    assert batch.tgt_in.tolist() == [[2, 8, 0], [2, 10, 11]]
    assert batch.tgt_out.tolist() == [[8, 3, 0], [10, 11, 3]]
    assert (batch.src_tokens, batch.tgt_tokens, batch.ids.tolist()) == (6, 5, [4, 9])


def test_dataloader_with_workers_gives_the_same_batches(small_dataset):
    ds = ParallelDataset(small_dataset)
    sampler = TokenBucketSampler(ds.src_lengths, ds.tgt_lengths, 1500, seed=1)
    inline = [collate([ds[i] for i in b], b, 0, 2, 3) for b in sampler]
    sampler.set_epoch(0)
    loaded = list(make_dataloader(ds, sampler, pad=0, start=2, eos=3, num_workers=2))
    assert len(loaded) == len(inline)
    for a, b in zip(inline, loaded):
        assert a.src.equal(b.src) and a.tgt_in.equal(b.tgt_in) and a.tgt_out.equal(b.tgt_out)


# ---------------------------------------------------------------- the real corpus
@pytest.mark.slow
def test_bible_corpus_end_to_end(bible_dir, tmp_path):
    """Prepare the shared Bible corpus; the counts are those of its README (28,006 / 1,000 / 1,000)."""
    splits = {s: (bible_dir / f"{s}.en", bible_dir / f"{s}.es") for s in ("train", "valid", "test")}
    meta = prepare(splits, tmp_path / "bible", PrepareOptions(vocab_size=8000, progress=False), log=lambda *a: None)
    readme = (bible_dir / "README.md").read_text()
    for split, pairs in (("train", 28006), ("valid", 1000), ("test", 1000)):
        assert re.search(rf"\|\s*{split}\s*\|\s*{pairs:,}\s*\|", readme)
        assert meta["splits"][split]["lines_read"] == pairs
        assert meta["splits"][split]["pairs"] == pairs - sum(meta["splits"][split]["filtered"].values())
        assert not meta["splits"][split]["skipped"]
    assert meta["splits"]["valid"]["filtered"] == {} and meta["splits"]["test"]["filtered"] == {}
    assert meta["inputs"][str(bible_dir / "train.en")]["sha256"] == "78c568072a1b0f69d5d187b1252376e22cc81d5dfe6346d1f2f1bb2024f7b4fe"
    ds = ParallelDataset(tmp_path / "bible", "test")
    tok, _ = load_tokenizers(tmp_path / "bible")
    first_en = (bible_dir / "test.en").read_text().splitlines()[0]
    assert tok.decode(ds[0][0]) == first_en
