"""ViT (models/vit.py), image datasets, the image task and using a classifier: patch embedding
against a hand reshape, batch-composition invariance, rollout, data checks naming the file, bit-exact
resume, classify/evaluate/attention on PNG files, and Hugging Face ViT equality both ways."""

import json

import numpy as np
import pytest
import torch

from aiayn import models
from aiayn.data.corpus import CorpusError
from aiayn.data.images import ImageOptions, ImageSplit, prepare_images
from aiayn.models.vit import ViTConfig
from aiayn.nn import ConvStem, PatchEmbedding


def tiny_vit(**overrides):
    torch.manual_seed(0)
    _, cfg = models.preset_config("vit-tiny", **{"image_size": 8, "patch_size": 2, "n_layers": 2, "d_model": 32, "d_ff": 64, **overrides})
    model = models.build("vit", cfg).eval()
    with torch.no_grad():  # the head starts at zero (timm's init): give it weights so that outputs differ
        model.head.weight.normal_(0, 0.1)
    return model


def test_patch_embedding_is_a_linear_map_of_each_flattened_patch():
    torch.manual_seed(0)
    pe = PatchEmbedding(3, 4, 16)
    x = torch.randn(2, 3, 8, 12)
    out = pe(x)  # [2, 2·3, 16]
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # [B, C, 2, 3, 4, 4]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 3 * 16)  # row-major patches, each (C, p, p) flattened
    by_hand = patches @ pe.proj.weight.reshape(16, -1).T + pe.proj.bias
    torch.testing.assert_close(out, by_hand, atol=1e-5, rtol=1e-5)


def test_a_conv_stem_gives_the_patch_grid_from_overlapping_fields_and_wants_a_power_of_two():
    torch.manual_seed(0)
    stem = ConvStem(1, 4, 32).eval()
    assert [m.stride for m in stem.convs if isinstance(m, torch.nn.Conv2d)] == [(2, 2), (2, 2)]
    x = torch.randn(2, 1, 8, 12)
    out = stem(x)
    assert out.shape == (2, 2 * 3, 32)
    moved = x.clone()
    moved[:, :, 3, 3] += 1.0  # the last pixel of patch (0, 0): its 3 × 3 fields reach into the patches beside it
    changed = (stem(moved) - out).abs().amax((0, 2)) > 0
    assert changed[0] and changed[1] and changed[3] and not changed[2]
    with pytest.raises(ValueError, match="power of 2"):
        ConvStem(1, 6, 32)
    with pytest.raises(ValueError, match="power of 2"):
        ViTConfig.check({"image_size": 28, "patch_size": 7, "patch_stem": "conv"})
    from aiayn.interop.hf_marian import InteropError
    from aiayn.interop.hf_vit import hf_vit_config

    with pytest.raises(InteropError, match="linear patch projection"):
        hf_vit_config(tiny_vit(patch_stem="conv"), ["a", "b"])


def test_a_deeper_conv_stem_adds_stride_1_convolutions_and_keeps_the_grid():
    """stem_depth 2: at each resolution a 3 × 3 convolution of stride 1 after the one that halves it;
    the same token grid, fields reaching one patch further; a depth below 1 is refused."""
    torch.manual_seed(0)
    stem = ConvStem(1, 4, 32, depth=2).eval()
    assert [m.stride for m in stem.convs if isinstance(m, torch.nn.Conv2d)] == [(2, 2), (1, 1), (2, 2), (1, 1)]
    x = torch.randn(2, 1, 16, 16)
    out = stem(x)
    assert out.shape == (2, 4 * 4, 32)
    moved = x.clone()
    moved[:, :, 0, 0] += 1.0  # the first pixel: the shallow stem's fields reach patch 1, the deeper one's patch 2
    changed = (stem(moved) - out).abs().amax((0, 2)) > 0
    shallow = ConvStem(1, 4, 32).eval()
    changed_shallow = (shallow(moved) - shallow(x)).abs().amax((0, 2)) > 0
    assert changed[2] and not changed_shallow[2]
    model = tiny_vit(patch_stem="conv", stem_depth=2)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, model.config.n_classes)
    with pytest.raises(ValueError, match="stem_depth"):
        ViTConfig.check({"patch_stem": "conv", "stem_depth": 0})


@pytest.mark.parametrize(
    "overrides", [{}, {"pooling": "mean", "positional": "sinusoidal"}, {"layer_scale": 0.1}, {"patch_stem": "conv", "stem_depth": 2}]
)
def test_an_image_is_classified_the_same_alone_or_in_any_batch(overrides):
    model = tiny_vit(**overrides)
    images = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        batch = model(images)
        alone = torch.cat([model(images[i : i + 1]) for i in range(5)])
        shuffled = model(images[[3, 1, 4, 0, 2]])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled, batch[[3, 1, 4, 0, 2]], atol=1e-5, rtol=0)


