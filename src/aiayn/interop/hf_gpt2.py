"""Hugging Face GPT-2 (`GPT2LMHeadModel`: gpt2, distilgpt2, the GPT-2 family's fine-tunes) ↔ aiayn.

`import_gpt2` reads a directory (config.json, model.safetensors or pytorch_model.bin loaded with
weights_only, tokenizer.json or vocab.json + merges.txt) into one aiayn weights file whose logits
equal Hugging Face's; `export_gpt2` writes an aiayn GPT as a directory `GPT2LMHeadModel.from_pretrained`
loads. What differs, and how it is carried over:
  - GPT-2's Conv1D stores weights as [in, out]: transposed both ways. Its c_attn is q;k;v fused,
    as aiayn's qkv_proj.
  - the tokenizer is byte-level BPE through the `tokenizers` library; no token is put before a
    prompt (bos_id -1) and <|endoftext|> ends a text (eos_id), as `generate` does.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from aiayn.interop import export_directory
from aiayn.interop.hf_marian import InteropError, _load_hf_weights, _read_json
from aiayn.models import GPT, GPTConfig

FROM_HF_ACTIVATION = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
# (aiayn module in a block, GPT-2 module in transformer.h.{i}, whether its weight is a Conv1D [in, out])
BLOCK = [
    ("self_attn_norm", "ln_1", False),
    ("self_attn.qkv_proj", "attn.c_attn", True),
    ("self_attn.out_proj", "attn.c_proj", True),
    ("ffn_norm", "ln_2", False),
    ("ffn.w1", "mlp.c_fc", True),
    ("ffn.w2", "mlp.c_proj", True),
]


def gpt2_config(hf: dict, source: str = "config.json") -> GPTConfig:
    """The GPTConfig a GPT-2 config.json describes, refused where it computes something else."""
    if hf.get("model_type") != "gpt2":
        raise InteropError(f"{source}: model_type is {hf.get('model_type')!r}, not 'gpt2'")
    act = hf.get("activation_function", "gelu_new")
    if act not in FROM_HF_ACTIVATION:
        raise InteropError(f"{source}: activation_function {act!r} is not supported (one of {', '.join(FROM_HF_ACTIVATION)})")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise InteropError(f"{source}: attention scaled other than by 1/√d_head is not supported")
    d = int(hf["n_embd"])
    eos = hf.get("eos_token_id", 50256)
    return GPTConfig(
        vocab_size=int(hf["vocab_size"]),
        d_model=d,
        n_heads=int(hf["n_head"]),
        d_ff=int(hf.get("n_inner") or 4 * d),
        n_layers=int(hf["n_layer"]),
        context=int(hf.get("n_positions", 1024)),
        dropout=float(hf.get("resid_pdrop", 0.1)),
        attn_dropout=float(hf.get("attn_pdrop", 0.1)),
        activation=FROM_HF_ACTIVATION[act],
        positional="learned",
        tie_output=bool(hf.get("tie_word_embeddings", True)),
        bias=True,
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        eos_id=int(eos),
        bos_id=-1,
        pad_id=int(hf["pad_token_id"]) if hf.get("pad_token_id") is not None else int(eos),
    )


def _tokenizer(directory: Path, cfg: GPTConfig):
    from aiayn.data.text import HFTokenizer

    if (directory / "tokenizer.json").is_file():
        text = (directory / "tokenizer.json").read_text(encoding="utf-8")
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|endoftext|>"])
        text = tok.to_str()
    else:
        raise FileNotFoundError(f"{directory} has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt")
    try:
        return HFTokenizer(text, cfg.eos_id, cfg.bos_id, cfg.pad_id)
    except Exception as e:  # the tokenizers library raises its own exception type
        raise InteropError(f"{directory}: the tokenizer cannot be read: {e}") from None


def read_gpt2(directory: str | Path) -> tuple[GPT, object]:
    """(model, tokenizer) from a GPT2LMHeadModel directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory holding a GPT-2 checkpoint")
    cfg = gpt2_config(_read_json(directory / "config.json"), str(directory / "config.json"))
    hf = _load_hf_weights(directory)
    hf = {(k[len("transformer.") :] if k.startswith("transformer.") else k): v for k, v in hf.items()}
    ours: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        if name not in hf:
            raise InteropError(f"{directory}: the weights have no {name}")
        return hf[name]

    ours["token_embed.weight"] = take("wte.weight")
    ours["positions.embedding.weight"] = take("wpe.weight")
    for i in range(cfg.n_layers):
        for mine, theirs, conv in BLOCK:
            w = take(f"h.{i}.{theirs}.weight")
            ours[f"layers.{i}.{mine}.weight"] = w.t().contiguous() if conv else w
            ours[f"layers.{i}.{mine}.bias"] = take(f"h.{i}.{theirs}.bias")
    ours["final_norm.weight"], ours["final_norm.bias"] = take("ln_f.weight"), take("ln_f.bias")
    if not cfg.tie_output:
        ours["output_proj.weight"] = take("lm_head.weight")
    model = GPT(cfg)
    from aiayn.io.checkpoint import load_weights

    load_weights(model, {k: v.float() for k, v in ours.items()}, str(directory))
    return model.eval(), _tokenizer(directory, cfg)


