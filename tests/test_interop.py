"""Interop: import Hugging Face Marian (OPUS-MT) models, export to Hugging Face and CTranslate2.

Nothing is downloaded: the Marian models are small random MarianMTModels built from a MarianConfig
(swish, scaled embeddings, a non-zero final_logits_bias) with sentencepiece models trained here on
the shipped corpus, laid out as OPUS-MT ships them: source.spm and target.spm with one vocab.json
whose ids are not sentencepiece's (</s> 0, <unk> 1, ..., <pad> last).
"""

import io
import json
import pickle
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
ctranslate2 = pytest.importorskip("ctranslate2")

from aiayn.cli import main  # noqa: E402
from aiayn.data.tokenizer import Tokenizer  # noqa: E402
from aiayn.generate import (  # noqa: E402
    SearchOptions,
    Translator,
    beam_search,
    max_lengths,
    special_tokens,
)
from aiayn.generate.translate import source_batch  # noqa: E402
from aiayn.interop.ctranslate2 import CTranslate2Translator, export_ctranslate2, translate_ctranslate2  # noqa: E402
from aiayn.interop.hf_marian import InteropError, export_marian, import_marian, permute_residual, residual_permutation  # noqa: E402
from aiayn.io.checkpoint import load_model, save_model  # noqa: E402
from aiayn.models import Transformer, TransformerConfig  # noqa: E402
from aiayn.tasks.translation import tokenizer_assets  # noqa: E402


def fixed_cap(model, src, n):
    """Search arguments: the model's special ids, and a cap of n output tokens for every sentence."""
    return dict(special=special_tokens(model), max_len=torch.full((src.size(0),), n))


MAX_LENGTH = 24  # HF generate's max_length (decoder start included): aiayn's cap is MAX_LENGTH - 1 tokens, EOS included
CAPPED = MAX_LENGTH - 2  # output tokens (EOS excluded) of a hypothesis that reached the cap