def test_stochastic_depth_only_while_training_and_rollout_rows_sum_to_one():
    model = tiny_vit(drop_path=0.5)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: no drop
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(a, model(x))
        model.eval()
        _, weights = model.features(x, need_weights=True)
    rollout = models.attention_rollout(weights)
    assert rollout.shape == (4, 17, 17)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(4, 17), atol=1e-5, rtol=0)
    assert (rollout >= 0).all()


def write_pngs(root, n_per_class=6, size=8, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            base = 40 if c == 0 else 200
            pixels = np.clip(base + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / name / f"{i}.png")
    return root


def test_a_folder_of_class_folders_is_prepared_and_a_corrupt_image_is_named(tmp_path):
    root = write_pngs(tmp_path / "pics")
    (root / "light" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CorpusError, match="broken.png: not a readable image"):
        prepare_images(str(root), tmp_path / "data", ImageOptions(), log=lambda *a: None)
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".data.tmp-*"))
    meta = prepare_images(
        str(root), tmp_path / "data", ImageOptions(skip_bad=True, valid_fraction=0.2, test_fraction=0.2), log=lambda *a: None
    )
    assert meta["classes"] == ["dark", "light"] and meta["skipped"] == {"unreadable": 1}
    assert sum(s["images"] for s in meta["splits"].values()) == 12
    assert meta["image"]["channels"] == 1 and 0 < meta["image"]["mean"][0] < 1
    from PIL import Image

    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(root / "dark" / "odd.png")
    (root / "light" / "broken.png").unlink()
    with pytest.raises(CorpusError, match="odd.png: is 9×9 pixels"):
        prepare_images(str(root), tmp_path / "data2", ImageOptions(), log=lambda *a: None)
    meta = prepare_images(str(root), tmp_path / "data2", ImageOptions(image_size=8), log=lambda *a: None)
    assert sum(s["images"] for s in meta["splits"].values()) == 13


def test_fashion_mnist_missing_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        prepare_images("fashion-mnist", tmp_path / "d", ImageOptions(fashion_dir=str(tmp_path / "nowhere")), log=lambda *a: None)


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("digits") / "data"
    prepare_images("digits", out, log=lambda *a: None)
    return out


def trainer(data, run, **values):
    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    cfg = {
        "model": {"preset": "vit-tiny", "patch_size": 2, "n_layers": 2, "d_model": 64, "d_ff": 128, "drop_path": 0.1},
        "max_sentences": 64,
        "lr_schedule": "inverse_sqrt",
        "lr": 0.002,
        "warmup_steps": 10,
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "validate_every": 10,
        "save_every": 10,
        "log_every": 100,
        **values,
    }
    return Trainer(TrainConfig.from_dict(cfg), data, run, resume=values.get("resume", False), log=lambda *a: None, progress=False)


def test_training_resumes_to_the_bit_and_the_cli_classifies(digits_data, tmp_path, capsys):
    from safetensors.torch import load_file

    from aiayn.cli import main

    trainer(digits_data, tmp_path / "whole", max_updates=20).train()
    trainer(digits_data, tmp_path / "cut", max_updates=10).train()
    import yaml

    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    saved = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["train"]
    Trainer(
        TrainConfig.from_dict({**saved, "max_updates": 20}), digits_data, tmp_path / "cut", resume=True, log=lambda *a: None, progress=False
    ).train()
    a = load_file(tmp_path / "whole" / "checkpoints" / "step-00000020.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-00000020.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert any("valid_accuracy" in e for e in log)

    # classify PNG files; a file that is no image gets one line naming it
    from PIL import Image

    split = ImageSplit(digits_data, "test")
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.asarray(split.images[i])[..., 0], "L").save(path)
        paths.append(str(path))
    (tmp_path / "notes.png").write_text("not an image")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["classify", "--model", str(tmp_path / "whole"), *paths, str(tmp_path / "notes.png"), "--json"])
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["path"] for r in rows] == paths and all(len(r["labels"]) == 3 for r in rows)
    assert all(abs(sum(x["probability"] for x in r["labels"]) - 1) < 1.0 for r in rows)
    assert "notes.png: not a readable image" in out.err and "Traceback" not in out.err
    main(["evaluate", "--model", str(tmp_path / "whole"), "--data", str(digits_data), "--confusion", str(tmp_path / "c.png"), "--json"])
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert np.asarray(result["confusion"]).sum() == len(split) and (tmp_path / "c.png").stat().st_size > 0
    assert result["accuracy"] == pytest.approx(100 * np.trace(np.asarray(result["confusion"])) / len(split))
    main(["attention", "--model", str(tmp_path / "whole"), "--image", paths[0], "--out", str(tmp_path / "map.png")])
    assert (tmp_path / "map.png").stat().st_size > 0


