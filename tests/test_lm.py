"""Language-model data and training: `prepare --task lm` (checked text, BPE or characters, one token
stream), the window sampler, training through the generic trainer with bit-exact resume, and the CLI."""

import json

import numpy as np
import pytest
import torch

from aiayn.data.corpus import CorpusError
from aiayn.data.text import TextOptions, TokenStream, load_lm_tokenizer, prepare_text
from aiayn.tasks.lm import WindowSampler

TEXT = "In the beginning God created the heavens and the earth.\nThe earth was formless and empty.\n\nAnd God said, Let there be light.\n"


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture
def char_data(tmp_path):
    train = write(tmp_path / "train.txt", TEXT * 40)
    valid = write(tmp_path / "valid.txt", TEXT)
    prepare_text({"train": [train], "valid": [valid]}, tmp_path / "data", TextOptions(char=True, progress=False), log=lambda *a: None)
    return tmp_path / "data"


def test_the_token_stream_decodes_to_the_documents_between_separators(tmp_path, char_data):
    meta = json.loads((char_data / "meta.json").read_text())
    assert meta["task"] == "lm" and meta["vocab"]["kind"] == "chars"
    tok = load_lm_tokenizer(char_data)
    stream = TokenStream(char_data, "valid").tokens
    docs = [tok.decode(part) for part in np.split(np.asarray(stream), np.flatnonzero(np.asarray(stream) == tok.eos_id))]
    assert [d for d in docs if d] == [
        "In the beginning God created the heavens and the earth.\nThe earth was formless and empty.",
        "And God said, Let there be light.",
    ]
    assert stream[0] == stream[-1] == tok.eos_id and meta["splits"]["valid"]["documents"] == 2


def test_bpe_vocabulary_is_byte_exact(tmp_path):
    text = "Tabs\tand  double spaces, “quotes”, 1234 and émoji 😀 survive.\nA second line.\n"
    train = write(tmp_path / "t.txt", text * 50)
    prepare_text({"train": [train]}, tmp_path / "d", TextOptions(vocab_size=300, progress=False, documents="file"), log=lambda *a: None)
    tok = load_lm_tokenizer(tmp_path / "d")
    doc = text.rstrip("\n")
    assert tok.decode(tok.encode([doc])[0]) == doc
    stream = np.asarray(TokenStream(tmp_path / "d").tokens)
    assert tok.decode(stream) == "\n".join([doc] * 50)  # one document (--documents file), lines joined by newlines