def train_marian_spm(path, size: int) -> bytes:
    """A sentencepiece model with OPUS-MT's ids (<unk> 0, <s> 1, </s> 2, no <pad>)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(path),
        model_writer=model,
        vocab_size=size,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def spm_pieces(proto: bytes) -> list[str]:
    tok = Tokenizer(proto)
    return [tok.sp.id_to_piece(i) for i in range(tok.vocab_size) if not (tok.sp.is_control(i) or tok.sp.is_unknown(i))]


def marian_vocab(*protos: bytes, size: int | None = None) -> dict[str, int]:
    """OPUS-MT's layout: </s> 0, <unk> 1, the pieces of the given models, a language code, <pad> last."""
    vocab = {"</s>": 0, "<unk>": 1}
    for proto in protos:
        for piece in spm_pieces(proto):
            vocab.setdefault(piece, len(vocab))
    vocab.setdefault(">>es<<", len(vocab))
    while size and len(vocab) < size - 1:
        vocab[f"<filler_{len(vocab)}>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def make_marian(out, src_spm: bytes, tgt_spm: bytes, vocab: dict, target_vocab: dict | None = None, seed: int = 0, **config):
    """A random MarianMTModel saved with save_pretrained, plus OPUS-MT's tokenizer files."""
    from transformers import MarianConfig, MarianMTModel

    V, V_tgt = len(vocab), len(target_vocab or vocab)
    pad = vocab["<pad>"]
    cfg = MarianConfig(
        **{
            "vocab_size": V,
            "decoder_vocab_size": V_tgt,
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "activation_function": "swish",
            "scale_embedding": True,
            "pad_token_id": pad,
            "eos_token_id": 0,
            "decoder_start_token_id": pad,
            "forced_eos_token_id": 0,
            "max_position_embeddings": 256,
            "share_encoder_decoder_embeddings": target_vocab is None,
            **config,
        }
    )
    torch.manual_seed(seed)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():  # weights large enough for peaked, varied outputs; random layer norms and biases
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name or "shared" in name:
                p.normal_(0, 0.15)
            else:
                p.normal_(0, 0.5 if p.dim() == 2 else 0.1)
        for emb in (model.model.encoder.embed_tokens, model.model.decoder.embed_tokens):
            emb.weight[pad] = 0  # Marian starts decoding from a zero embedding
        model.model.decoder.embed_tokens.weight[0] *= 0.3  # </s>: a logit mostly its bias, for outputs of varied lengths
        bias = 0.5 * torch.randn(V_tgt)
        bias[0] += 3.5
        bias[pad] = -20.0  # <pad> is never a target (CTranslate2 removes it from the softmax: keep its mass negligible)
        model.final_logits_bias.copy_(bias[None])
    model.generation_config = transformers.GenerationConfig(
        bad_words_ids=[[pad]],
        decoder_start_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        pad_token_id=pad,
        num_beams=4,
        max_length=MAX_LENGTH,
    )
    model.save_pretrained(out)
    (out / "source.spm").write_bytes(src_spm)
    (out / "target.spm").write_bytes(tgt_spm)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    tok_cfg = {"separate_vocabs": target_vocab is not None, "model_max_length": 512}
    if target_vocab is not None:
        (out / "target_vocab.json").write_text(json.dumps(target_vocab, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return model


@pytest.fixture(scope="module")
def spms(shipped):
    en, es = shipped["train"]
    return train_marian_spm(en, 300), train_marian_spm(es, 350)


@pytest.fixture(scope="module")
def marian_dir(spms, tmp_path_factory):
    out = tmp_path_factory.mktemp("marian") / "opus-mt-en-es"
    make_marian(out, *spms, marian_vocab(*spms))
    return out


@pytest.fixture(scope="module")
def hf(marian_dir):
    from transformers import MarianMTModel, MarianTokenizer

    return MarianMTModel.from_pretrained(marian_dir).eval(), MarianTokenizer.from_pretrained(marian_dir)


@pytest.fixture(scope="module")
def imported(marian_dir, tmp_path_factory):
    return import_marian(marian_dir, tmp_path_factory.mktemp("imported"))


@pytest.fixture(scope="module")
def texts(shipped):
    return shipped["test"][0].read_text().splitlines()[:24]


def hf_batch(tok, texts):
    return tok(texts, return_tensors="pt", padding=True)


def teacher_forced_logits(model, hf_model, batch, cfg):
    """aiayn's and HF's logits for the same padded source batch and some decoder input."""
    src = batch.input_ids
    tgt_in = torch.cat([torch.full((src.size(0), 1), cfg.decoder_start_id), src[:, :-1].clamp(max=cfg.tgt_vocab_size - 1)], 1)
    tgt_in = tgt_in.masked_fill(tgt_in.eq(cfg.pad_id), cfg.unk_id)
    tgt_in[:, 0] = cfg.decoder_start_id
    with torch.no_grad():
        ours = model(src, tgt_in)
        theirs = hf_model(input_ids=src, attention_mask=batch.attention_mask, decoder_input_ids=tgt_in).logits
    return ours, theirs


def generated(sequences, eos: int) -> list[list[int]]:
    """HF generate's output rows without the start symbol, cut at EOS."""
    out = []
    for row in sequences.tolist():
        row = row[1:]
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


# ---------------------------------------------------------------- import
def test_tokenizer_ids_are_marian_tokenizers(imported, hf, texts):
    _, ckpt = load_model(imported)
    _, tok = hf
    src_tok, tgt_tok = ckpt.tokenizers
    assert src_tok is not tgt_tok and src_tok.vocab == tgt_tok.vocab  # two sentencepiece models, one vocab.json
    for text in [*texts[:8], ">>es<< In the beginning", "Ωμέγα never seen"]:
        assert src_tok.encode([text])[0] + [src_tok.eos_id] == tok(text).input_ids
    assert (src_tok.pad_id, src_tok.eos_id, src_tok.unk_id) == (len(src_tok.vocab) - 1, 0, 1)
    ids = tgt_tok.encode(["Y dijo Dios: Sea la luz"])[0]
    assert tgt_tok.decode(ids) == "Y dijo Dios: Sea la luz"
    for text in texts[:4]:  # English pieces, most unknown to target.spm: joined as MarianTokenizer joins them
        ids = [i for i in src_tok.encode([text])[0] if i != src_tok.unk_id]
        assert tgt_tok.decode(ids) == tok.decode(ids, skip_special_tokens=True, use_source_tokenizer=False)
    assert pickle.loads(pickle.dumps(tgt_tok)).encode(["la luz"]) == tgt_tok.encode(["la luz"])
    assert src_tok.sha256 != Tokenizer(src_tok.proto).sha256  # the mapping is part of the vocabulary's identity


def test_imported_logits_equal_hf(imported, hf, texts):
    model, ckpt = load_model(imported)
    hf_model, tok = hf
    cfg = model.config
    assert (cfg.activation, cfg.positional_layout, cfg.output_bias, cfg.scale_embedding) == ("swish", "concat", True, True)
    assert cfg.decoder_start_id == cfg.pad_id == hf_model.config.pad_token_id and cfg.eos_id == 0
    assert model.final_logits_bias.abs().sum() > 0
    batch = hf_batch(tok, texts[:12])  # padded: sentences of different lengths
    ours, theirs = teacher_forced_logits(model, hf_model, batch, cfg)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_search_equals_hf_generate(imported, hf, texts, alpha):
    """early_stop="hf" reproduces generate's default exactly (its stopping heuristic, forced EOS at the cap)."""
    model, _ = load_model(imported)
    hf_model, tok = hf
    batch = hf_batch(tok, texts)
    theirs = generated(hf_model.generate(**batch, num_beams=4, length_penalty=alpha, max_length=MAX_LENGTH), eos=0)
    ours = beam_search(
        model, batch.input_ids, **fixed_cap(model, batch.input_ids, MAX_LENGTH - 1), beam=4, alpha=alpha, lp_style="power", early_stop="hf"
    )
    assert [h[0].tokens for h in ours] == theirs
    lengths = {len(t) for t in theirs}
    assert len(lengths) >= 2 and CAPPED in lengths  # varied: some end early, some reach the cap


@pytest.mark.parametrize("early_stopping, rule", [("never", False), (True, "beam")])
def test_other_stopping_rules_agree_with_hf_below_the_cap(imported, hf, texts, early_stopping, rule):
    """generate(early_stopping="never") is aiayn's exact rule, early_stopping=True its "beam" rule; only the
    cap differs (HF forces EOS with log-probability 0, aiayn with its own), so the results agree on every
    sentence whose HF result did not reach the cap."""
    model, _ = load_model(imported)
    hf_model, tok = hf
    batch = hf_batch(tok, texts)
    theirs = generated(
        hf_model.generate(**batch, num_beams=4, length_penalty=0.6, max_length=MAX_LENGTH, early_stopping=early_stopping), eos=0
    )
    ours = [
        h[0].tokens
        for h in beam_search(
            model,
            batch.input_ids,
            **fixed_cap(model, batch.input_ids, MAX_LENGTH - 1),
            beam=4,
            alpha=0.6,
            lp_style="power",
            early_stop=rule,
        )
    ]
    below = [(o, t) for o, t in zip(ours, theirs) if len(t) < CAPPED]
    assert len(below) >= 5 and all(o == t for o, t in below)


def test_separate_vocabularies(spms, texts, tmp_path):
    """Unshared embeddings with a target_vocab.json (separate_vocabs), both of one size with <pad> last."""
    from transformers import MarianMTModel, MarianTokenizer

    size = max(len(marian_vocab(spms[0])), len(marian_vocab(spms[1])))
    src_vocab, tgt_vocab = marian_vocab(spms[0], size=size), marian_vocab(spms[1], size=size)
    make_marian(tmp_path / "m", *spms, src_vocab, tgt_vocab, seed=1, activation_function="relu", scale_embedding=False)
    model, ckpt = load_model(import_marian(tmp_path / "m", tmp_path / "imported"))
    assert not model.config.share_embeddings and ckpt.src_tokenizer.vocab != ckpt.tgt_tokenizer.vocab
    hf_model, tok = MarianMTModel.from_pretrained(tmp_path / "m").eval(), MarianTokenizer.from_pretrained(tmp_path / "m")
    ours, theirs = teacher_forced_logits(model, hf_model, hf_batch(tok, texts[:6]), model.config)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- errors
def broken_copy(marian_dir, tmp_path, edit=None, remove=()):
    d = tmp_path / "broken"
    shutil.copytree(marian_dir, d)
    for name in remove:
        (d / name).unlink()
    if edit:
        name, change = edit
        data = json.loads((d / name).read_text())
        change(data)
        (d / name).write_text(json.dumps(data))
    return d


@pytest.mark.parametrize(
    "edit, match",
    [
        (("config.json", lambda c: c.update(model_type="bart")), "model_type is 'bart'.*only Marian"),
        (("config.json", lambda c: c.update(architectures=["MarianForCausalLM"])), "only MarianMTModel"),
        (("config.json", lambda c: c.update(normalize_before=True)), "normalize_before=True is not Marian's"),
        (("config.json", lambda c: c.update(activation_function="gelu_new")), "activation_function 'gelu_new'"),
        (("config.json", lambda c: c.update(decoder_ffn_dim=256)), "encoder_ffn_dim=128 differs from decoder_ffn_dim=256"),
        (("vocab.json", lambda v: v.update({"<extra>": len(v)})), "vocabulary sizes do not match.*vocab.json ids: "),
        (("config.json", lambda c: c.update(vocab_size=c["vocab_size"] + 1)), "vocabulary sizes do not match: config.json vocab_size"),
        (("config.json", lambda c: c.update(pad_token_id=1)), "pad_token_id=1.*<pad>="),
    ],
)
def test_clear_errors_for_other_architectures_and_mismatches(marian_dir, tmp_path, edit, match):
    with pytest.raises(InteropError, match=match):
        import_marian(broken_copy(marian_dir, tmp_path, edit), tmp_path / "out")


@pytest.mark.parametrize("missing", ["vocab.json", "target.spm", "model.safetensors"])
def test_clear_error_for_a_missing_file(marian_dir, tmp_path, missing):
    with pytest.raises(FileNotFoundError, match=f"not a complete Marian checkpoint: missing .*{missing.split('.')[0]}"):
        import_marian(broken_copy(marian_dir, tmp_path, remove=[missing]), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="is not a directory holding a Marian checkpoint"):
        import_marian(tmp_path / "nowhere", tmp_path / "out")


def test_a_damaged_model_safetensors_is_a_clear_error(marian_dir, tmp_path):
    d = broken_copy(marian_dir, tmp_path)
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100])  # truncated
    with pytest.raises(InteropError, match=r"model\.safetensors is not a readable safetensors file \(truncated or damaged\?\)"):
        import_marian(d, tmp_path / "out")


def test_pytorch_model_bin_is_read_with_weights_only(marian_dir, hf, tmp_path):
    from safetensors.torch import load_file

    d = broken_copy(marian_dir, tmp_path, remove=["model.safetensors"])
    torch.save(load_file(marian_dir / "model.safetensors"), d / "pytorch_model.bin")
    model, _ = load_model(import_marian(d, tmp_path / "out"))
    reference, _ = load_model(import_marian(marian_dir, tmp_path / "ref"))
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- export to Hugging Face
@pytest.fixture(scope="module")
def hf_export(imported, tmp_path_factory):
    return export_marian(imported, tmp_path_factory.mktemp("export") / "hf")


def test_export_to_hf_round_trip(hf_export, hf, texts):
    from transformers import MarianMTModel, MarianTokenizer

    hf_model, tok = hf
    again, again_tok = MarianMTModel.from_pretrained(hf_export).eval(), MarianTokenizer.from_pretrained(hf_export)
    batch = hf_batch(tok, texts[:12])
    assert hf_batch(again_tok, texts[:12]).input_ids.tolist() == batch.input_ids.tolist()
    with torch.no_grad():
        tgt_in = torch.full((12, 5), 7).index_fill_(1, torch.tensor([0]), hf_model.config.decoder_start_token_id)
        a = hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=tgt_in).logits
        b = again(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=tgt_in).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    gen = again.generation_config
    assert gen.bad_words_ids == [[hf_model.config.pad_token_id]] and gen.forced_eos_token_id == 0 and gen.num_beams == 4