def hf_vit_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_channels=3,
        id2label={0: "cat", 1: "dog", 2: "bird"},
        label2id={"cat": 0, "dog": 1, "bird": 2},
    )
    hf = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf-vit")
    return tmp_path / "hf-vit", hf


def test_hf_vit_imports_with_equal_logits_and_exports_back(tmp_path):
    from aiayn.cli import main
    from aiayn.io.checkpoint import load_model

    directory, hf = hf_vit_dir(tmp_path)
    main(["import-hf", str(directory), "--out", str(tmp_path / "ours")])
    model, ckpt = load_model(tmp_path / "ours")
    assert ckpt.task == "images" and json.loads(ckpt.assets["classes"]) == ["cat", "dog", "bird"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        theirs = hf(pixel_values=x).logits
        torch.testing.assert_close(model(x), theirs, atol=1e-5 * theirs.abs().max().item() + 1e-6, rtol=0)
    main(["export", str(tmp_path / "ours"), "--format", "hf", "--out", str(tmp_path / "back")])
    import transformers

    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(pixel_values=x).logits, theirs, atol=1e-5 * theirs.abs().max().item() + 1e-6, rtol=0)
    assert back.config.id2label[1] == "dog"
    processor = transformers.ViTImageProcessor.from_pretrained(tmp_path / "back")
    assert list(processor.image_mean) == [0.5, 0.5, 0.5]


@pytest.mark.slow
def test_digits_reach_97_percent(digits_data, tmp_path):
    """configs/vit-digits.yaml: a small ViT (2 layers, 64 wide, patch 2: 16 patches of an 8 × 8 digit
    from a convolutional stem, their mean pooled) for a fixed number of updates (so that the result does not depend on the
    machine's speed), cosine decay over them, regularised as vit-tiny is. How long the recipe takes is
    measured by benchmarks/vit_digits.py, not here."""
    from aiayn.io.checkpoint import load_model
    from aiayn.tasks.images import evaluate_split
    from aiayn.train.config import load_config
    from aiayn.train.trainer import Trainer

    Trainer(load_config("vit-digits"), digits_data, tmp_path / "run", log=lambda *a: None, progress=False).train()
    model, _ = load_model(tmp_path / "run")
    split = ImageSplit(digits_data, "test")
    accuracy = evaluate_split(model, split, split.meta["image"], torch.device("cpu"))["valid_accuracy"]
    # the same updates land at different accuracies on different CPUs and precisions (their rounding
    # differs, as a seed would; the 180 test digits are 0.56 points each). This recipe on a Xeon with
    # AMX (2026-12-06, benchmarks/vit_digits.py): 98.89-99.44% over seeds 1-5 in fp32, and in bf16
    # over seeds 1-3 (see docs/family.md); without the convolutional stem the lowest was 97.22%
    assert accuracy >= 97.0, accuracy


def test_the_server_classifies_an_uploaded_image_and_refuses_garbage():
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    import asyncio
    import base64
    import io

    from PIL import Image

    from aiayn.serve import ServeSettings, create_app
    from aiayn.vision import Classifier

    model = tiny_vit()
    spec = {"height": 8, "width": 8, "channels": 1, "mean": [0.5], "std": [0.25], "flip": False}
    clf = Classifier(model, [str(i) for i in range(10)], spec, torch.device("cpu"))
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()

    async def main():
        app = create_app(clf, ServeSettings(), name="vit")
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                ok = await client.post("/v1/classify", json={"image": "data:image/png;base64," + png, "top_k": 4, "rollout": True})
                bad = await client.post("/v1/classify", json={"image": base64.b64encode(b"hello").decode()})
                not_b64 = await client.post("/v1/classify", json={"image": "%%%"})
                page = await client.get("/")
                return ok, bad, not_b64, page

    ok, bad, not_b64, page = asyncio.run(main())
    assert ok.status_code == 200, ok.text
    data = ok.json()
    expected = clf.classify(pixels[..., None][None], 4)[0]
    assert [x["label"] for x in data["labels"]] == [c for c, _ in expected]
    grid = np.asarray(data["rollout"])
    assert grid.shape == (4, 4) and (grid >= 0).all()
    assert bad.status_code == 422 and "not a readable image" in bad.json()["message"]
    assert not_b64.status_code == 422 and "base64" in not_b64.json()["message"]
    assert "classify.js" in page.text


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_the_classifier_runs_in_bf16_and_int8_close_to_fp32(precision):
    from aiayn.runtime import cpu_has_bf16
    from aiayn.vision import Classifier

    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 units (bf16 autocast still works, only slowly)")
    spec = {"height": 8, "width": 8, "channels": 1, "mean": [0.5], "std": [0.25], "flip": False}
    images = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 1), dtype=np.uint8)
    model = tiny_vit()
    fp32 = Classifier(model, [str(i) for i in range(10)], spec, torch.device("cpu"))
    reference, (reference_grid, _) = fp32.probabilities(images), fp32.rollout(images[0])
    clf = Classifier(model, [str(i) for i in range(10)], spec, torch.device("cpu"), precision)
    assert clf.precision == precision
    probs = clf.probabilities(images)
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(-1), torch.ones(16), atol=1e-5)
    # bf16 keeps 8 bits of mantissa, int8 codes 7-8 bits per weight and activation: a few per cent of the logits' spread
    assert (probs - reference).abs().max() < 0.05, (probs - reference).abs().max()
    grid, top = clf.rollout(images[0])
    # the class token's rollout over the 4×4 patches (its share of itself left out) follows fp32's
    assert grid.shape == (4, 4) and np.abs(grid - reference_grid).max() < 0.02 * reference_grid.max()


