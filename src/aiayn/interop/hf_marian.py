"""Hugging Face Marian (the 1,000+ Helsinki-NLP OPUS-MT models) ↔ aiayn.

`import_marian` turns a `MarianMTModel` checkpoint (config.json, model.safetensors or
pytorch_model.bin, source.spm, target.spm, vocab.json) into one self-contained aiayn weights
file; `export_marian` writes any aiayn model as a directory that `MarianMTModel.from_pretrained`
and `MarianTokenizer.from_pretrained` load. Both are exact: the logits agree to float rounding.

What Marian does differently from aiayn's defaults, and how it is carried over:
  - ids come from vocab.json (piece -> id), not from sentencepiece: source text is cut into pieces
    by source.spm, the pieces are looked up in vocab.json (<unk> if absent); output ids map back to
    pieces that target.spm joins. The two sentencepiece models usually share one vocab.json and one
    embedding matrix. aiayn's Tokenizer carries the mapping, and the checkpoint stores it.
  - special ids: </s> is usually 0 and <pad> the last id; decoding starts from <pad>
    (decoder_start_token_id), whose embedding is zero. All are config fields in aiayn.
  - activation swish, embeddings scaled by √d_model, a bias on the logits (final_logits_bias),
    post-norm layers with LayerNorm ε = 1e-5, separate q/k/v projections (fused here, q;k;v).
  - sinusoidal positions with all sines first, then all cosines ("concat" layout), from position 0.
    aiayn's own models interleave them (the paper); since positions are added to the residual stream,
    a model is exported by permuting the hidden dimensions of every weight that reads or writes that
    stream (embeddings, q/k/v and FFN inputs, attention/FFN outputs, layer norms), which leaves the
    function unchanged and turns the interleaved table into Marian's.

Importing needs only torch and safetensors (huggingface_hub to download by name); exporting uses
transformers to write a checkpoint it is sure to read back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from aiayn.data.tokenizer import Tokenizer
from aiayn.interop import export_directory
from aiayn.interop.weight_names import block_weights
from aiayn.models import Transformer, TransformerConfig
from aiayn.nn import ACTIVATIONS, sinusoid_table


class InteropError(ValueError):
    """A model that cannot be converted, with what is wrong with it."""


MARIAN_FILES = ("config.json", "source.spm", "target.spm", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# What MarianMTModel computes, by its config's name -> aiayn's ("gelu" is the erf GELU in both); and back
FROM_HF_ACTIVATION = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}
HF_ACTIVATION = {name: hf for name, (_, hf) in ACTIVATIONS.items() if hf in FROM_HF_ACTIVATION}
GENERATION_KEYS = ("num_beams", "max_length", "length_penalty", "early_stopping", "no_repeat_ngram_size", "min_length")
LAYER_NORM_EPS = 1e-5  # HF's MarianMTModel uses nn.LayerNorm's default
# BART-era switches some OPUS-MT config.json files still carry; MarianMTModel ignores them, so a
# value other than Marian's would mean a checkpoint it cannot compute correctly.
MARIAN_SWITCHES = {
    "normalize_before": False,
    "normalize_embedding": False,
    "add_final_layer_norm": False,
    "add_bias_logits": False,
    "static_position_embeddings": True,
}


# ---------------------------------------------------------------- weight names
def _layer_map(cfg: TransformerConfig):
    """(aiayn module, [HF modules]) per linear / layer norm; several HF modules are fused in order (q;k;v)."""
    for _side, _i, ours, marian, _ct2 in block_weights(cfg):
        yield ours, marian


def residual_permutation(d_model: int, layout: str) -> Tensor | None:
    """The order of hidden dimensions that turns `layout`'s sinusoid table into Marian's ("concat"):
    None when nothing needs to move. table_interleaved[:, perm] == table_concat."""
    if layout == "concat":
        return None
    if layout != "interleaved":
        raise InteropError(f"unknown positional layout {layout!r}")
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def permute_residual(tensors: dict[str, Tensor], perm: Tensor) -> dict[str, Tensor]:
    """Reorder the hidden (residual-stream) dimensions of an aiayn state dict by `perm`: the columns of
    every matrix that reads the stream, the rows (and bias) of every one that writes it, and the layer
    norms. Attention heads split q/k/v outputs, never the stream, so they stay as they are."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(("qkv_proj.weight", "q_proj.weight", "kv_proj.weight", "ffn.w1.weight")) or name in (
            "src_embed.weight",
            "tgt_embed.weight",
            "output_proj.weight",
        ):
            t = t[:, perm]
        elif name.endswith(("out_proj.weight", "out_proj.bias", "ffn.w2.weight", "ffn.w2.bias")) or "_norm." in name:
            t = t[perm]
        out[name] = t.contiguous()
    return out