def test_export_of_an_aiayn_trained_model_to_hf(trained_run, shipped, tmp_path):
    """aiayn's own conventions (joint sentencepiece ids, pad 0 / eos 3, decoding from <s>, relu, interleaved
    sinusoids) carried into a MarianMTModel: same logits, and generate gives aiayn's translations."""
    from transformers import MarianMTModel, MarianTokenizer

    out = export_marian(trained_run, tmp_path / "hf")
    model, ckpt = load_model(trained_run)
    cfg = model.config
    assert cfg.positional_layout == "interleaved" and cfg.decoder_start_id == cfg.bos_id != cfg.pad_id
    hf_model, tok = MarianMTModel.from_pretrained(out).eval(), MarianTokenizer.from_pretrained(out)
    texts = shipped["test"][0].read_text().splitlines()[:16]
    batch = hf_batch(tok, texts)
    assert [[t for t in row if t != cfg.pad_id] for row in batch.input_ids.tolist()] == [
        ids + [cfg.eos_id] for ids in ckpt.src_tokenizer.encode(texts)
    ]
    ours, theirs = teacher_forced_logits(model, hf_model, batch, cfg)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    sequences = hf_model.generate(**batch, num_beams=4, length_penalty=0.6, max_length=64)
    hyps = Translator(model, *ckpt.tokenizers, beam=4, alpha=0.6, lp_style="power", max_len_a=0, max_len_b=63, early_stop="hf").translate(
        texts
    )
    assert [h.tokens for h in hyps] == generated(sequences, eos=cfg.eos_id)
    assert [h.text for h in hyps] == tok.batch_decode(sequences, skip_special_tokens=True)


