"""CTranslate2: export aiayn models to it, and translate with it (`aiayn translate --engine ctranslate2`).

Export builds CTranslate2's own `TransformerSpec` from the aiayn weights and writes it with
CTranslate2's converter machinery (`ctranslate2.converters.Converter`: validation, quantization
int8 / int8_float32 / float16 / ..., model.bin). It does not go through a Hugging Face export and
`TransformersConverter`, because that converter's Marian path assumes Marian's conventions (the
decoder starts from a zero embedding, <pad> is the last id), which aiayn's own models do not follow
(they start from <s> and interleave their sinusoids); building the spec directly serves every
aiayn model, imported OPUS-MT ones included, with the exact position table, start symbol and ids.

The output directory holds CTranslate2's files plus the tokenizer (source.spm, target.spm, and
vocab.json / target_vocab.json for a piece -> id mapping) and aiayn.json, so it is self-contained.
The CTranslate2 vocabulary lists every id's piece in id order, so ids are aiayn's. The <pad> logit
gets a bias of -1e4 (it can never be produced; CTranslate2's own Marian conversion removes <pad>).

Decoding options map as follows (aiayn → CTranslate2):
  beam → beam_size; alpha → length_penalty, with return_end_token=True so that |Y| counts EOS as in
  aiayn's "power" style (CTranslate2 only has |Y|^α: "gnmt" is replaced by "power", with a warning);
  nbest → num_hypotheses; a·|source| + b → max_decoding_length, per sentence (sentences are grouped
  by their cap); min_len → min_decoding_length (0 by default: an empty output is allowed, as in aiayn); sampling, top_k,
  top_p, temperature → sampling_topk (0: all), sampling_topp, sampling_temperature, beam_size 1.
Stopping: CTranslate2 has its own rule. With α = 0 it stops when the best candidate ends, which gives
aiayn's default (exact) result; with α ≠ 0 it stops once `beam` hypotheses have finished, which is
aiayn's early_stop="beam". At the length cap CTranslate2 ends hypotheses without EOS, where aiayn
allows only EOS: results can differ for sentences that reach the cap. <pad> is removed from the
softmax here (renormalized), while aiayn masks it after the softmax: the scores differ by
log(1 − p(<pad>)), nothing for a trained model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from aiayn.data.tokenizer import Tokenizer
from aiayn.generate.translate import SearchOptions, Translation, encode_lines
from aiayn.interop import export_directory
from aiayn.interop.weight_names import block_weights
from aiayn.models import Transformer
from aiayn.nn import sinusoid_table

FORMAT = "aiayn-ctranslate2/1"
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
PAD_LOGIT_BIAS = -1e4
MIN_POSITIONS = 2048  # rows of the position table written (sinusoids), at least


def _ct2():
    try:
        import ctranslate2
    except ImportError:
        raise ImportError("CTranslate2 is not installed: pip install 'aiayn[interop]' (or ctranslate2)") from None
    return ctranslate2


def vocabulary_tokens(tok: Tokenizer) -> list[str]:
    """The piece of every id, in id order (ids a mapping skips get placeholders, never produced by text)."""
    if tok.vocab is None:
        return [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
    return [p if p is not None else f"<aiayn_unused_{i}>" for i, p in enumerate(tok.id_to_piece)]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def transformer_spec(model: Transformer, tokenizers: tuple[Tokenizer, Tokenizer]):
    """CTranslate2's TransformerSpec holding this model's weights, vocabularies and special tokens."""
    _ct2()
    from ctranslate2.specs import common_spec
    from ctranslate2.specs import transformer_spec as ts

    from aiayn.io.checkpoint import unique_tensors

    cfg = model.config
    activations = {
        "relu": common_spec.Activation.RELU,
        "gelu": common_spec.Activation.GELU,
        "swish": common_spec.Activation.SWISH,
        "silu": common_spec.Activation.SWISH,
    }
    if cfg.activation not in activations:
        raise ValueError(f"activation {cfg.activation!r} has no CTranslate2 equivalent")
    w = {k: _np(v) for k, v in unique_tensors(model).items()}
    spec = ts.TransformerSpec.from_config(
        (cfg.n_encoder_layers, cfg.n_decoder_layers), cfg.n_heads, pre_norm=cfg.pre_norm, activation=activations[cfg.activation]
    )
    spec.config.layer_norm_epsilon = cfg.layer_norm_eps

    def linear(spec_, name):
        spec_.weight = w[f"{name}.weight"]
        if f"{name}.bias" in w:
            spec_.bias = w[f"{name}.bias"]

    def norm(spec_, name):
        spec_.gamma, spec_.beta = w[f"{name}.weight"], w[f"{name}.bias"]

    if cfg.positional == "learned":
        table = w["positions.embedding.weight"]
    else:
        table = _np(sinusoid_table(max(cfg.max_positions, MIN_POSITIONS), cfg.d_model, cfg.positional_layout))
    emb_src = w["src_embed.weight"]
    emb_tgt = w.get("tgt_embed.weight", emb_src)
    scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
    for side, emb in ((spec.encoder, emb_src), (spec.decoder, emb_tgt)):
        side.scale_embeddings = scale
        side.position_encodings.encodings = table
        (side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings).weight = emb
    if cfg.pre_norm:
        norm(spec.encoder.layer_norm, "encoder_norm")
        norm(spec.decoder.layer_norm, "decoder_norm")
    for side, i, ours, _marian, attr in block_weights(cfg):
        target = getattr(spec, side).layer[i]
        for part in attr.split("."):  # e.g. self_attention.linear.0
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        (norm if ours.endswith("_norm") else linear)(target, ours)
    spec.decoder.projection.weight = w.get("output_proj.weight", emb_tgt)
    bias = w["final_logits_bias"].copy() if cfg.output_bias else np.zeros(cfg.tgt_vocab_size, dtype=np.float32)
    bias[cfg.pad_id] = PAD_LOGIT_BIAS
    spec.decoder.projection.bias = bias
    spec.decoder.start_from_zero_embedding = False

    src_tok, tgt_tok = tokenizers
    src_tokens, tgt_tokens = vocabulary_tokens(src_tok), vocabulary_tokens(tgt_tok)
    for what, tokens, size in (("source", src_tokens, cfg.src_vocab_size), ("target", tgt_tokens, cfg.tgt_vocab_size)):
        if len(tokens) != size:
            raise ValueError(f"the {what} vocabulary has {len(tokens)} pieces but the model {size} embeddings")
    spec.register_source_vocabulary(src_tokens)
    spec.register_target_vocabulary(tgt_tokens)
    spec.config.unk_token = tgt_tokens[cfg.unk_id]
    spec.config.bos_token = tgt_tokens[cfg.bos_id] if 0 <= cfg.bos_id < len(tgt_tokens) else tgt_tokens[cfg.decoder_start_id]
    spec.config.eos_token = tgt_tokens[cfg.eos_id]
    spec.config.decoder_start_token = tgt_tokens[cfg.decoder_start_id]
    spec.config.add_source_bos = False
    spec.config.add_source_eos = False  # the tokens given to translate_batch end with </s> already
    return spec


def _write_tokenizers(out: Path, model: Transformer, tokenizers: tuple[Tokenizer, Tokenizer], extra: dict) -> None:
    src, tgt = tokenizers
    joint = tgt is src or tgt.sha256 == src.sha256
    src.save(out / "source.spm")
    tgt.save(out / "target.spm")
    info = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "joint": joint,
        "source": {"spm": "source.spm"},
        "target": {"spm": "target.spm"},
        "extra": extra,
    }
    if src.vocab is not None:
        (out / "vocab.json").write_text(src.vocab_json(), encoding="utf-8")
        info["source"]["vocab"] = "vocab.json"
        if tgt.vocab_json() != src.vocab_json():
            (out / "target_vocab.json").write_text(tgt.vocab_json(), encoding="utf-8")
            info["target"]["vocab"] = "target_vocab.json"
        else:
            info["target"]["vocab"] = "vocab.json"
    (out / "aiayn.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_ctranslate2(model_path: str | Path, out: str | Path, quantization: str | None = None, force: bool = False) -> Path:
    """`aiayn export MODEL --format ctranslate2 --out OUT [--quantization int8|int8_float32|float16|...]`."""
    ct2 = _ct2()
    from aiayn.io.checkpoint import read_checkpoint, resolve_model_path

    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r} (one of {', '.join(QUANTIZATIONS)})")
    with export_directory(out, force, model_path) as tmp:  # --out is checked here, before any work
        ckpt = read_checkpoint(resolve_model_path(model_path))
        model = ckpt.build()
        spec = transformer_spec(model, ckpt.tokenizers)

        class _AiaynConverter(ct2.converters.Converter):
            def _load(self):
                return spec

        _AiaynConverter().convert(str(tmp), quantization=quantization, force=True)
        extra = {**ckpt.extra, "exported_from": str(ckpt.path), "quantization": quantization or "float32"}
        _write_tokenizers(tmp, model, ckpt.tokenizers, extra)
    return Path(out)


def load_tokenizers(model_dir: str | Path) -> tuple[tuple[Tokenizer, Tokenizer], dict]:
    """The tokenizers of an exported CTranslate2 directory, and its aiayn.json."""
    d = Path(model_dir)
    if not (d / "aiayn.json").is_file():
        if (d / "model.bin").is_file():
            raise FileNotFoundError(
                f"{d} is a CTranslate2 model but not one exported by 'aiayn export --format ctranslate2' (no aiayn.json)"
            )
        raise FileNotFoundError(f"{d} is not a CTranslate2 model directory (export one with 'aiayn export --format ctranslate2')")
    info = json.loads((d / "aiayn.json").read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ValueError(f"{d}/aiayn.json: unknown format {info.get('format')!r}")

    def load(side: dict) -> Tokenizer:
        return Tokenizer.from_file(d / side["spm"], d / side["vocab"] if side.get("vocab") else None)

    src = load(info["source"])
    tgt = src if info["joint"] else load(info["target"])
    return (src, tgt), info


class CTranslate2Translator:
    """Translates raw text with an exported CTranslate2 model; the interface of aiayn's Translator."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        options: SearchOptions | None = None,
        device: str = "auto",
        compute_type: str = "default",
        max_tokens: int = 4096,
        max_input_len: int = 1024,
        threads: int = 0,
        warn=None,
        **option_overrides,
    ):
        ct2 = _ct2()
        self.options = (options or SearchOptions()).with_overrides(**option_overrides)
        self.warn = warn or (lambda message: None)
        (self.src_tok, self.tgt_tok), self.info = load_tokenizers(model_dir)
        cfg = self.info["model_config"]
        self.pad_id, self.eos_id = cfg["pad_id"], cfg["eos_id"]
        self.src_tokens, tgt_tokens = vocabulary_tokens(self.src_tok), vocabulary_tokens(self.tgt_tok)
        self.tgt_ids = {t: i for i, t in enumerate(tgt_tokens)}
        self.eos_token = self.src_tokens[self.eos_id]
        if device == "auto":
            device = "cuda" if ct2.get_cuda_device_count() > 0 else "cpu"
        self.translator = ct2.Translator(str(model_dir), device=device, compute_type=compute_type, intra_threads=threads)
        self.max_tokens, self.max_input_len = max_tokens, max_input_len
        o = self.options
        if o.alpha and o.lp_style != "power":
            self.warn(f"CTranslate2's length penalty is |Y|^α (power); using it with α={o.alpha} instead of {o.lp_style}")
        if o.sampling:
            ct2.set_random_seed(o.seed)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return encode_lines(self.src_tok, texts, self.max_input_len, self.warn)

    def _decode_options(self) -> dict:
        o = self.options
        common = dict(
            max_batch_size=self.max_tokens,
            batch_type="tokens",
            min_decoding_length=o.min_len,
            max_input_length=0,
            return_scores=True,
            return_end_token=True,
            length_penalty=o.alpha,
        )
        if o.sampling:
            return dict(
                common, beam_size=1, num_hypotheses=1, sampling_topk=o.top_k or 0, sampling_topp=o.top_p, sampling_temperature=o.temperature
            )
        return dict(common, beam_size=o.beam, num_hypotheses=o.nbest)

    def translate(self, texts: list[str], alignment_layer: int | None = None) -> list[Translation]:
        if alignment_layer is not None:
            raise ValueError("alignments are not available with the ctranslate2 engine")
        o = self.options
        ids = self.encode(texts)
        out: list[Translation | None] = [Translation("", 0.0) if not seq else None for seq in ids]
        caps: dict[int, list[int]] = {}  # aiayn's per-sentence cap a·|source| + b; one CTranslate2 call per cap
        for i, seq in enumerate(ids):
            if seq:
                caps.setdefault(o.output_cap(len(seq)), []).append(i)
        options = self._decode_options()
        for cap, members in sorted(caps.items()):
            source = [[self.src_tokens[t] for t in ids[i]] + [self.eos_token] for i in members]
            results = self.translator.translate_batch(source, max_decoding_length=cap, **options)
            for i, result in zip(members, results):
                hyps = []
                for tokens, score in zip(result.hypotheses, result.scores):
                    out_ids = [self.tgt_ids.get(t, self.tgt_tok.unk_id) for t in tokens]
                    if out_ids and out_ids[-1] == self.eos_id:
                        out_ids = out_ids[:-1]
                    hyps.append((out_ids, float(score)))
                best_ids, best_score = hyps[0]
                out[i] = Translation(
                    self.tgt_tok.decode(best_ids),
                    best_score,
                    best_ids,
                    ids[i],
                    [(self.tgt_tok.decode(h), s) for h, s in hyps] if o.nbest > 1 else [],
                )
        return out


def translate_ctranslate2(
    model_dir: str | Path,
    sentences: list[str],
    *,
    beam: int = 4,
    alpha: float = 0.6,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
    device: str = "auto",
    compute_type: str = "default",
    max_tokens: int = 4096,
    threads: int = 0,
    **options,
) -> list[str]:
    """Translate sentences with an exported CTranslate2 model (e.g. for benchmarks); α is CTranslate2's |Y|^α."""
    translator = CTranslate2Translator(
        model_dir,
        device=device,
        compute_type=compute_type,
        max_tokens=max_tokens,
        threads=threads,
        beam=beam,
        alpha=alpha,
        lp_style="power",
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        **options,
    )
    return [t.text for t in translator.translate(sentences)]