# ---------------------------------------------------------------- import
def resolve_source(src: str | Path) -> Path:
    """A local Marian directory as given; otherwise a hub name, fetched with huggingface_hub."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.exists() or str(src).startswith((".", "/", "~")) or str(src).count("/") > 1:
        raise FileNotFoundError(f"{src} is not a directory holding a Marian checkpoint")
    try:
        from huggingface_hub import snapshot_download

        patterns = [
            *MARIAN_FILES,
            *WEIGHT_FILES,
            "model-*.safetensors",
            "target_vocab.json",
            "tokenizer_config.json",
            "generation_config.json",
        ]
        return Path(snapshot_download(str(src), allow_patterns=patterns))
    except Exception as e:  # offline, unknown name, no huggingface_hub ...
        raise FileNotFoundError(f"{src} is not a local directory, and fetching it from the Hugging Face hub failed: {e}") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InteropError(f"{path} is not readable JSON: {e}") from None


def _load_hf_weights(directory: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file as load_safetensors

    def load_file(path: str) -> dict[str, Tensor]:
        try:
            return load_safetensors(path)
        except Exception as e:  # safetensors raises its own error type for a damaged file
            raise InteropError(f"{path} is not a readable safetensors file (truncated or damaged?): {e}") from None

    if (directory / "model.safetensors").is_file():
        tensors = load_file(str(directory / "model.safetensors"))
    elif (directory / "model.safetensors.index.json").is_file():
        shards = sorted(set(_read_json(directory / "model.safetensors.index.json")["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(str(directory / shard)))
    elif (directory / "pytorch_model.bin").is_file():
        try:
            tensors = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise InteropError(f"{directory / 'pytorch_model.bin'} cannot be loaded safely (weights_only=True): {e}") from None
    else:
        raise FileNotFoundError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    # MarianMTModel keys start with "model." (except lm_head / final_logits_bias); MarianModel's do not
    return {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in tensors.items()}


def marian_config(hf: dict, source: str = "config.json") -> dict:
    """Check a Marian config.json and return the aiayn TransformerConfig fields it implies (no vocabulary ids)."""
    model_type = hf.get("model_type")
    if model_type != "marian":
        raise InteropError(f"{source}: model_type is {model_type!r}; only Marian (OPUS-MT, MarianMTModel) checkpoints can be imported")
    archs = hf.get("architectures") or ["MarianMTModel"]
    if "MarianMTModel" not in archs:
        raise InteropError(f"{source}: architectures {archs}; only MarianMTModel (an encoder-decoder) can be imported")
    for key, expected in MARIAN_SWITCHES.items():
        if key in hf and hf[key] is not None and bool(hf[key]) != expected:
            raise InteropError(f"{source}: {key}={hf[key]} is not Marian's architecture (MarianMTModel does not implement it)")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(enc, 16 if "heads" in enc else 4096) != hf.get(dec, 16 if "heads" in dec else 4096):
            raise InteropError(f"{source}: {enc}={hf.get(enc)} differs from {dec}={hf.get(dec)}; aiayn needs them equal")
    activation = hf.get("activation_function", "gelu")
    if activation not in FROM_HF_ACTIVATION:
        raise InteropError(f"{source}: activation_function {activation!r} is not supported (one of {', '.join(FROM_HF_ACTIVATION)})")
    return dict(
        d_model=int(hf.get("d_model", 1024)),
        n_heads=int(hf.get("encoder_attention_heads", 16)),
        d_ff=int(hf.get("encoder_ffn_dim", 4096)),
        n_encoder_layers=int(hf.get("encoder_layers", 12)),
        n_decoder_layers=int(hf.get("decoder_layers", 12)),
        dropout=float(hf.get("dropout", 0.1)),
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        activation_dropout=float(hf.get("activation_dropout", 0.0)),
        activation=FROM_HF_ACTIVATION[activation],
        pre_norm=False,
        positional="sinusoidal",
        positional_layout="concat",
        max_positions=int(hf.get("max_position_embeddings", 1024)),
        scale_embedding=bool(hf.get("scale_embedding", False)),
        output_bias=True,
        bias=True,
        layer_norm_eps=LAYER_NORM_EPS,
    )


def _single_id(value, name: str, source: str) -> int:
    if isinstance(value, list):
        if len(value) != 1:
            raise InteropError(f"{source}: {name}={value}; aiayn supports one {name}")
        value = value[0]
    if value is None:
        raise InteropError(f"{source}: {name} is not set")
    return int(value)


def read_marian(directory: str | Path) -> tuple[Transformer, tuple[Tokenizer, Tokenizer], dict]:
    """A Marian checkpoint directory as an aiayn model (eval mode), its tokenizers, and what to keep of it."""
    d = Path(directory)
    missing = [f for f in MARIAN_FILES if not (d / f).is_file()]
    if not any((d / f).is_file() for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise FileNotFoundError(f"{d} is not a complete Marian checkpoint: missing {', '.join(missing)}")
    hf = _read_json(d / "config.json")
    fields = marian_config(hf, str(d / "config.json"))
    tok_cfg = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}

    # vocabulary: vocab.json (and target_vocab.json with separate_vocabs) on top of the sentencepiece models
    vocab_src = _read_json(d / "vocab.json")
    if tok_cfg.get("separate_vocabs"):
        if not (d / "target_vocab.json").is_file():
            raise FileNotFoundError(f"{d}: tokenizer_config.json sets separate_vocabs but target_vocab.json is missing")
        vocab_tgt = _read_json(d / "target_vocab.json")
    else:
        vocab_tgt = vocab_src
    try:
        src_tok = Tokenizer((d / "source.spm").read_bytes(), vocab_src)
        tgt_tok = (
            src_tok
            if (d / "target.spm").read_bytes() == src_tok.proto and vocab_tgt == vocab_src
            else Tokenizer((d / "target.spm").read_bytes(), vocab_tgt)
        )
    except ValueError as e:
        raise InteropError(f"{d}: {e}") from None

    # sizes: config, vocabulary files and weights must agree
    share = bool(hf.get("share_encoder_decoder_embeddings", True))
    tie = bool(hf.get("tie_word_embeddings", True))
    src_v = int(hf.get("vocab_size", 58101))
    tgt_v = src_v if share else int(hf.get("decoder_vocab_size") or src_v)
    tensors = _load_hf_weights(d)
    # as transformers ties them: share+tie -> one matrix (model.shared); tie -> lm_head is the decoder's; else all apart
    if share and tie:
        emb_src = emb_tgt = tensors.get("shared.weight", tensors.get("encoder.embed_tokens.weight"))
    else:
        emb_src = tensors.get("encoder.embed_tokens.weight", tensors.get("shared.weight") if share else None)
        emb_tgt = tensors.get("decoder.embed_tokens.weight", tensors.get("shared.weight") if share else None)
    lm_head = emb_tgt if tie else tensors.get("lm_head.weight")
    for name, t in (
        ("the encoder embeddings (shared.weight / encoder.embed_tokens.weight)", emb_src),
        ("the decoder embeddings (decoder.embed_tokens.weight)", emb_tgt),
        ("lm_head.weight (tie_word_embeddings is false)", lm_head),
    ):
        if t is None:
            raise InteropError(f"{d}: the weights lack {name}")
    bias = tensors.get("final_logits_bias", torch.zeros(1, tgt_v)).reshape(-1)
    checks = [
        ("config.json vocab_size", src_v, "encoder embedding rows", emb_src.size(0)),
        ("config.json vocab_size", src_v, "vocab.json ids", src_tok.vocab_size),
        ("the decoder vocabulary size in config.json", tgt_v, "decoder embedding rows", emb_tgt.size(0)),
        ("the decoder vocabulary size in config.json", tgt_v, "output projection rows", lm_head.size(0)),
        ("the decoder vocabulary size in config.json", tgt_v, "final_logits_bias entries", bias.numel()),
        ("the decoder vocabulary size in config.json", tgt_v, "target vocabulary ids", tgt_tok.vocab_size),
    ]
    for what_a, a, what_b, b in checks:
        if a != b:
            raise InteropError(f"{d}: vocabulary sizes do not match: {what_a} is {a}, but {what_b}: {b}")
    if emb_src.size(1) != fields["d_model"]:
        raise InteropError(f"{d}: the embeddings are {emb_src.size(1)} wide but config.json has d_model={fields['d_model']}")

    # special ids: the model's (config.json) and the tokenizer's must be the same
    pad = _single_id(hf.get("pad_token_id", 58100), "pad_token_id", "config.json")
    eos = _single_id(hf.get("eos_token_id", 0), "eos_token_id", "config.json")
    start = _single_id(hf.get("decoder_start_token_id", pad), "decoder_start_token_id", "config.json")
    for tok, side in ((src_tok, "source"), (tgt_tok, "target")):
        if (tok.pad_id, tok.eos_id) != (pad, eos):
            raise InteropError(
                f"{d}: config.json has pad_token_id={pad}, eos_token_id={eos} but the {side} vocabulary has "
                f"<pad>={tok.pad_id}, </s>={tok.eos_id}"
            )
    if not 0 <= start < tgt_v:
        raise InteropError(f"{d}: decoder_start_token_id={start} is outside the target vocabulary of {tgt_v}")

    cfg = TransformerConfig(
        src_vocab_size=src_v,
        tgt_vocab_size=tgt_v,
        share_embeddings=share and tie,
        tie_output=tie,
        **fields,
        pad_id=pad,
        unk_id=tgt_tok.unk_id,
        bos_id=tgt_tok.bos_id,
        eos_id=eos,
        decoder_start_id=start,
    )
    state = {"src_embed.weight": emb_src, "final_logits_bias": bias}
    if not cfg.share_embeddings:
        state["tgt_embed.weight"] = emb_tgt
    if not tie:
        state["output_proj.weight"] = lm_head
    for ours, theirs in _layer_map(cfg):
        for kind in ("weight", "bias"):
            names = [f"{t}.{kind}" for t in theirs]
            absent = [n for n in names if n not in tensors]
            if absent:
                raise InteropError(
                    f"{d}: the weights have no {', '.join(absent[:3])} (a {cfg.n_encoder_layers}+{cfg.n_decoder_layers}-layer model per config.json)"
                )
            state[f"{ours}.{kind}"] = torch.cat([tensors[n] for n in names]) if len(names) > 1 else tensors[names[0]]
    # old checkpoints store the position table: it must be Marian's sinusoids
    for side in ("encoder", "decoder"):
        stored = tensors.get(f"{side}.embed_positions.weight")
        if stored is not None:
            ours = sinusoid_table(stored.size(0), stored.size(1), "concat")
            if stored.shape != ours.shape or not torch.allclose(stored.float(), ours, atol=1e-4):
                raise InteropError(f"{d}: {side}.embed_positions.weight is not Marian's sinusoid table")
    model = Transformer(cfg)
    from aiayn.io.checkpoint import load_weights

    try:
        load_weights(model, {k: v.float() for k, v in state.items()}, str(d))
    except ValueError as e:
        raise InteropError(str(e)) from None
    extra = {"imported_from": "huggingface-marian", "source": str(d)}
    if (d / "generation_config.json").is_file():
        extra["hf_generation_config"] = _read_json(d / "generation_config.json")
    elif any(k in hf for k in GENERATION_KEYS):  # older OPUS-MT checkpoints keep them in config.json
        extra["hf_generation_config"] = {k: hf[k] for k in GENERATION_KEYS if k in hf}
    return model.eval(), (src_tok, tgt_tok), extra


def import_marian(src: str | Path, out: str | Path) -> Path:
    """`aiayn import-hf SRC --out OUT`: write SRC (a Marian directory or hub name) as an aiayn weights file:
    OUT itself if it ends in .safetensors, else OUT/model.safetensors. Returns that path."""
    from aiayn.io.checkpoint import save_model
    from aiayn.tasks.translation import tokenizer_assets

    directory = resolve_source(src)
    model, tokenizers, extra = read_marian(directory)
    if str(src) != str(directory):
        extra["source"] = str(src)
    out = Path(out)
    path = out if out.suffix == ".safetensors" else out / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model, tokenizer_assets(*tokenizers), extra)
    return path


# ---------------------------------------------------------------- export
def _id_to_piece(tok: Tokenizer) -> list[str]:
    """Every id's piece (vocab.json order); ids the mapping skips get placeholder pieces."""
    if tok.vocab is None:
        return [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
    return [p if p is not None else f"<aiayn_unused_{i}>" for i, p in enumerate(tok.id_to_piece)]


def marian_vocab(tok: Tokenizer) -> dict[str, int]:
    return {p: i for i, p in enumerate(_id_to_piece(tok))}


def check_exportable(cfg: TransformerConfig, what: str = "Marian") -> None:
    problems = []
    if cfg.pre_norm:
        problems.append("it is pre-norm (pre_norm=True); MarianMTModel is post-norm only")
    if cfg.positional != "sinusoidal":
        problems.append(f"it has {cfg.positional} positions; MarianMTModel only has sinusoids")
    if not cfg.bias:
        problems.append("its projections have no biases; MarianMTModel's have")
    if cfg.activation not in HF_ACTIVATION:
        problems.append(f"its activation {cfg.activation!r} has no Marian equivalent")
    if not math.isclose(cfg.layer_norm_eps, LAYER_NORM_EPS):
        problems.append(f"its layer norms use ε={cfg.layer_norm_eps}; MarianMTModel's use {LAYER_NORM_EPS}")
    if problems:
        raise InteropError(f"this model cannot be exported as {what}: " + "; ".join(problems))


def marian_state(model: Transformer) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """aiayn weights as (HF Marian state dict without the "model." prefix, the embeddings by role)."""
    from aiayn.io.checkpoint import unique_tensors

    cfg = model.config
    tensors = unique_tensors(model)
    perm = residual_permutation(cfg.d_model, cfg.positional_layout)
    if perm is not None:
        tensors = permute_residual(tensors, perm)
    emb_src = tensors["src_embed.weight"]
    emb_tgt = tensors.get("tgt_embed.weight", emb_src)
    lm_head = tensors.get("output_proj.weight", emb_tgt)
    state = {}
    for ours, theirs in _layer_map(cfg):
        for kind in ("weight", "bias"):
            for name, part in zip(theirs, tensors[f"{ours}.{kind}"].chunk(len(theirs))):
                state[f"{name}.{kind}"] = part.contiguous()
    bias = tensors["final_logits_bias"] if cfg.output_bias else torch.zeros(cfg.tgt_vocab_size)
    return state, {"src": emb_src, "tgt": emb_tgt, "lm_head": lm_head, "final_logits_bias": bias}


def marian_hf_config(cfg: TransformerConfig):
    from transformers import MarianConfig

    share = cfg.share_embeddings
    return MarianConfig(
        vocab_size=cfg.src_vocab_size,
        decoder_vocab_size=cfg.tgt_vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.n_encoder_layers,
        decoder_layers=cfg.n_decoder_layers,
        encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        activation_function=HF_ACTIVATION[cfg.activation],
        dropout=cfg.dropout,
        attention_dropout=cfg.attn_dropout,
        activation_dropout=cfg.activation_dropout,
        max_position_embeddings=max(cfg.max_positions, 512),
        scale_embedding=cfg.scale_embedding,
        pad_token_id=cfg.pad_id,
        eos_token_id=cfg.eos_id,
        bos_token_id=cfg.bos_id,
        forced_eos_token_id=cfg.eos_id,
        decoder_start_token_id=cfg.decoder_start_id,
        share_encoder_decoder_embeddings=share,
        tie_word_embeddings=cfg.tie_output,
        architectures=["MarianMTModel"],
    )


def generation_config(cfg: TransformerConfig, extra: dict | None = None) -> dict:
    """Marian's generation defaults (beam 4, bad_words_ids [[pad]], forced EOS), or the imported model's own."""
    values = {"num_beams": 4, "max_length": 512}
    values.update((extra or {}).get("hf_generation_config") or {})
    values.update(
        bad_words_ids=[[cfg.pad_id]],
        bos_token_id=cfg.bos_id,
        decoder_start_token_id=cfg.decoder_start_id,
        eos_token_id=cfg.eos_id,
        forced_eos_token_id=cfg.eos_id,
        pad_token_id=cfg.pad_id,
    )
    return {k: v for k, v in values.items() if not k.startswith("_") and k != "transformers_version"}


def to_marian_model(model: Transformer, extra: dict | None = None):
    """An aiayn model as a transformers MarianMTModel (eval mode) computing the same function."""
    from transformers import GenerationConfig, MarianMTModel

    cfg = model.config
    check_exportable(cfg)
    state, emb = marian_state(model)
    hf = MarianMTModel(marian_hf_config(cfg))
    full = {f"model.{k}": v for k, v in state.items()}
    full["final_logits_bias"] = emb["final_logits_bias"].reshape(1, -1)
    with torch.no_grad():
        missing, unexpected = hf.load_state_dict(full, strict=False)
        if unexpected:
            raise InteropError(f"internal: transformers' MarianMTModel has no {unexpected[:3]}")
        m = hf.model
        # through the modules, so that whatever transformers ties is set once, consistently
        targets = [
            (m.encoder.embed_tokens.weight, emb["src"]),
            (m.decoder.embed_tokens.weight, emb["tgt"]),
            (hf.lm_head.weight, emb["lm_head"]),
        ]
        if getattr(m, "shared", None) is not None:
            targets.insert(0, (m.shared.weight, emb["src"]))
        for weight, value in targets:
            weight.copy_(value)
    # every effective weight must be what we meant (ties included)
    for name, ours, theirs in (
        ("encoder embeddings", emb["src"], m.encoder.embed_tokens.weight),
        ("decoder embeddings", emb["tgt"], m.decoder.embed_tokens.weight),
        ("output projection", emb["lm_head"], hf.lm_head.weight),
    ):
        if not torch.equal(ours, theirs.detach()):
            raise InteropError(f"internal: the exported {name} differ from the model's (transformers tied weights unexpectedly)")
    hf.generation_config = GenerationConfig(**generation_config(cfg, extra))
    return hf.eval()


def write_marian_tokenizer(out: Path, tokenizers: tuple[Tokenizer, Tokenizer]) -> None:
    """source.spm, target.spm, vocab.json (+ target_vocab.json) and tokenizer_config.json for MarianTokenizer."""
    src, tgt = tokenizers
    vocab_src, vocab_tgt = marian_vocab(src), marian_vocab(tgt)
    separate = vocab_src != vocab_tgt
    src.save(out / "source.spm")
    tgt.save(out / "target.spm")
    (out / "vocab.json").write_text(json.dumps(vocab_src, ensure_ascii=False, indent=2), encoding="utf-8")
    if separate:
        (out / "target_vocab.json").write_text(json.dumps(vocab_tgt, ensure_ascii=False, indent=2), encoding="utf-8")
    pieces = _id_to_piece(tgt)
    config = {
        "tokenizer_class": "MarianTokenizer",
        "separate_vocabs": separate,
        "model_max_length": 512,
        "unk_token": pieces[tgt.unk_id],
        "eos_token": pieces[tgt.eos_id],
        "pad_token": pieces[tgt.pad_id],
        "source_lang": None,
        "target_lang": None,
        "sp_model_kwargs": {},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def export_marian(model_path: str | Path, out: str | Path, force: bool = False) -> Path:
    """`aiayn export MODEL --format hf --out OUT`: a directory MarianMTModel / MarianTokenizer load."""
    from aiayn.io.checkpoint import read_checkpoint, resolve_model_path

    with export_directory(out, force, model_path) as tmp:  # --out is checked here, before any work
        ckpt = read_checkpoint(resolve_model_path(model_path))
        hf = to_marian_model(ckpt.build(), ckpt.extra)
        hf.save_pretrained(tmp)
        write_marian_tokenizer(tmp, ckpt.tokenizers)
    return Path(out)