def test_interleaved_positions_are_a_permutation_of_marians():
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", pre_norm=False, vocab_size=50, d_model=32, d_ff=64, n_heads=4, output_bias=True, dropout=0.0)
    model = Transformer(cfg).eval()
    perm = residual_permutation(cfg.d_model, "interleaved")
    concat = Transformer(TransformerConfig.from_dict({**cfg.to_dict(), "positional_layout": "concat"})).eval()
    concat.load_state_dict(permute_residual(model.state_dict(), perm))
    src, tgt = torch.randint(4, 50, (3, 7)), torch.randint(4, 50, (3, 5))
    torch.testing.assert_close(model(src, tgt), concat(src, tgt), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "change, match",
    [(dict(pre_norm=True), "pre-norm"), (dict(positional="learned"), "learned positions"), (dict(layer_norm_eps=1e-6), "ε=1e-06")],
)
def test_export_refuses_what_marian_cannot_express(change, match, imported, tmp_path):
    _, ckpt = load_model(imported)
    cfg = TransformerConfig.preset(
        "tiny", vocab_size=ckpt.config.src_vocab_size, pad_id=ckpt.config.pad_id, eos_id=0, unk_id=1, **{"pre_norm": False, **change}
    )
    save_model(tmp_path / "m.safetensors", Transformer(cfg), tokenizer_assets(*ckpt.tokenizers))
    with pytest.raises(InteropError, match=match):
        export_marian(tmp_path / "m.safetensors", tmp_path / "hf")