@pytest.mark.slow
def test_the_classify_page_in_a_browser(tmp_path):
    """Upload a PNG on the served page: its classes are listed with the server's probabilities and
    the rollout is laid over the picture; a file that is no image shows the server's message."""
    pytest.importorskip("fastapi")
    from _serving import browser_page
    from PIL import Image

    from aiayn.serve import ServeSettings, create_app
    from aiayn.vision import Classifier

    spec = {"height": 8, "width": 8, "channels": 1, "mean": [0.5], "std": [0.25], "flip": False}
    clf = Classifier(tiny_vit(), [f"class {i}" for i in range(10)], spec, torch.device("cpu"))
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(tmp_path / "digit.png")
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    expected = clf.classify(pixels[..., None][None], 5)[0]
    with browser_page(create_app(clf, ServeSettings(), name="vit"), tmp_path) as (page, server, expect):
        page.goto(server.url + "/")
        expect(page.locator("#model-info")).to_contain_text("10 classes")
        page.set_input_files("#file", str(tmp_path / "digit.png"))
        page.wait_for_selector("#labels li:nth-child(5)")
        shown = page.locator("#labels li").all_text_contents()
        assert shown == [f"{label} — {100 * p:.1f}%" for label, p in expected], (shown, expected)
        # the rollout canvas holds the grey picture with orange cells over it: some pixels are no shade of grey
        coloured = page.evaluate(
            """() => { const d = document.getElementById('rollout').getContext('2d').getImageData(0, 0, 224, 224).data;
                       let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 2]) n++; return n; }"""
        )
        assert coloured > 0
        page.set_input_files("#file", str(tmp_path / "notes.png"))
        expect(page.locator("#error")).to_contain_text("not a readable image")
        assert page.locator("#labels li").count() == 0


def test_the_training_crop_shifts_by_at_most_its_padding_and_the_config_sets_it(digits_data):
    from aiayn.data.images import to_tensor
    from aiayn.tasks.images import ImageClassificationTask, augment, crop_padding
    from aiayn.train.config import TrainConfig

    rng = np.random.default_rng(0)
    images = np.zeros((64, 12, 12, 1), dtype=np.uint8)
    images[:, 5, 5] = 255  # one lit pixel: where it lands tells the shift
    for pad in (0, 1, 3):
        out = augment(images, rng, pad, flip=False)
        _, ys, xs = np.nonzero(out[..., 0] == 255)
        assert len(ys) == 64 and np.abs(ys - 5).max() == pad and np.abs(xs - 5).max() == pad
    spec = {"height": 28}
    assert crop_padding(spec) == 4 and crop_padding(spec, 2) == 2 and crop_padding(spec, 0) == 0
    task = ImageClassificationTask(digits_data)
    sampler = task.sampler(None, TrainConfig.from_dict({"model": {"preset": "vit-tiny"}, "crop_padding": 0, "max_sentences": 16}))
    first = next(iter(task.batches(sampler, None)))
    plain = task.train_data.images[np.sort(next(iter(sampler))[1])]
    assert torch.equal(first.images, to_tensor(np.asarray(plain), task.spec))  # digits are not flipped: no crop, no change
    with pytest.raises(ValueError, match="crop_padding"):
        TrainConfig.from_dict({"model": {"preset": "vit-tiny"}, "crop_padding": -2})
