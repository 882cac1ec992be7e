"""Every registered architecture, at every preset: forward, backward, incremental decoding equal to
the full forward pass, a save -> load round trip, and state-dict keys that stay what they were.
A new model gets these by registering in aiayn.models (ARCHITECTURES and presets.PRESETS)."""

import json
from pathlib import Path

import pytest
import torch

from aiayn import models
from aiayn.io.checkpoint import load_model, save_model

FIXTURES = Path(__file__).parent / "fixtures"
# made with the code before the block set (commit 5bd5497), for vocabulary 64; the gpt entries with
# the first GPT and ViT (they guard their keys, which Hugging Face interop depends on, from here on)
KEYS = json.loads((FIXTURES / "state_dict_keys.json").read_text())
VOCAB = 64
CASES = [(arch, name) for name, (arch, _) in models.PRESETS.items()]


def build(arch: str, name: str, **overrides):
    torch.manual_seed(0)
    if arch == "vit":  # VOCAB classes; small images, so that ViT-B/16 stays quick on a CPU
        size = models.PRESETS[name][1]["patch_size"] * 2
        overrides = {"n_classes": VOCAB, "image_size": size, "in_channels": 3, "drop_path": 0.0, **overrides}
    elif arch == "dit":  # small images (2 × 2 patches), VOCAB classes
        size = models.PRESETS[name][1]["patch_size"] * 2
        overrides = {"n_classes": VOCAB, "image_size": size, "in_channels": 3, **overrides}
        _, cfg = models.preset_config(name, **overrides)
        model = models.build(arch, cfg)
        with torch.no_grad():  # adaLN-Zero starts every block as the identity (no gradient reaches them): leave that
            for p in [*model.modulation.parameters(), *model.final_modulation.parameters(), *model.head.parameters()]:
                p.normal_(0, 0.02)
        return model
    elif arch == "clip":  # small images again (2 × 2 patches)
        size = models.PRESETS[name][1].get("patch_size", 32) * 2
        overrides = {"vocab_size": VOCAB, "image_size": size, "context": 16, **overrides}
    else:
        overrides = {"vocab_size": VOCAB, **overrides}
    _, cfg = models.preset_config(name, dropout=0.0, **overrides)
    return models.build(arch, cfg)


def batch(seed=0, lengths=(5, 3)):
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randint(4, VOCAB, (n,), generator=g)
    return out


def run_full(model, src, tgt):
    """Every position's logits of the target (teacher forcing): [B, T, V]; for an image model, the
    logits of two random images standing in for the 4 target positions of each: [B, 4, V]."""
    if isinstance(model, models.CLIP):  # each image against each caption (end-of-text at a caption's last token): [B, B]
        c = model.config
        images = torch.randn(src.size(0), c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
        return model(images, torch.cat([tgt, torch.full_like(tgt[:, :1], c.eos_id)], 1))[0]
    if isinstance(model, models.DiT):  # the predicted noise of two noisy images, flattened: [B, C·H·W]
        c = model.config
        g = torch.Generator().manual_seed(0)
        x = torch.randn(src.size(0), c.in_channels, c.image_size, c.image_size, generator=g)
        return model(x, torch.tensor([3, 700]), src[:, 0] % c.n_classes).flatten(1)
    if isinstance(model, models.ViT):
        c = model.config
        images = torch.randn(src.size(0), c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
        return model(images)[:, None].expand(-1, tgt.size(1), -1)
    return model(tgt) if isinstance(model, models.GPT) else model(src, tgt)


def start(model, src):
    return model.start(None) if isinstance(model, models.GPT) else model.start(src)


def test_every_architecture_has_presets_and_every_preset_an_architecture():
    assert set(models.ARCHITECTURES) <= {arch for arch, _ in models.PRESETS.values()}
    for arch, name in CASES:
        assert models.architecture(arch).name == arch and arch in KEYS and name in KEYS[arch], (arch, name)


@pytest.mark.parametrize("arch,name", CASES)
def test_forward_and_backward(arch, name):
    model = build(arch, name).train()
    src, tgt = batch(), batch(seed=1, lengths=(4, 4))
    logits = run_full(model, src, tgt)
    shapes = {"clip": (2, 2), "dit": (2, 3 * (2 * models.PRESETS[name][1].get("patch_size", 1)) ** 2)}
    assert logits.shape == shapes.get(arch, (2, 4, VOCAB)) and torch.isfinite(logits).all()
    logits.log_softmax(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) >= 0.9 * len(grads)  # nearly every parameter learns


@pytest.mark.parametrize("arch,name", [(a, n) for a, n in CASES if hasattr(models.architecture(a).model, "step")])
def test_incremental_decoding_equals_the_full_forward_pass(arch, name):
    model = build(arch, name).eval()
    src, tgt = batch(), batch(seed=1, lengths=(4, 4))
    with torch.no_grad():
        full = run_full(model, src, tgt)
        state = start(model, src)
        steps = torch.stack([model.step(tgt[:, t : t + 1], state) for t in range(tgt.size(1))], 1)
        state = start(model, src)
        prefilled = model.step(tgt[:, :3], state)
    scale = full.abs().max().item()
    torch.testing.assert_close(steps, full, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(prefilled, full[:, 2], atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("arch,name", CASES)
def test_state_dict_keys_stay_and_a_checkpoint_round_trips(arch, name, tmp_path):
    model = build(arch, name).eval()
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == KEYS[arch][name]
    save_model(tmp_path / "m.safetensors", model, {"note": "no assets needed here"}, task="test")
    loaded, ckpt = load_model(tmp_path / "m.safetensors")
    assert (ckpt.architecture, ckpt.task, ckpt.assets) == (arch, "test", {"note": "no assets needed here"})
    assert ckpt.config == model.config and type(loaded) is type(model)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
