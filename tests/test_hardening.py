"""Bad input gets one clear line and loses nothing: the cases found by probing the CLI as a hostile
user would, each reproduced here, and a seeded property-based run over config values."""

import errno
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiayn.io.checkpoint import CheckpointError, atomic_write
from aiayn.train.config import TrainConfig, load_config


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "aiayn", *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


def refused(result, *phrases):
    """Exit status non-zero, no traceback, and the message names what was wrong."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# ---------------------------------------------------------------- options out of range: refused before any work
@pytest.mark.parametrize(
    "args, phrase",
    [
        (["translate", "--model", "m", "--chunk", "0"], "argument --chunk: expected ≥ 1, got '0'"),  # was: exit 0, nothing written
        (["translate", "--model", "m", "--max-tokens", "-5"], "argument --max-tokens: expected ≥ 1"),
        (["translate", "--model", "m", "--max-len-b", "-100"], "argument --max-len-b: expected ≥ 0"),
        (["translate", "--model", "m", "--alpha", "nan"], "argument --alpha: expected a finite number"),
        (["translate", "--model", "m", "--top-p", "0"], "argument --top-p: expected > 0 and ≤ 1"),
        (["translate", "--model", "m", "--beam", "0"], "argument --beam: expected ≥ 1"),
        (["train", "--data", "d", "--out", "o", "--max-updates", "-1"], "argument --max-updates: expected ≥ 0"),
        (["train", "--data", "d", "--out", "o", "--save-every", "-1"], "argument --save-every: expected ≥ 0"),
        (["prepare", "--train-tsv", "t", "--out", "o", "--max-len", "-1"], "argument --max-len: expected ≥ 0"),
        (["average", "run", "--last", "0", "--out", "a.safetensors"], "argument --last: expected ≥ 1"),
        (["average", "run", "--last", "-1", "--out", "a.safetensors"], "argument --last: expected ≥ 1"),
        (["serve", "--model", "m", "--port", "-1"], "argument --port: expected ≥ 0 and ≤ 65535"),
        (["serve", "--model", "m", "--timeout", "0"], "argument --timeout: expected > 0"),
    ],
)
def test_out_of_range_options_are_refused(args, phrase):
    refused(run(*args), phrase)


# ---------------------------------------------------------------- config values of the wrong type or range
@pytest.mark.parametrize(
    "overrides, phrase",
    [
        ({"lr": "nan"}, "lr: expected a finite number, got nan"),
        ({"lr": float("nan")}, "lr: expected a finite number"),
        ({"max_tokens": "lots"}, "max_tokens: expected a whole number, got 'lots'"),
        ({"update_freq": 0}, "update_freq: expected ≥ 1, got 0"),
        ({"label_smoothing": 1.5}, "label_smoothing: expected ≥ 0 and < 1"),
        ({"lr_schedule": "step"}, "lr_schedule: expected one of paper, inverse_sqrt, cosine, linear"),
        ({"model": [1, 2]}, "model: expected a mapping"),
        ({"model": {"preset": "tiny", "bogus": 1}}, "unknown model config keys: model.bogus"),
        ({"model": {"preset": "tiny", "dropout": 1.2}}, "model.dropout: expected ≥ 0 and < 1"),
        ({"model": {"preset": "huge"}}, "model.preset: unknown preset 'huge'"),
        ({"model": {"preset": "tiny", "d_model": 100, "n_heads": 3}}, "model.d_model=100 is not divisible by model.n_heads=3"),
        ({"adam_betas": [0.9]}, "adam_betas: expected two numbers in [0, 1)"),
        ({"valid_bleu": "yes"}, "valid_bleu: expected true or false"),
    ],
)
def test_bad_config_values_fail_with_the_key(overrides, phrase):
    with pytest.raises(ValueError) as e:
        load_config("tiny", overrides)
    assert phrase in str(e.value)


def test_null_means_the_default_and_1e_3_is_a_number():
    cfg = TrainConfig.from_dict({"max_updates": None, "device": None, "lr": "1e-3", "adam_eps": "1e-9", "model": {"preset": "tiny"}})
    assert (cfg.max_updates, cfg.device, cfg.lr, cfg.adam_eps) == (0, "auto", 1e-3, 1e-9)
    with pytest.raises(ValueError, match="d_model=128 is not divisible by n_heads=3"):
        TrainConfig.from_dict({"model": {"preset": "tiny", "n_heads": 3}})  # checked against the preset's d_model


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_tokens: 2048\nmodel: {preset: tiny\nlr: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml, line \d+, column \d+: not valid YAML"):
        load_config(str(bad))
    refused(run("train", "--data", tmp_path, "--out", tmp_path / "o", "--config", bad), "not valid YAML")


@settings(
    max_examples=int(os.environ.get("AIAYN_FUZZ_EXAMPLES", 150)),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "max_tokens",
                "update_freq",
                "lr",
                "warmup_steps",
                "label_smoothing",
                "max_updates",
                "save_every",
                "precision",
                "clip_norm",
                "valid_bleu",
                "model",
                "adam_betas",
                "bogus",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-5, 10**6),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=6),
            st.lists(st.integers(-1, 2), max_size=3),
            st.dictionaries(
                st.sampled_from(["preset", "d_model", "dropout", "n_heads", "xyz"]),
                st.one_of(st.sampled_from(["tiny", "base", "nope"]), st.integers(-2, 600), st.floats(-1, 2)),
                max_size=3,
            ),
        ),
        max_size=4,
    )
)
def test_any_config_is_accepted_or_refused_with_a_value_error(values):
    """Property: every dict either makes a config or raises ValueError (never a TypeError or worse)."""
    try:
        TrainConfig.from_dict(values)
    except ValueError:
        pass


# ---------------------------------------------------------------- other errors that were tracebacks
def test_evaluate_refuses_empty_files_and_unknown_tokenizers(tmp_path):
    (tmp_path / "a").write_text("")
    (tmp_path / "b").write_text("")
    refused(run("evaluate", "--hyp", tmp_path / "a", "--ref", tmp_path / "b"), "are empty: nothing to score")
    (tmp_path / "c").write_text("hola\n")
    refused(
        run("evaluate", "--hyp", tmp_path / "c", "--ref", tmp_path / "c", "--tokenize", "bogus"), "not a sacreBLEU tokenizer (one of 13a"
    )


def test_cuda_on_a_machine_without_it_is_a_clear_error():
    import torch

    from aiayn import runtime

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cannot use CUDA; use --device cpu"):
        runtime.device("cuda")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        runtime.device("gpu0")


def test_print_alignment_of_a_layer_the_model_lacks(trained_run, tmp_path):
    (tmp_path / "in.en").write_text("In the beginning\n")
    refused(
        run("translate", "--model", trained_run, "--input", tmp_path / "in.en", "--print-alignment", 99),
        "alignment layer 99: the model has 2 decoder layers",
    )


def test_a_damaged_meta_json_is_named(small_dataset, tmp_path):
    import shutil

    from aiayn.data import load_meta

    copy = tmp_path / "data"
    shutil.copytree(small_dataset, copy)
    (copy / "meta.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"meta\.json is damaged .*prepare the dataset again"):
        load_meta(copy)


def test_prepare_force_onto_a_file_fails_before_any_work(shipped, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    src, tgt = shipped["train"]
    refused(run("prepare", "--train-src", src, "--train-tgt", tgt, "--out", target, "--force"), "is a file, not a dataset directory")
    assert target.read_text() == "keep me"


def test_prepare_removes_what_a_killed_run_left(shipped, tmp_path):
    from aiayn.data import PrepareOptions, prepare

    out = tmp_path / "data"
    import socket

    stale = tmp_path / f".data.tmp-{socket.gethostname()}-999999999"  # no such process on this host
    elsewhere = tmp_path / ".data.tmp-another-host-999999999"  # another machine's: not ours to judge
    elsewhere.mkdir()
    stale.mkdir()
    (stale / "train.src.txt").write_text("half of something\n")
    alive = tmp_path / f".data.tmp-{os.getpid()}-other"  # not ours to remove: its name has no dead pid
    alive.mkdir()
    src, tgt = shipped["train"]
    messages = []
    prepare({"train": (src, tgt)}, out, PrepareOptions(vocab_size=1000, workers=1, progress=False), log=messages.append)
    assert not stale.exists() and alive.exists() and elsewhere.exists() and (out / "meta.json").is_file()
    assert any("left behind by an interrupted 'aiayn prepare'" in m for m in messages)


# ---------------------------------------------------------------- writes that fail
def test_a_write_into_a_missing_directory_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="the directory .*missing.* does not exist"):
        atomic_write(tmp_path / "missing" / "a.safetensors", lambda tmp: tmp.write_bytes(b"x"))


def test_a_library_error_on_a_full_disk_is_reported_as_one(tmp_path, monkeypatch):
    """safetensors and torch.save raise their own errors when the disk fills (SafetensorError,
    'unexpected pos'): they are reported with the path and the cause, and nothing is left."""
    import aiayn.io.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_nearly_full", lambda directory: True)

    def write(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 3072 vs 2816")

    with pytest.raises(CheckpointError, match=r"could not write .*a\.pt: \[enforce fail.*unexpected pos.* \(is the disk full\?\)"):
        atomic_write(tmp_path / "a.pt", write)
    assert list(tmp_path.iterdir()) == []


def test_average_into_a_missing_directory_is_a_clear_error(trained_run, tmp_path):
    refused(run("average", trained_run, "--last", 2, "--out", tmp_path / "missing" / "a.safetensors"), "does not exist")


def test_enospc_names_the_last_good_checkpoint(small_dataset, tmp_path, monkeypatch):
    import safetensors.torch

    from aiayn.train.trainer import Trainer

    cfg = dict(
        model={"preset": "tiny", "pre_norm": False, "d_model": 32, "d_ff": 64, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1},
        max_tokens=400,
        lr_schedule="inverse_sqrt",
        lr=0.003,
        warmup_steps=5,
        log_every=1000,
        validate_every=0,
        valid_bleu=False,
        save_every=2,
        threads=1,
    )
    Trainer(TrainConfig.from_dict({**cfg, "max_updates": 2}), small_dataset, tmp_path / "run", log=lambda *a: None, progress=False).train()

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CheckpointError, match=r"is the disk full\?.*the last good checkpoint is .*step-00000002\.safetensors"):
        Trainer(
            TrainConfig.from_dict({**cfg, "max_updates": 4}),
            small_dataset,
            tmp_path / "run",
            resume=True,
            log=lambda *a: None,
            progress=False,
        ).train()


def test_a_dataset_overwritten_with_random_bytes_is_reported_as_damaged(small_dataset, tmp_path):
    """Random bytes of the right size in a token array: token ids beyond the vocabulary, found at load."""
    import shutil

    import numpy as np

    from aiayn.data import ParallelDataset

    copy = tmp_path / "data"
    shutil.copytree(small_dataset, copy)
    path = copy / "train.tgt.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 65535, path.stat().st_size // 2, dtype=np.uint16).tobytes())
    with pytest.raises(ValueError, match=r"train\.tgt\.bin holds token id \d+, beyond the vocabulary of 1000: the dataset is damaged"):
        ParallelDataset(copy, "train")


def test_a_corpus_of_one_enormous_line_is_explained(tmp_path):
    """sentencepiece skips lines over its length limit: a text that is one 200 KB line left it nothing."""
    (tmp_path / "a.en").write_text("word " * 40_000 + "\n")
    (tmp_path / "a.es").write_text("palabra " * 40_000 + "\n")
    result = run(
        "prepare",
        "--train-src",
        tmp_path / "a.en",
        "--train-tgt",
        tmp_path / "a.es",
        "--out",
        tmp_path / "d",
        "--max-ratio",
        0,
        "--workers",
        1,
    )
    refused(result, "skips lines longer than 65,536 bytes", "split long lines")
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.tmp-*"))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 3 MiB tmpfs (needs root and mount(8)); skipped with the reason where the machine has neither."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount(8) here to make a small filesystem")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'not root'})")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


def test_training_onto_a_full_disk_says_so_and_leaves_nothing_half_written(small_dataset, small_filesystem):
    result = run(
        "train", "--data", small_dataset, "--config", "tiny", "--out", small_filesystem / "run", "--max-updates", 2,
        "--save-every", 1, "--validate-every", 0, "--valid-bleu", "false", "--model.d-model", 96, "--model.d-ff", 256,
    )  # fmt: skip
    refused(result, "is the disk full?")
    ckpts = small_filesystem / "run" / "checkpoints"
    assert not [p for p in ckpts.rglob("*") if ".tmp-" in p.name]
    for weights in ckpts.glob("step-*.safetensors"):  # whatever is there under a real name is whole
        from aiayn.io.checkpoint import read_checkpoint

        read_checkpoint(weights)


def fill(where, leave: int = 64 << 10):
    """Fill a small filesystem but for `leave` bytes (one file, "filler")."""
    import shutil

    free = shutil.disk_usage(where).free
    with open(where / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return where / "filler"


def test_translation_and_export_onto_a_full_disk_say_so(trained_run, small_filesystem, tmp_path):
    """translate streams its output: a full disk is reported with the path and how many translations
    it holds. An export is written aside and renamed: it leaves nothing."""
    filler = fill(small_filesystem, leave=16 << 10)
    text = tmp_path / "in.en"
    text.write_text("In the beginning God created the heavens and the earth.\n" * 3000)  # ~150 KB of output: more than is left
    out = small_filesystem / "out.es"
    result = run(
        "translate", "--model", trained_run, "--input", text, "--output", out, "--beam", 1, "--chunk", 100
    )  # fills after ~4 chunks
    refused(result, f"could not write {out}", "is the disk full?", "it holds the first")
    assert sorted(small_filesystem.iterdir()) == sorted([filler, out])
    out.unlink()
    for fmt in ("hf", "ctranslate2"):
        refused(run("export", trained_run, "--format", fmt, "--out", small_filesystem / fmt), f"could not write {small_filesystem / fmt}")
        assert list(small_filesystem.iterdir()) == [filler]


def test_prepare_onto_a_full_disk_says_so(shipped, small_filesystem):
    filler = fill(small_filesystem)
    src, tgt = shipped["train"]
    result = run(
        "prepare", "--train-src", src, "--train-tgt", tgt, "--out", small_filesystem / "data", "--workers", 1, "--vocab-size", 1000
    )
    refused(result, "is the disk full?")
    assert list(small_filesystem.iterdir()) == [filler]
