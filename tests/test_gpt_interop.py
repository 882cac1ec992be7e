"""GPT-2 interop: a GPT2LMHeadModel directory (made here, small and random) imports with equal
logits and equal greedy tokens to Hugging Face's generate, and an aiayn GPT exports to one that
from_pretrained loads with equal logits."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from aiayn.io.checkpoint import load_model  # noqa: E402


def hf_gpt2_dir(tmp_path, **overrides):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["In the beginning God created the heaven and the earth."] * 20, trainer)
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos, **overrides
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # biases and norms away from their zero/one init, so that a mixup shows
            p.add_(torch.randn_like(p) * 0.02)
    directory = tmp_path / "hf-gpt2"
    hf.save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    return directory, hf, tok


def test_imported_gpt2_has_hf_logits_and_greedy_tokens(tmp_path):
    from aiayn.cli import main
    from aiayn.generate.complete import GenerationOptions, Generator

    directory, hf, tok = hf_gpt2_dir(tmp_path)
    main(["import-hf", str(directory), "--out", str(tmp_path / "ours")])
    model, ckpt = load_model(tmp_path / "ours")
    assert ckpt.task == "lm" and ckpt.architecture == "gpt"
    ids = torch.tensor([tok.encode("In the beginning God").ids])
    with torch.no_grad():
        theirs, ours = hf(ids).logits, model(ids)
    torch.testing.assert_close(ours, theirs, atol=1e-5 * theirs.abs().max().item(), rtol=0)
    # greedy generation: the same tokens as generate (no bos before the prompt, as generate)
    gen = Generator(model, ckpt.tokenizer)
    got = gen.generate(["In the beginning God"], GenerationOptions(max_new_tokens=12, temperature=0))[0]
    expected = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=hf.config.eos_token_id)[0, ids.size(1) :].tolist()
    eos = hf.config.eos_token_id
    expected = expected[: expected.index(eos)] if eos in expected else expected
    assert got.tokens == expected
    assert got.text == tok.decode(expected)


def test_exported_gpt_loads_in_hf_with_equal_logits(tmp_path):
    from aiayn.cli import main

    directory, hf, tok = hf_gpt2_dir(tmp_path, tie_word_embeddings=True)
    main(["import-hf", str(directory), "--out", str(tmp_path / "ours")])
    main(["export", str(tmp_path / "ours"), "--format", "hf", "--out", str(tmp_path / "back")])
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    model, _ = load_model(tmp_path / "ours")
    ids = torch.randint(0, tok.get_vocab_size(), (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids), atol=1e-5 * hf(ids).logits.abs().max().item(), rtol=0)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "gpt2"
    assert (tmp_path / "back" / "tokenizer.json").is_file()


def test_a_trained_gpt_exports_too(tmp_path):
    from aiayn import models
    from aiayn.data.text import CharTokenizer, lm_tokenizer_assets
    from aiayn.interop.hf_gpt2 import export_gpt2
    from aiayn.io.checkpoint import save_model

    torch.manual_seed(1)
    _, cfg = models.preset_config("gpt-tiny", vocab_size=40, n_layers=2, context=32)
    model = models.build("gpt", cfg).eval()
    save_model(tmp_path / "m.safetensors", model, lm_tokenizer_assets(CharTokenizer("abc")), task="lm")
    export_gpt2(tmp_path / "m.safetensors", tmp_path / "hf")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 40, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids), atol=1e-5, rtol=0)


def test_a_config_of_another_model_is_refused(tmp_path):
    from aiayn.interop.hf_gpt2 import InteropError, gpt2_config

    with pytest.raises(InteropError, match="model_type"):
        gpt2_config({"model_type": "llama"})
    with pytest.raises(InteropError, match="scaled"):
        gpt2_config(
            {"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "vocab_size": 10, "scale_attn_by_inverse_layer_idx": True}
        )
