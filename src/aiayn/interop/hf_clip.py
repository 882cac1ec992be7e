"""Hugging Face CLIP (`CLIPModel`: openai/clip-vit-base-patch32 and its kind) ↔ aiayn.

`import_clip` reads a directory (config.json, model.safetensors or pytorch_model.bin loaded with
weights_only, tokenizer.json through the `tokenizers` library, preprocessor_config.json for the
normalisation) into one aiayn weights file whose image and text embeddings and logits equal
Hugging Face's; `export_clip` writes an aiayn CLIP as a directory that `CLIPModel.from_pretrained`
loads. HF's separate query/key/value become aiayn's fused qkv_proj (q;k;v); the class embedding,
positions, patch convolution (no bias), pre-/post-LayerNorms and projections carry over.

The text tower's representation: Hugging Face takes the first end-of-text token, except for
configs whose eos_token_id is 2 (those saved before transformers 4.31, OpenAI's own among them),
where it takes the highest token id, which in CLIP's vocabulary is end-of-text (the last id);
the import gives both the same meaning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from aiayn.interop import export_directory
from aiayn.interop.hf_marian import InteropError, _load_hf_weights, _read_json
from aiayn.models import CLIP, CLIPConfig

FROM_HF_ACTIVATION = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
HF_ACTIVATION = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
# (aiayn module in a block, [HF modules in encoder.layers.{i}, fused in order])
BLOCK = [
    ("self_attn_norm", ["layer_norm1"]),
    ("self_attn.qkv_proj", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
    ("self_attn.out_proj", ["self_attn.out_proj"]),
    ("ffn_norm", ["layer_norm2"]),
    ("ffn.w1", ["mlp.fc1"]),
    ("ffn.w2", ["mlp.fc2"]),
]
LEGACY_EOS = 2  # transformers' marker of configs whose text pooling is argmax(input_ids)
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_config(hf: dict, source: str = "config.json") -> CLIPConfig:
    if hf.get("model_type") != "clip":
        raise InteropError(f"{source}: model_type is {hf.get('model_type')!r}, not 'clip'")
    text, vision = hf.get("text_config") or {}, hf.get("vision_config") or {}
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    if len(acts) > 1 or not acts <= set(FROM_HF_ACTIVATION):
        raise InteropError(
            f"{source}: the towers' hidden_act {sorted(acts)} must be one of {', '.join(FROM_HF_ACTIVATION)}, the same in both"
        )
    eps = {float(text.get("layer_norm_eps", 1e-5)), float(vision.get("layer_norm_eps", 1e-5))}
    if len(eps) > 1:
        raise InteropError(f"{source}: the towers' layer_norm_eps differ ({sorted(eps)})")
    vocab = int(text.get("vocab_size", 49408))
    eos = int(text.get("eos_token_id", 49407))
    return CLIPConfig(
        image_size=int(vision.get("image_size", 224)),
        patch_size=int(vision.get("patch_size", 32)),
        in_channels=int(vision.get("num_channels", 3)),
        vision_d_model=int(vision.get("hidden_size", 768)),
        vision_n_heads=int(vision.get("num_attention_heads", 12)),
        vision_d_ff=int(vision.get("intermediate_size", 3072)),
        vision_n_layers=int(vision.get("num_hidden_layers", 12)),
        vocab_size=vocab,
        context=int(text.get("max_position_embeddings", 77)),
        text_d_model=int(text.get("hidden_size", 512)),
        text_n_heads=int(text.get("num_attention_heads", 8)),
        text_d_ff=int(text.get("intermediate_size", 2048)),
        text_n_layers=int(text.get("num_hidden_layers", 12)),
        d_embed=int(hf.get("projection_dim", 512)),
        activation=FROM_HF_ACTIVATION[acts.pop()],
        layer_norm_eps=eps.pop(),
        temperature=math.exp(-float(hf.get("logit_scale_init_value", 2.6592))),
        bos_id=int(text.get("bos_token_id", 49406)),
        eos_id=vocab - 1 if eos == LEGACY_EOS else eos,
        pad_id=vocab - 1 if eos == LEGACY_EOS else eos,  # padding after end-of-text is never seen (causal)
    )


def _tokenizer(directory: Path, cfg: CLIPConfig):
    from aiayn.data.text import HFTokenizer

    path = directory / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no tokenizer.json (the `tokenizers` library's file, which CLIPTokenizerFast writes)")
    try:
        tok = HFTokenizer(path.read_text(encoding="utf-8"), eos_id=cfg.eos_id, bos_id=cfg.bos_id, pad_id=cfg.pad_id)
    except Exception as e:  # the tokenizers library raises its own exception type
        raise InteropError(f"{path}: the tokenizer cannot be read: {e}") from None
    for name, i in (("<|startoftext|>", cfg.bos_id), ("<|endoftext|>", cfg.eos_id)):
        found = tok.fast.token_to_id(name)
        if found is not None and found != i:
            raise InteropError(f"{path}: {name} is id {found}, the config says {i}")
    return tok


def read_clip(directory: str | Path) -> tuple[CLIP, object, dict]:
    """(model, tokenizer, image spec) from a CLIPModel directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory holding a CLIP checkpoint")
    cfg = clip_config(_read_json(directory / "config.json"), str(directory / "config.json"))
    hf = _load_hf_weights(directory)

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise InteropError(f"{directory}: the weights have no {name}")
        return hf[name].float()

    v, t = "vision_model.", "text_model."
    ours = {
        "visual.cls_token": take(v + "embeddings.class_embedding").view(1, 1, -1),
        "visual.position_embed": take(v + "embeddings.position_embedding.weight")[None],
        "visual.patch_embed.proj.weight": take(v + "embeddings.patch_embedding.weight"),
        "visual.embed_norm.weight": take(v + "pre_layrnorm.weight"),
        "visual.embed_norm.bias": take(v + "pre_layrnorm.bias"),
        "visual.final_norm.weight": take(v + "post_layernorm.weight"),
        "visual.final_norm.bias": take(v + "post_layernorm.bias"),
        "text.token_embed.weight": take(t + "embeddings.token_embedding.weight"),
        "text.position_embed": take(t + "embeddings.position_embedding.weight"),
        "text.final_norm.weight": take(t + "final_layer_norm.weight"),
        "text.final_norm.bias": take(t + "final_layer_norm.bias"),
        "visual_proj.weight": take("visual_projection.weight"),
        "text_proj.weight": take("text_projection.weight"),
        "logit_scale": take("logit_scale").reshape(()),
    }
    for tower, prefix, n in (("visual", v, cfg.vision_n_layers), ("text", t, cfg.text_n_layers)):
        for i in range(n):
            for mine, theirs in BLOCK:
                for part in ("weight", "bias"):
                    ours[f"{tower}.layers.{i}.{mine}.{part}"] = torch.cat([take(f"{prefix}encoder.layers.{i}.{x}.{part}") for x in theirs])
    model = CLIP(cfg)
    from aiayn.io.checkpoint import load_weights

    load_weights(model, ours, str(directory))
    proc_path = directory / "preprocessor_config.json"
    proc = _read_json(proc_path) if proc_path.is_file() else {}
    mean, std = proc.get("image_mean", OPENAI_MEAN), proc.get("image_std", OPENAI_STD)
    if not proc.get("do_normalize", True):
        mean, std = [0.0] * cfg.in_channels, [1.0] * cfg.in_channels
    spec = {"height": cfg.image_size, "width": cfg.image_size, "channels": cfg.in_channels, "mean": mean, "std": std, "flip": False}
    return model.eval(), _tokenizer(directory, cfg), spec