# ---------------------------------------------------------------- CTranslate2
def test_ctranslate2_equals_native_on_a_trained_model(trained_run, shipped, tmp_path):
    """float32: the same translations as native decoding, with CTranslate2's stopping rule
    (α = 0: stop when the best candidate ends = aiayn's exact rule; α ≠ 0: after `beam` finished = "beam").
    At the length cap (1·|source| + 50) the two differ by design (CTranslate2 ends a hypothesis
    without EOS, aiayn forces EOS), so sentences whose output reaches it are left out; this
    under-trained model loops on a few of them."""
    out = export_ctranslate2(trained_run, tmp_path / "ct2")
    model, ckpt = load_model(trained_run)
    texts = shipped["test"][0].read_text().splitlines()[:24]
    for alpha, rule in ((0.0, False), (0.6, "beam")):
        options = dict(beam=4, alpha=alpha, lp_style="power")
        native = Translator(model, *ckpt.tokenizers, early_stop=rule, **options).translate(texts)
        ct2 = CTranslate2Translator(out, **options).translate(texts)
        cfg = model.config  # the output cap the search applies: a·|source| + b (defaults 1 and 50)
        caps = max_lengths(
            model, source_batch([t.src_tokens for t in native], cfg.pad_id, cfg.eos_id), SearchOptions.max_len_a, SearchOptions.max_len_b
        )
        below_cap = [i for i, (a, b) in enumerate(zip(native, ct2)) if max(len(a.tokens) + 1, len(b.tokens)) < caps[i]]
        assert len(below_cap) >= 20
        assert [ct2[i].tokens for i in below_cap] == [native[i].tokens for i in below_cap]
        assert [ct2[i].text for i in below_cap] == [native[i].text for i in below_cap]
        # <pad> leaves CTranslate2's softmax (renormalized), aiayn masks it after: log(1 - p(<pad>)) a step
        assert [ct2[i].score for i in below_cap] == pytest.approx(
            [native[i].score for i in below_cap], rel=2e-4, abs=1e-2
        )  # a sum over the sentence: its tolerance grows with it
    assert translate_ctranslate2(out, texts[:4], beam=4, alpha=0.6) == [t.text for t in native[:4]]
    int8 = export_ctranslate2(trained_run, tmp_path / "ct2-int8", quantization="int8")
    assert json.loads((int8 / "aiayn.json").read_text())["extra"]["quantization"] == "int8"
    assert all(translate_ctranslate2(int8, texts[:4], beam=4, alpha=0.6))  # runs; near, not equal, to float32