def import_gpt2(directory: str | Path, out: str | Path) -> Path:
    from aiayn.data.text import lm_tokenizer_assets
    from aiayn.io.checkpoint import save_model

    model, tok = read_gpt2(directory)
    out = Path(out)
    path = out if out.suffix == ".safetensors" else out / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model, lm_tokenizer_assets(tok), {"source": str(directory)}, "lm")
    return path


def to_gpt2_model(model: GPT):
    """A transformers GPT2LMHeadModel with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if c.positional != "learned" or not c.bias or c.activation not in HF_ACTIVATION:
        raise InteropError("GPT-2 has learned positions, biases and a GELU or ReLU; this model differs (positional, bias or activation)")
    hf_cfg = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.context,
        n_embd=c.d_model,
        n_layer=c.n_layers,
        n_head=c.n_heads,
        n_inner=c.d_ff,
        activation_function=HF_ACTIVATION[c.activation],
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.attn_dropout,
        layer_norm_epsilon=c.layer_norm_eps,
        bos_token_id=c.bos_id if c.bos_id >= 0 else c.eos_id,
        eos_token_id=c.eos_id,
        tie_word_embeddings=c.tie_output,
    )
    hf = GPT2LMHeadModel(hf_cfg).eval()
    state = model.state_dict()
    theirs = {"transformer.wte.weight": state["token_embed.weight"], "transformer.wpe.weight": state["positions.embedding.weight"]}
    for i in range(c.n_layers):
        for mine, name, conv in BLOCK:
            w = state[f"layers.{i}.{mine}.weight"]
            theirs[f"transformer.h.{i}.{name}.weight"] = w.t().contiguous() if conv else w
            theirs[f"transformer.h.{i}.{name}.bias"] = state[f"layers.{i}.{mine}.bias"]
    theirs["transformer.ln_f.weight"], theirs["transformer.ln_f.bias"] = state["final_norm.weight"], state["final_norm.bias"]
    theirs["lm_head.weight"] = state["output_proj.weight"]
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise InteropError(f"GPT-2 export: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if c.tie_output:
        hf.tie_weights()
    return hf


def export_gpt2(model_path: str | Path, out: str | Path, force: bool = False) -> Path:
    """`aiayn export MODEL --format hf` for a GPT: GPT2LMHeadModel.from_pretrained(out) loads it; the
    tokenizer goes beside it (tokenizer.json for a Hugging Face vocabulary, else the vocabulary file)."""
    from aiayn.data.text import CharTokenizer, HFTokenizer
    from aiayn.io.checkpoint import read_checkpoint, resolve_model_path

    with export_directory(out, force, model_path) as tmp:
        ckpt = read_checkpoint(resolve_model_path(model_path))
        hf = to_gpt2_model(ckpt.build())
        hf.save_pretrained(tmp)
        tok = ckpt.tokenizer
        if isinstance(tok, HFTokenizer):
            (tmp / "tokenizer.json").write_text(tok.json, encoding="utf-8")
        elif isinstance(tok, CharTokenizer):
            (tmp / "chars.json").write_text(tok.data(), encoding="utf-8")
        else:
            tok.save(tmp / "spm.model")
    return Path(out)
