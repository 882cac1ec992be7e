"""A checkpoint written before the block set (format aiayn-transformer/1, by the code of commit
5bd5497; fixtures/make_tiny_aiayn_transformer_1.py made it) still loads, gives the translations
and logits it gave then, and fine-tunes."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from aiayn.generate import Translator
from aiayn.io.checkpoint import FORMAT_1, load_model, read_metadata
from aiayn.tasks.translation import vocabulary_id

FIXTURES = Path(__file__).parent / "fixtures"
OLD = FIXTURES / "tiny-aiayn-transformer-1.safetensors"
EXPECTED = json.loads((FIXTURES / "tiny-aiayn-transformer-1.json").read_text())


def test_an_old_checkpoint_translates_as_it_did():
    assert read_metadata(OLD)["format"] == FORMAT_1
    model, ckpt = load_model(OLD)
    assert (ckpt.architecture, ckpt.task) == ("transformer", "translation")
    texts = EXPECTED["texts"]
    for name, beam in (("beam4", 4), ("greedy", 1)):
        got = Translator(model, *ckpt.tokenizers, beam=beam).translate(texts)
        assert [t.tokens for t in got] == [e["tokens"] for e in EXPECTED[name]], name
        assert [t.text for t in got] == [e["text"] for e in EXPECTED[name]], name
        for t, e in zip(got, EXPECTED[name]):
            assert abs(t.score - e["score"]) <= 1e-4 * max(1.0, abs(e["score"])), (name, t.score, e["score"])
    cfg = ckpt.config
    src = torch.tensor([ckpt.src_tokenizer.encode([texts[0]])[0] + [cfg.eos_id]])
    tgt = torch.tensor([[cfg.decoder_start_id] + EXPECTED["beam4"][0]["tokens"]])
    with torch.no_grad():
        logits = model(src, tgt)[0, :3]
    expected = torch.tensor(EXPECTED["logits_first_text"])
    torch.testing.assert_close(logits, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def run(*args):
    return subprocess.run([sys.executable, "-m", "aiayn", *map(str, args)], capture_output=True, text=True)


def test_an_old_checkpoint_fine_tunes(shipped, tmp_path):
    src, tgt = shipped["train"]
    head = lambda path, n: "\n".join(path.read_text().splitlines()[:n]) + "\n"  # noqa: E731
    (tmp_path / "t.en").write_text(head(src, 200))
    (tmp_path / "t.es").write_text(head(tgt, 200))
    prep = run(
        "prepare",
        "--train-src",
        tmp_path / "t.en",
        "--train-tgt",
        tmp_path / "t.es",
        "--vocab-from",
        OLD,
        "--out",
        tmp_path / "data",
        "--workers",
        1,
    )
    assert prep.returncode == 0, prep.stderr
    tuned = run(
        "train",
        "--data",
        tmp_path / "data",
        "--init-from",
        OLD,
        "--config",
        "tiny",
        "--out",
        tmp_path / "run",
        "--max-updates",
        3,
        "--validate-every",
        0,
        "--valid-bleu",
        "false",
    )
    assert tuned.returncode == 0, tuned.stderr
    model, ckpt = load_model(tmp_path / "run")
    old, old_ckpt = load_model(OLD)
    assert ckpt.config == old_ckpt.config and vocabulary_id(*ckpt.tokenizers) == vocabulary_id(*old_ckpt.tokenizers)
    assert not torch.equal(model.encoder_layers[0].ffn.w1.weight, old.encoder_layers[0].ffn.w1.weight)  # it trained