def test_ctranslate2_of_an_imported_model(imported, hf_export, texts, tmp_path):
    """Same translations as CTranslate2's own TransformersConverter on the Hugging Face export, and as
    native aiayn wherever CTranslate2's result did not reach the cap (where CTranslate2 ends a hypothesis
    without EOS, aiayn only allows EOS)."""
    ours = export_ctranslate2(imported, tmp_path / "ct2")
    theirs = tmp_path / "ct2-hf"
    ctranslate2.converters.TransformersConverter(str(hf_export)).convert(str(theirs))
    options = dict(beam=4, alpha=0.6, lp_style="power", max_len_a=0, max_len_b=MAX_LENGTH - 1)
    translator = CTranslate2Translator(ours, **options)
    results = translator.translate(texts)
    reference = ctranslate2.Translator(str(theirs)).translate_batch(
        [translator.src_tok.encode_pieces(t) + ["</s>"] for t in texts],
        beam_size=4,
        length_penalty=0.6,
        max_decoding_length=MAX_LENGTH - 1,
        min_decoding_length=0,
        return_end_token=True,
    )
    assert [r.tokens for r in results] == [[translator.tgt_ids[p] for p in h.hypotheses[0] if p != "</s>"] for h in reference]
    model, ckpt = load_model(imported)
    native = Translator(model, *ckpt.tokenizers, early_stop="beam", **options).translate(texts)
    below = [(n.tokens, r.tokens) for n, r in zip(native, results) if len(r.tokens) < CAPPED]
    assert len(below) >= 5 and all(a == b for a, b in below)