def import_clip(directory: str | Path, out: str | Path) -> Path:
    from aiayn.data.text import lm_tokenizer_assets
    from aiayn.io.checkpoint import save_model

    model, tok, spec = read_clip(directory)
    out = Path(out)
    path = out if out.suffix == ".safetensors" else out / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model, {"image": json.dumps(spec), **lm_tokenizer_assets(tok)}, {"source": str(directory)}, "image-text")
    return path


def hf_clip_config(model: CLIP):
    from transformers import CLIPConfig as HFCLIPConfig

    c = model.config
    if c.activation not in HF_ACTIVATION:
        raise InteropError(f"transformers' CLIP has no activation {c.activation!r}")
    if c.eos_id == LEGACY_EOS:
        raise InteropError("end-of-text id 2 means argmax pooling to transformers' CLIP; this model pools at id 2 itself")
    act = HF_ACTIVATION[c.activation]
    return HFCLIPConfig(
        text_config=dict(
            vocab_size=c.vocab_size,
            hidden_size=c.text_d_model,
            intermediate_size=c.text_d_ff,
            num_hidden_layers=c.text_n_layers,
            num_attention_heads=c.text_n_heads,
            max_position_embeddings=c.context,
            hidden_act=act,
            layer_norm_eps=c.layer_norm_eps,
            bos_token_id=max(c.bos_id, 0),
            eos_token_id=c.eos_id,
            pad_token_id=c.pad_id,
            projection_dim=c.d_embed,
        ),
        vision_config=dict(
            hidden_size=c.vision_d_model,
            intermediate_size=c.vision_d_ff,
            num_hidden_layers=c.vision_n_layers,
            num_attention_heads=c.vision_n_heads,
            image_size=c.image_size,
            patch_size=c.patch_size,
            num_channels=c.in_channels,
            hidden_act=act,
            layer_norm_eps=c.layer_norm_eps,
            projection_dim=c.d_embed,
        ),
        projection_dim=c.d_embed,
        logit_scale_init_value=math.log(1 / c.temperature),
    )