@pytest.mark.parametrize(
    "raw,what", [(b"good line\nbad \xff byte\n", "line 2: invalid UTF-8"), (b"ok\nok\nnul \x00 here\n", "line 3: control character")]
)
def test_bad_text_names_the_file_and_line_and_leaves_nothing(tmp_path, raw, what):
    bad = write(tmp_path / "bad.txt", raw)
    with pytest.raises(CorpusError, match=f"bad.txt, {what}"):
        prepare_text({"train": [bad]}, tmp_path / "out", TextOptions(char=True, progress=False), log=lambda *a: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    meta = prepare_text({"train": [bad]}, tmp_path / "out", TextOptions(char=True, skip_bad=True, progress=False), log=lambda *a: None)
    assert sum(meta["splits"]["train"]["skipped"].values()) == 1


def test_the_window_sampler_covers_the_stream_once_an_epoch_and_splits_it_among_ranks():
    n, T = 1000, 16
    s = WindowSampler(n, T, batch_windows=4, seed=3)
    batches = list(s)
    starts = np.concatenate(batches)
    assert all(len(b) == 4 for b in batches) and len(starts) >= (n - T) // T - 4
    n_windows = (n - 1 - starts.min() % T) // T
    assert len(starts) == n_windows // 4 * 4  # every window but a last partial batch's
    assert len(set(starts)) == len(starts) and (np.diff(np.sort(starts)) % T == 0).all()  # consecutive windows, none twice
    s.set_epoch(0, position=5)
    assert np.array_equal(np.concatenate(list(s)), starts[5 * 4 :])  # resumed mid-epoch: the same batches
    ranks = [np.concatenate(list(WindowSampler(n, T, 2, seed=3, rank=r, world_size=2))) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and set(ranks[0]) | set(ranks[1]) == set(starts)


def test_each_epoch_cuts_the_stream_at_another_phase():
    s = WindowSampler(10_000, 64, 8, seed=1)
    phases = set()
    for e in range(8):
        s.set_epoch(e)
        phases.add(int(np.concatenate(list(s)).min()) % 64)
    assert len(phases) > 1


def train(data, run, **values):
    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    cfg = {
        "model": {"preset": "gpt-tiny", "n_layers": 2, "context": 32, "dropout": 0.1, "attn_dropout": 0.1},
        "max_tokens": 256,
        "lr_schedule": "inverse_sqrt",
        "lr": 0.003,
        "warmup_steps": 5,
        "label_smoothing": 0.0,
        "validate_every": 10,
        "save_every": 10,
        "log_every": 100,
        **values,
    }
    return Trainer(TrainConfig.from_dict(cfg), data, run, resume=values.pop("resume", False), log=lambda *a: None, progress=False)


def test_training_lowers_the_loss_and_resume_is_bit_exact(char_data, tmp_path):
    from safetensors.torch import load_file

    whole = train(char_data, tmp_path / "whole", max_updates=20)
    whole.train()
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    valid = [e for e in log if e["type"] == "valid"]
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"] and "valid_bpc" in valid[-1]
    assert valid[-1]["valid_bpc"] == pytest.approx(valid[-1]["valid_nll"], rel=1e-3)  # characters: bits per token = bits per char
    train(char_data, tmp_path / "cut", max_updates=10).train()
    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    saved = __import__("yaml").safe_load((tmp_path / "cut" / "config.yaml").read_text())["train"]
    cfg = TrainConfig.from_dict({**saved, "max_updates": 20})
    Trainer(cfg, char_data, tmp_path / "cut", resume=True, log=lambda *a: None, progress=False).train()
    a = load_file(tmp_path / "whole" / "checkpoints" / "step-00000020.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-00000020.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # checkpoint averaging (§6.1) works on a language model as on a translation model
    from aiayn.io.checkpoint import average_checkpoints, load_model

    steps = [tmp_path / "whole" / "checkpoints" / f"step-{n:08d}.safetensors" for n in (10, 20)]
    average_checkpoints(steps, tmp_path / "avg.safetensors")
    model, ckpt = load_model(tmp_path / "avg.safetensors")
    first = load_file(steps[0])
    key = "layers.0.ffn.w1.weight"
    torch.testing.assert_close(model.state_dict()[key], (first[key] + a[key]) / 2)
    assert ckpt.task == "lm" and ckpt.tokenizer.sha256 == load_lm_tokenizer(char_data).sha256


def test_a_translation_preset_on_text_is_refused(char_data, tmp_path):
    with pytest.raises(ValueError, match="lm dataset.*gpt-tiny"):
        train(char_data, tmp_path / "r", model={"preset": "tiny"})


def test_the_cli_prepares_trains_generates_and_evaluates(tmp_path, capsys):
    from aiayn.cli import main

    train_txt = write(tmp_path / "train.txt", TEXT * 30)
    write(tmp_path / "valid.txt", TEXT)
    main(
        [
            "prepare",
            "--task",
            "lm",
            "--train-text",
            str(train_txt),
            "--valid-text",
            str(tmp_path / "valid.txt"),
            "--vocab-size",
            "400",
            "--out",
            str(tmp_path / "d"),
        ]
    )
    main(
        [
            "train",
            "--data",
            str(tmp_path / "d"),
            "--config",
            "gpt-tiny",
            "--out",
            str(tmp_path / "run"),
            "--max-updates",
            "30",
            "--model.n_layers",
            "2",
            "--model.context",
            "32",
            "--max-tokens",
            "256",
            "--validate-every",
            "30",
            "--save-every",
            "30",
        ]
    )
    capsys.readouterr()
    main(["generate", "--model", str(tmp_path / "run"), "--prompt", "In the", "--max-new-tokens", "8", "--seed", "1"])
    out = capsys.readouterr()
    assert out.out.startswith("In the") and len(out.out) > len("In the\n") and "tokens/s" in out.err
    prompts = write(tmp_path / "prompts.txt", "And God\nThe earth\n")
    main(["generate", "--model", str(tmp_path / "run"), "--prompts", str(prompts), "--max-new-tokens", "5", "--temperature", "0"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["And God", "The earth"] and all(r["finish_reason"] in ("stop", "length") for r in rows)
    main(["evaluate", "--model", str(tmp_path / "run"), "--text", str(tmp_path / "valid.txt"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(2 ** result["loss"]) and result["bits_per_char"] > 0