# ---------------------------------------------------------------- fine-tuning and the command line
def test_fine_tune_an_imported_model(imported, shipped, tmp_path):
    from aiayn.data import ParallelDataset, PrepareOptions, load_tokenizers, prepare
    from aiayn.io.checkpoint import read_checkpoint
    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    en, es = shipped["valid"]
    data = tmp_path / "data"
    meta = prepare(
        {"train": (en, es), "valid": shipped["test"]},
        data,
        PrepareOptions(vocab_from=str(imported), workers=1, progress=False),
        log=lambda *a: None,
    )
    src_tok, tgt_tok = load_tokenizers(data)
    ckpt = read_checkpoint(imported)
    assert (src_tok.sha256, tgt_tok.sha256) == (ckpt.src_tokenizer.sha256, ckpt.tgt_tokenizer.sha256)
    assert not meta["joint_vocab"] and meta["special_ids"]["pad"] == ckpt.config.pad_id and meta["special_ids"]["eos"] == 0
    first = en.read_text().splitlines()[0]
    assert ParallelDataset(data)[0][0].tolist() == ckpt.src_tokenizer.encode([first])[0]
    cfg = TrainConfig.from_dict(
        {
            "max_tokens": 600,
            "max_updates": 3,
            "save_every": 0,
            "validate_every": 0,
            "valid_bleu": False,
            "log_every": 1,
            "threads": 2,
            "lr_schedule": "inverse_sqrt",
            "lr": 1e-4,
            "warmup_steps": 2,
        }
    )
    summary = Trainer(cfg, data, tmp_path / "run", init_from=imported, log=lambda *a: None, progress=False).train()
    assert summary["updates"] == 3
    tuned, tuned_ckpt = load_model(tmp_path / "run")
    assert tuned.config == ckpt.config and tuned_ckpt.src_tokenizer.sha256 == ckpt.src_tokenizer.sha256
    assert Translator(tuned, *tuned_ckpt.tokenizers, beam=2, max_len_b=5).translate(["In the beginning"])[0].tokens is not None
    # the same weights and sentencepiece models without the vocab.json mapping are another vocabulary
    unmapped = (Tokenizer(ckpt.src_tokenizer.proto), Tokenizer(ckpt.tgt_tokenizer.proto))
    save_model(tmp_path / "unmapped.safetensors", tuned, tokenizer_assets(*unmapped))
    with pytest.raises(ValueError, match="vocabulary differs.*--vocab-from"):
        Trainer(cfg, data, tmp_path / "run2", init_from=tmp_path / "unmapped.safetensors", log=lambda *a: None)


def test_command_line(marian_dir, trained_run, shipped, tmp_path, capsys):
    main(["import-hf", str(marian_dir), "--out", str(tmp_path / "imported")])
    assert (tmp_path / "imported" / "model.safetensors").is_file()
    main(["export", str(tmp_path / "imported"), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "vocab.json").is_file()
    main(["export", str(trained_run), "--format", "ctranslate2", "--out", str(tmp_path / "ct2")])
    source = tmp_path / "in.en"
    source.write_text("\n".join(shipped["test"][0].read_text().splitlines()[:6]) + "\n")
    common = ["--input", str(source), "--lp-style", "power", "--alpha", "0.6", "--early-stop", "beam"]
    main(["translate", "--model", str(trained_run), "--output", str(tmp_path / "native.es"), *common])
    main(["translate", "--engine", "ctranslate2", "--model", str(tmp_path / "ct2"), "--output", str(tmp_path / "ct2.es"), *common])
    assert (tmp_path / "ct2.es").read_text() == (tmp_path / "native.es").read_text()
    assert len((tmp_path / "ct2.es").read_text().splitlines()) == 6
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["translate", "--engine", "ctranslate2", "--model", str(trained_run), "--input", str(source)])
    assert e.value.code == 2 and "not a CTranslate2 model directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(trained_run), "--format", "ctranslate2", "--out", str(tmp_path / "ct2")])  # exists
    assert "exists" in capsys.readouterr().err


def test_the_benchmarks_ctranslate2_process_translates_as_ctranslate2_does_in_this_one(trained_run, shipped, tmp_path, monkeypatch):
    """benchmarks/ct2_worker.py runs CTranslate2 in a child process (apart from PyTorch's OpenMP
    runtime); what it returns is what the same translator gives here."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ct2_worker import CTranslate2Process

    from aiayn.interop.ctranslate2 import load_tokenizers

    out = export_ctranslate2(trained_run, tmp_path / "ct2")
    (src_tok, _), _ = load_tokenizers(out)
    texts = shipped["test"][0].read_text().splitlines()[:12]
    batches = [[src_tok.encode_pieces(t) + ["</s>"] for t in part] for part in (texts[:5], texts[5:])]
    worker = CTranslate2Process({"f32": (out, "float32")}, batches, threads=1)
    try:
        tokens, hypotheses = worker.run("f32", beam_size=2, max_decoding_length=20, return_end_token=True)
    finally:
        worker.close()
    here = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    expected = [
        r.hypotheses[0] for b in batches for r in here.translate_batch(b, beam_size=2, max_decoding_length=20, return_end_token=True)
    ]
    assert hypotheses == expected and len(hypotheses) == 12
    assert tokens == sum(len(h) for h in expected)
    assert worker.proc.returncode == 0