def hf_clip_state(model: CLIP) -> dict[str, torch.Tensor]:
    """The weights under the names of a CLIPModel checkpoint file."""
    s, c = model.state_dict(), model.config
    v, t = "vision_model.", "text_model."
    theirs = {
        v + "embeddings.class_embedding": s["visual.cls_token"].reshape(-1),
        v + "embeddings.position_embedding.weight": s["visual.position_embed"][0],
        v + "embeddings.patch_embedding.weight": s["visual.patch_embed.proj.weight"],
        v + "pre_layrnorm.weight": s["visual.embed_norm.weight"],
        v + "pre_layrnorm.bias": s["visual.embed_norm.bias"],
        v + "post_layernorm.weight": s["visual.final_norm.weight"],
        v + "post_layernorm.bias": s["visual.final_norm.bias"],
        t + "embeddings.token_embedding.weight": s["text.token_embed.weight"],
        t + "embeddings.position_embedding.weight": s["text.position_embed"],
        t + "final_layer_norm.weight": s["text.final_norm.weight"],
        t + "final_layer_norm.bias": s["text.final_norm.bias"],
        "visual_projection.weight": s["visual_proj.weight"],
        "text_projection.weight": s["text_proj.weight"],
        "logit_scale": s["logit_scale"],
    }
    for tower, prefix, n in (("visual", v, c.vision_n_layers), ("text", t, c.text_n_layers)):
        for i in range(n):
            for mine, names in BLOCK:
                for part in ("weight", "bias"):
                    for name, chunk in zip(names, s[f"{tower}.layers.{i}.{mine}.{part}"].chunk(len(names))):
                        theirs[f"{prefix}encoder.layers.{i}.{name}.{part}"] = chunk
    return {k: x.detach().contiguous().clone() for k, x in theirs.items()}


def export_clip(model_path: str | Path, out: str | Path, force: bool = False) -> Path:
    """`aiayn export MODEL --format hf` for a CLIP: config.json, model.safetensors, preprocessor_config.json
    and the vocabulary (tokenizer.json for a Hugging Face one, else the sentencepiece model spm.model,
    whose ids aiayn's captions use)."""
    from safetensors.torch import save_file

    from aiayn.data.text import HFTokenizer, lm_tokenizer_from_assets
    from aiayn.io.checkpoint import read_checkpoint, resolve_model_path

    with export_directory(out, force, model_path) as tmp:
        ckpt = read_checkpoint(resolve_model_path(model_path))
        model, spec = ckpt.build(), json.loads(ckpt.assets["image"])
        hf_clip_config(model).save_pretrained(tmp)
        save_file(hf_clip_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        size = model.config.image_size
        processor = {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": size},
            "do_center_crop": True,
            "crop_size": {"height": size, "width": size},
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": spec["mean"],
            "image_std": spec["std"],
            "do_convert_rgb": spec["channels"] == 3,
        }
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
        tok = lm_tokenizer_from_assets(ckpt.assets, str(ckpt.path))
        if isinstance(tok, HFTokenizer):
            (tmp / "tokenizer.json").write_text(tok.json, encoding="utf-8")
        else:
            tok.save(tmp / "spm.model")
    return Path(out)
