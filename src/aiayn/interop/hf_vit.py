"""Hugging Face ViT (`ViTForImageClassification`: google/vit-base-patch16-224 and its fine-tunes) ↔ aiayn.

`import_vit` reads a directory (config.json, model.safetensors or pytorch_model.bin loaded with
weights_only, preprocessor_config.json for the normalisation) into one aiayn weights file whose
logits equal Hugging Face's; `export_vit` writes an aiayn ViT as a directory that
`ViTForImageClassification.from_pretrained` and `ViTImageProcessor.from_pretrained` load. HF's
separate query/key/value become aiayn's fused qkv_proj (q;k;v); the class token, positions, patch
convolution, norms and head carry over as they are. What ViT in transformers lacks (LayerScale,
mean pooling, 2-D sinusoidal positions, a convolutional stem) is refused on export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from aiayn.interop import export_directory
from aiayn.interop.hf_marian import InteropError, _load_hf_weights, _read_json
from aiayn.models import ViT, ViTConfig

FROM_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
# (aiayn module in a block, [HF modules in vit.encoder.layer.{i}, fused in order])
BLOCK = [
    ("self_attn_norm", ["layernorm_before"]),
    ("self_attn.qkv_proj", ["attention.attention.query", "attention.attention.key", "attention.attention.value"]),
    ("self_attn.out_proj", ["attention.output.dense"]),
    ("ffn_norm", ["layernorm_after"]),
    ("ffn.w1", ["intermediate.dense"]),
    ("ffn.w2", ["output.dense"]),
]


def vit_config(hf: dict, source: str = "config.json") -> ViTConfig:
    if hf.get("model_type") != "vit":
        raise InteropError(f"{source}: model_type is {hf.get('model_type')!r}, not 'vit'")
    act = hf.get("hidden_act", "gelu")
    if act not in FROM_HF_ACTIVATION:
        raise InteropError(f"{source}: hidden_act {act!r} is not supported (one of {', '.join(FROM_HF_ACTIVATION)})")
    if not hf.get("qkv_bias", True):
        raise InteropError(f"{source}: attention without biases (qkv_bias false) is not supported")
    size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
    if isinstance(size, (list, tuple)) or isinstance(patch, (list, tuple)):
        raise InteropError(f"{source}: only square images and patches are supported")
    labels = hf.get("id2label") or {}
    return ViTConfig(
        image_size=int(size),
        patch_size=int(patch),
        in_channels=int(hf.get("num_channels", 3)),
        n_classes=len(labels) if labels else int(hf.get("num_labels", 2)),
        d_model=int(hf["hidden_size"]),
        n_heads=int(hf["num_attention_heads"]),
        d_ff=int(hf["intermediate_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        dropout=float(hf.get("hidden_dropout_prob", 0.0)),
        attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.0)),
        activation=FROM_HF_ACTIVATION[act],
        pooling="cls",
        positional="learned",
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
    )


def read_vit(directory: str | Path) -> tuple[ViT, list[str], dict]:
    """(model, class names, image spec) from a ViTForImageClassification directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory holding a ViT checkpoint")
    hf_cfg = _read_json(directory / "config.json")
    cfg = vit_config(hf_cfg, str(directory / "config.json"))
    labels = hf_cfg.get("id2label") or {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)}
    classes = [labels[str(i)] if str(i) in labels else labels[i] for i in range(cfg.n_classes)]
    hf = _load_hf_weights(directory)  # drops a leading "model." only; ViT keys start with "vit."

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise InteropError(f"{directory}: the weights have no {name}")
        return hf[name].float()

    ours = {
        "cls_token": take("vit.embeddings.cls_token"),
        "position_embed": take("vit.embeddings.position_embeddings"),
        "patch_embed.proj.weight": take("vit.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": take("vit.embeddings.patch_embeddings.projection.bias"),
        "final_norm.weight": take("vit.layernorm.weight"),
        "final_norm.bias": take("vit.layernorm.bias"),
        "head.weight": take("classifier.weight"),
        "head.bias": take("classifier.bias"),
    }
    for i in range(cfg.n_layers):
        for mine, theirs in BLOCK:
            for part in ("weight", "bias"):
                ours[f"layers.{i}.{mine}.{part}"] = torch.cat([take(f"vit.encoder.layer.{i}.{t}.{part}") for t in theirs])
    model = ViT(cfg)
    from aiayn.io.checkpoint import load_weights

    load_weights(model, ours, str(directory))
    proc = _read_json(directory / "preprocessor_config.json") if (directory / "preprocessor_config.json").is_file() else {}
    mean = proc.get("image_mean", [0.5] * cfg.in_channels)
    std = proc.get("image_std", [0.5] * cfg.in_channels)
    if not proc.get("do_normalize", True):
        mean, std = [0.0] * cfg.in_channels, [1.0] * cfg.in_channels
    spec = {"height": cfg.image_size, "width": cfg.image_size, "channels": cfg.in_channels, "mean": mean, "std": std, "flip": False}
    return model.eval(), classes, spec


def import_vit(directory: str | Path, out: str | Path) -> Path:
    from aiayn.io.checkpoint import save_model

    model, classes, spec = read_vit(directory)
    out = Path(out)
    path = out if out.suffix == ".safetensors" else out / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    assets = {"classes": json.dumps(classes, ensure_ascii=False), "image": json.dumps(spec)}
    save_model(path, model, assets, {"source": str(directory)}, "images")
    return path


def hf_vit_config(model: ViT, classes: list[str]):
    from transformers import ViTConfig as HFViTConfig

    c = model.config
    if (
        c.pooling != "cls"
        or c.positional != "learned"
        or c.layer_scale
        or c.activation not in HF_ACTIVATION
        or not c.patch_bias
        or c.embed_norm
        or c.patch_stem != "linear"
        or not c.n_classes
    ):
        raise InteropError(
            "transformers' ViT has a linear patch projection with a bias, a class token, learned positions, no LayerScale or norm before the blocks, "
            "a classifier and a GELU or ReLU; this model differs"
        )
    return HFViTConfig(
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        intermediate_size=c.d_ff,
        hidden_act=HF_ACTIVATION[c.activation],
        hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.attn_dropout,
        layer_norm_eps=c.layer_norm_eps,
        image_size=c.image_size,
        patch_size=c.patch_size,
        num_channels=c.in_channels,
        qkv_bias=True,
        id2label={i: name for i, name in enumerate(classes)},
        label2id={name: i for i, name in enumerate(classes)},
    )


def hf_vit_state(model: ViT) -> dict[str, torch.Tensor]:
    """The weights under the names of a ViTForImageClassification checkpoint file (which
    from_pretrained reads whatever names its modules have inside)."""
    state = model.state_dict()
    theirs = {
        "vit.embeddings.cls_token": state["cls_token"],
        "vit.embeddings.position_embeddings": state["position_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "vit.layernorm.weight": state["final_norm.weight"],
        "vit.layernorm.bias": state["final_norm.bias"],
        "classifier.weight": state["head.weight"],
        "classifier.bias": state["head.bias"],
    }
    for i in range(model.config.n_layers):
        for mine, names in BLOCK:
            for part in ("weight", "bias"):
                chunks = state[f"layers.{i}.{mine}.{part}"].chunk(len(names))
                for name, chunk in zip(names, chunks):
                    theirs[f"vit.encoder.layer.{i}.{name}.{part}"] = chunk
    return {k: v.detach().contiguous().clone() for k, v in theirs.items()}


def export_vit(model_path: str | Path, out: str | Path, force: bool = False) -> Path:
    """`aiayn export MODEL --format hf` for a ViT: config.json, model.safetensors and preprocessor_config.json."""
    from safetensors.torch import save_file

    from aiayn.io.checkpoint import read_checkpoint, resolve_model_path

    with export_directory(out, force, model_path) as tmp:
        ckpt = read_checkpoint(resolve_model_path(model_path))
        classes, spec = json.loads(ckpt.assets["classes"]), json.loads(ckpt.assets["image"])
        model = ckpt.build()
        hf_vit_config(model, classes).save_pretrained(tmp)
        save_file(hf_vit_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        processor = {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": ckpt.config.image_size, "width": ckpt.config.image_size},
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": spec["mean"],
            "image_std": spec["std"],
        }
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
    return Path(out)
