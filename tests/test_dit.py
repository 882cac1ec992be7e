"""DiT (models/dit.py) and diffusion (aiayn/diffusion.py): the forward process's closed form
against iterating it, adaLN-Zero blocks starting as the identity, patches back to images, DDIM
with η = 1 and every step equal to DDPM, both sampling a known distribution, guidance scale 1
equal to the conditional model, and seeded sampling reproducible."""

import json
import math

import numpy as np
import pytest
import torch

from aiayn import models
from aiayn.diffusion import NoiseSchedule, ddim_sample, ddpm_sample, guided


def tiny_dit(**overrides):
    torch.manual_seed(0)
    values = dict(image_size=8, patch_size=2, in_channels=3, n_classes=5, d_model=32, n_heads=4, d_ff=64, n_layers=2)
    _, cfg = models.preset_config("dit-tiny", **{**values, **overrides})
    return models.build("dit", cfg).eval()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_the_closed_form_of_the_forward_process_matches_iterating_it(kind):
    schedule = NoiseSchedule.make(kind, steps=200)
    g = torch.Generator().manual_seed(0)
    n, x0 = 40_000, torch.tensor([1.5, -0.7], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    for t in range(120):  # q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I), step by step
        beta = schedule.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    ab = schedule.alphas_cumprod[119]
    closed = schedule.add_noise(x0.expand(n, 2), torch.randn(n, 2, generator=g, dtype=torch.float64), torch.full((n,), 119))
    tolerance = 5 / math.sqrt(n)  # five standard errors of a unit-variance mean
    for sample in (x, closed):
        assert torch.allclose(sample.mean(0), ab.sqrt() * x0, atol=tolerance)
        assert torch.allclose(sample.var(0), (1 - ab).expand(2), atol=tolerance * 2)


def test_the_schedules_are_what_their_papers_say():
    linear = NoiseSchedule.make("linear", 1000)
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)
    cosine = NoiseSchedule.make("cosine", 1000)
    s = 0.008
    f = lambda t: math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2
    assert cosine.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-6)
    assert (cosine.betas <= 0.999).all() and (cosine.betas > 0).all()
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule.make("quadratic")


def test_adaln_zero_blocks_start_as_the_identity_and_the_model_predicts_zero():
    model = tiny_dit()
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 10, 999]), torch.tensor([0, 4, 5])
    c = torch.nn.functional.silu(model.condition(t, y))
    h = model.patch_embed(x) + model.position_table
    for block, mod in zip(model.layers, model.modulation):
        m = [p[:, None] for p in mod(c).chunk(6, dim=-1)]
        out, _ = block(h, modulation=(m[0:3], m[3:6]))
        assert torch.equal(out, h)  # every gate is zero: each sub-layer adds nothing
    assert torch.equal(model(x, t, y), torch.zeros_like(x))


def test_patches_go_back_to_their_places():
    model = tiny_dit()
    x = torch.randn(2, 3, 8, 8)
    p = model.config.patch_size
    patches = x.unfold(2, p, p).unfold(3, p, p)  # [B, C, g, g, p, p]
    flat = patches.permute(0, 2, 3, 4, 5, 1).reshape(2, 16, p * p * 3)  # row-major patches, each (p, p, C)
    assert torch.equal(model.unpatchify(flat), x)


class GaussianData:
    """Data x_0 ~ N(μ, s²) per dimension, whose exact ε-prediction is known:
    E[ε | x_t] = √(1 − ᾱ)(x_t − √ᾱ μ) / (ᾱ s² + 1 − ᾱ)."""

    def __init__(self, schedule, mu=0.8, s=0.3):
        self.ab, self.mu, self.s = schedule.alphas_cumprod, mu, s

    def __call__(self, x, t):
        ab = self.ab[t].float().view(-1, *([1] * (x.dim() - 1)))
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)


def test_ddim_with_eta_1_and_every_step_is_ddpm_and_both_sample_the_data():
    schedule = NoiseSchedule.make("linear", steps=300)
    eps = GaussianData(schedule)
    shape = (4000, 2)
    ddpm = ddpm_sample(eps, schedule, shape, torch.Generator().manual_seed(3))
    ddim = ddim_sample(eps, schedule, shape, steps=300, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)  # the same chain, draw for draw
    deterministic = ddim_sample(eps, schedule, shape, steps=300, eta=0.0, generator=torch.Generator().manual_seed(4))
    tolerance = 5 / math.sqrt(shape[0] * 2)
    for sample in (ddpm, deterministic):
        assert abs(sample.mean().item() - 0.8) < tolerance * 0.3 * 2
        assert abs(sample.std().item() - 0.3) < 0.3 * tolerance * 2
    # fewer deterministic steps: the same mean; the spread approaches the data's as steps grow (a discretisation error)
    spreads = [ddim_sample(eps, schedule, shape, n, 0.0, torch.Generator().manual_seed(4)).std().item() for n in (10, 50, 150)]
    assert spreads == sorted(spreads) and spreads[-1] > 0.28


def class_dependent_dit():
    """A tiny DiT whose zero-initialised modulation and head are drawn at random, so its outputs depend on the class."""
    model = tiny_dit()
    with torch.no_grad():
        for p in [*model.modulation.parameters(), *model.final_modulation.parameters(), *model.head.parameters()]:
            p.normal_(0, 0.05)
    return model


def test_guidance_scale_1_is_the_conditional_model_and_sampling_with_a_seed_repeats():
    model = class_dependent_dit()
    schedule = NoiseSchedule.make("linear", steps=50)
    y = torch.tensor([1, 3])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 40])
    with torch.no_grad():
        assert torch.equal(guided(model, y, model.null_class, 1.0)(x, t), model(x, t, y))
        w2 = guided(model, y, model.null_class, 2.0)(x, t)
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, model.null_class))
        torch.testing.assert_close(w2, 2 * cond - uncond, atol=1e-5, rtol=1e-5)
    shape = (2, 3, 8, 8)
    a = ddim_sample(guided(model, y, model.null_class, 2.0), schedule, shape, 10, generator=torch.Generator().manual_seed(7))
    b = ddim_sample(guided(model, y, model.null_class, 2.0), schedule, shape, 10, generator=torch.Generator().manual_seed(7))
    c = ddim_sample(guided(model, y, model.null_class, 2.0), schedule, shape, 10, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_guidance_interval_guides_only_the_noise_levels_inside_it():
    model = class_dependent_dit()
    schedule = NoiseSchedule.make("linear", steps=50)
    ab = schedule.alphas_cumprod
    sigma = ((1 - ab) / ab).sqrt()  # rises with t
    y, x = torch.tensor([1, 3]), torch.randn(2, 3, 8, 8)
    low, high = sigma[10].item(), sigma[30].item()  # guided: t in 11 … 30
    eps = guided(model, y, model.null_class, 3.0, (low, high), schedule)
    with torch.no_grad():
        for step in (0, 10, 11, 30, 31, 49):
            t = torch.full((2,), step)
            cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, model.null_class))
            if 11 <= step <= 30:
                torch.testing.assert_close(eps(x, t), uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
            else:
                assert torch.equal(eps(x, t), cond)
    # an interval holding every step is plain guidance
    shape, everything = (2, 3, 8, 8), (0.0, sigma[-1].item() + 1)
    a = ddim_sample(guided(model, y, model.null_class, 2.0), schedule, shape, 10, generator=torch.Generator().manual_seed(7))
    b = ddim_sample(
        guided(model, y, model.null_class, 2.0, everything, schedule), schedule, shape, 10, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(a, b)
    for bad in ((0.5, 0.5), (-1.0, 1.0)):
        with pytest.raises(ValueError, match="interval"):
            guided(model, y, model.null_class, 2.0, bad, schedule)
    with pytest.raises(ValueError, match="schedule"):
        guided(model, y, model.null_class, 2.0, (0.1, 1.0))


def test_the_moving_average_follows_its_formula_with_the_warm_up():
    from aiayn.train.ema import EMA

    model = tiny_dit()
    ema = EMA(model, 0.99)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=1)  # d_1 = min(0.99, 2/11)
    d = 2 / 11
    for avg, old, new in zip(ema.model.parameters(), before, model.parameters()):
        torch.testing.assert_close(avg, d * old + (1 - d) * new)
        assert not avg.requires_grad
    assert ema.decay_at(10_000) == 0.99
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(model, 1.0)


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    pytest.importorskip("sklearn")
    from aiayn.data.images import prepare_images

    out = tmp_path_factory.mktemp("digits") / "data"
    prepare_images("digits", out, log=lambda *a: None)
    return out


def dit_trainer(data, run, resume=False, **values):
    from aiayn.train.config import TrainConfig
    from aiayn.train.trainer import Trainer

    cfg = {
        "model": {"preset": "dit-tiny", "patch_size": 2, "n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64},
        "max_sentences": 32,
        "lr_schedule": "inverse_sqrt",
        "lr": 0.002,
        "warmup_steps": 5,
        "optimizer": "adamw",
        "ema_decay": 0.9,
        "validate_every": 10,
        "save_every": 10,
        "log_every": 100,
        **values,
    }
    return Trainer(TrainConfig.from_dict(cfg), data, run, resume=resume, log=lambda *a: None, progress=False)


def test_a_dit_trains_on_an_image_dataset_keeps_its_average_and_resumes_to_the_bit(digits_data, tmp_path):
    from safetensors.torch import load_file

    from aiayn.io.checkpoint import load_training_state

    whole = dit_trainer(digits_data, tmp_path / "whole", max_updates=20)
    assert whole.task.name == "image-generation" and whole.model_config.n_classes == 10
    whole.train()
    dit_trainer(digits_data, tmp_path / "cut", max_updates=10).train()
    dit_trainer(digits_data, tmp_path / "cut", resume=True, max_updates=20).train()
    name = "step-00000020"
    a, b = (load_file(tmp_path / run / "checkpoints" / f"{name}.safetensors") for run in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint holds the average, the training state the weights being trained (not the same)
    trained = load_training_state(tmp_path / "whole" / "checkpoints" / f"{name}.state.pt")["trained_weights"]
    other = load_training_state(tmp_path / "cut" / "checkpoints" / f"{name}.state.pt")["trained_weights"]
    assert all(torch.equal(trained[k], other[k]) for k in trained)
    assert any(not torch.equal(trained[k], a[k]) for k in a)
    torch.testing.assert_close(whole.ema.model.state_dict()["head.weight"], a["head.weight"])
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    train_losses = [e["loss"] for e in log if e["type"] == "train"]
    assert train_losses[0] == pytest.approx(1.0, abs=0.2)  # an MSE (not in bits): the zero-initialised model predicts ε̂ = 0
    assert any(e["type"] == "valid" and e["valid_loss"] < train_losses[0] for e in log)


def test_the_batches_drop_labels_to_the_null_class_at_the_configured_rate_and_repeat_by_seed(digits_data):
    from aiayn.tasks import for_dataset
    from aiayn.tasks.images import ImageSampler

    task = for_dataset(digits_data, "dit-tiny")
    assert task.name == "image-generation" and for_dataset(digits_data).name == "images"
    model = tiny_dit(in_channels=1, n_classes=10, class_dropout=0.25)

    def labels(seed):
        sampler = ImageSampler(len(task.train_data), 200, seed)
        sampler.set_epoch(0)
        return torch.cat([b.labels for b in task.batches(sampler, model)])

    first = labels(1)
    assert torch.equal(first, labels(1)) and not torch.equal(first, labels(2))
    dropped = (first == model.null_class).float().mean().item()
    assert 0.2 < dropped < 0.3
    batch = next(iter(task.batches(ImageSampler(len(task.train_data), 8, 1), model)))
    assert batch.images.min() >= -1 and batch.images.max() <= 1 and batch.images.shape == (8, 1, 8, 8)
    assert batch.noise.shape == batch.images.shape and int(batch.t.max()) < model.config.diffusion_steps


def test_random_flip_in_the_config_overrides_what_the_dataset_allows(digits_data):
    """digits' metadata allows no flips; random_flip: true mirrors about half the images, false or null none."""
    from aiayn.tasks import for_dataset
    from aiayn.tasks.image_generation import to_unit_range
    from aiayn.tasks.images import ImageSampler, flips
    from aiayn.train.config import load_config

    task = for_dataset(digits_data, "dit-tiny")
    model = tiny_dit(in_channels=1, n_classes=10)
    assert task.spec["flip"] is False and load_config("dit-tiny").random_flip is False

    def mirrored(setting):
        sampler = ImageSampler(len(task.train_data), 100, 1, random_flip=setting)
        (_, idx), batch = next(iter(sampler)), next(iter(task.batches(sampler, model)))
        x = to_unit_range(np.asarray(task.train_data.images[np.sort(idx)]))
        same, flipped = (batch.images == x).flatten(1).all(1), (batch.images == x.flip(-1)).flatten(1).all(1)
        assert bool((same | flipped).all())
        return int((flipped & ~same).sum())  # (a symmetric image is both)

    assert mirrored(None) == 0 and mirrored(False) == 0 and 30 < mirrored(True) < 70
    fashion = {**task.spec, "flip": True}
    assert flips(fashion) and flips(fashion, True) and not flips(fashion, False)
    with pytest.raises(ValueError, match="random_flip"):
        load_config("dit-tiny", {"random_flip": "yes"})


def test_sample_draws_the_asked_classes_repeatably_and_refuses_unknown_ones(digits_data, tmp_path, capsys):
    from PIL import Image

    from aiayn.cli import main
    from aiayn.generate.images import ImageGenerator

    dit_trainer(digits_data, tmp_path / "run", max_updates=10).train()
    gen = ImageGenerator.load(tmp_path / "run")
    assert gen.classes[gen.class_index("7")] == "7" and gen.class_index(3) == 3
    with pytest.raises(ValueError, match="unknown class"):
        gen.class_index("cat")
    a, steps = gen.sample([1, 2, 3], steps=5, guidance=2.0, seed=3, trajectory=True)
    b, _ = gen.sample([1, 2, 3], steps=5, guidance=2.0, seed=3)
    c, _ = gen.sample([1, 2, 3], steps=5, guidance=2.0, seed=4)
    assert a.dtype == np.uint8 and a.shape == (3, 8, 8, 1) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(steps) == 5 and np.array_equal(steps[-1], a)  # the last estimate is the sample
    assert main(
        [
            "sample",
            "--model",
            str(tmp_path / "run"),
            "--class",
            "1,2",
            "--n",
            "6",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "g.png"),
            "--steps-out",
            str(tmp_path / "s.png"),
        ]
    ) in (0, None)
    assert Image.open(tmp_path / "g.png").size == (3 * 10 + 2, 2 * 10 + 2)
    assert Image.open(tmp_path / "s.png").size[0] == 4 * 10 + 2  # four steps across, one row per image
    assert main(["sample", "--model", str(tmp_path / "run"), "--n", "3", "--steps", "2", "--out", str(tmp_path / "each") + "/"]) in (
        0,
        None,
    )
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["0000-0.png", "0001-1.png", "0002-2.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["sample", "--model", str(tmp_path / "run"), "--class", "cat", "--out", str(tmp_path / "x.png")])
    assert exit.value.code == 2 and "unknown class 'cat'" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    # guidance in an interval of noise levels: the generator's draws, and an empty interval refused
    interval = ["--guidance-interval", "0.5", "5", "--class", "1", "--n", "2", "--steps", "5", "--seed", "3"]
    assert main(["sample", "--model", str(tmp_path / "run"), *interval, "--out", str(tmp_path / "i") + "/"]) in (0, None)
    expected, _ = gen.sample([1, 1], steps=5, guidance=2.0, seed=3, guidance_interval=(0.5, 5.0))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "i" / "0001-1.png")), expected[1][..., 0])
    with pytest.raises(SystemExit) as exit:
        main(["sample", "--model", str(tmp_path / "run"), "--guidance-interval", "5", "0.5", "--out", str(tmp_path / "y.png")])
    assert exit.value.code == 2 and "LOW < HIGH" in capsys.readouterr().err and not (tmp_path / "y.png").exists()


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_sampling_in_bf16_or_int8_draws_nearly_the_fp32_images(dit_run, precision):
    """The model's calls in the asked precision (the sampler's updates in fp32): the same draws, each
    image within a few grey levels of fp32's on average, and the precision reported by the service."""
    pytest.importorskip("fastapi")
    from aiayn.generate.images import ImageGenerator
    from aiayn.serve import samples
    from aiayn.serve.app import load_translator

    fp32, _ = ImageGenerator.load(dit_run).sample([0, 1, 2, 3], steps=5, guidance=2.0, seed=1)
    gen = ImageGenerator.load(dit_run, precision=precision)
    assert gen.precision == precision
    other, _ = gen.sample([0, 1, 2, 3], steps=5, guidance=2.0, seed=1)
    difference = np.abs(other.astype(float) - fp32.astype(float)).mean(axis=(1, 2, 3))
    assert other.shape == fp32.shape and difference.max() < 2.0, difference
    assert not np.array_equal(other, fp32)  # (the precision was applied)
    served = load_translator(dit_run, "cpu", precision)  # `aiayn serve --precision`
    assert served.precision == precision and samples.model_info(served, "dit", None)["precision"] == precision


def test_the_frechet_distance_of_two_gaussians_is_its_closed_form():
    from aiayn.vision import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(200_000, 3)) * np.array([1.0, 2.0, 0.5])
    b = rng.normal(1.0, 1.0, size=(200_000, 3)) * np.array([3.0, 1.0, 0.5]) + np.array([0.0, -1.0, 0.0])
    mu_b = np.array([3.0, 0.0, 0.5])  # the scaled means, then shifted
    expected = ((mu_b - 0.0) ** 2).sum() + ((np.array([1.0, 2.0, 0.5]) - np.array([3.0, 1.0, 0.5])) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def dit_run(digits_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("dit") / "run"
    dit_trainer(digits_data, run, max_updates=10).train()
    return run


def test_the_service_draws_samples_with_their_steps(dit_run):
    import asyncio
    import base64
    import io

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from PIL import Image

    from aiayn.generate.images import ImageGenerator
    from aiayn.serve import ServeSettings, create_app

    async def main():
        app = create_app(dit_run, ServeSettings(), device="cpu", name="dit")
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                post = client.post
                return (
                    await post("/v1/samples", json={"class": "3", "n": 2, "steps": 4, "seed": 5, "trajectory": True}),
                    await post("/v1/samples", json={"class": "cat"}),
                    await post("/v1/samples", json={"class": 1, "n": 64, "steps": 1000}),
                    await post("/v1/samples", json={"class": 1, "n": 65}),
                    await post("/v1/samples", json={"class": 2, "n": 2, "steps": 4, "guidance_interval": [0.5, 5.0]}),
                    await post("/v1/samples", json={"class": 2, "guidance_interval": [5.0, 0.5]}),
                    await client.get("/v1/models"),
                    await client.get("/"),
                )

    ok, unknown, costly, many, interval, empty_interval, info, page = asyncio.run(main())
    assert ok.status_code == 200, ok.text
    body = ok.json()
    expected, _ = ImageGenerator.load(dit_run).sample([3, 3], steps=4, guidance=2.0, seed=5)

    def pixels(url):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))

    assert body["class"] == "3" and [pixels(u).tolist() for u in body["images"]] == [e[..., 0].tolist() for e in expected]
    assert len(body["steps"]) == 4 and pixels(body["steps"][0]).shape == (8 + 2, 2 * 9 + 1)
    assert unknown.status_code == 422 and "unknown class" in unknown.json()["message"]
    assert costly.status_code == 413 and many.status_code == 422
    within, _ = ImageGenerator.load(dit_run).sample([2, 2], steps=4, guidance=2.0, guidance_interval=(0.5, 5.0))
    assert [pixels(u).tolist() for u in interval.json()["images"]] == [e[..., 0].tolist() for e in within]
    assert empty_interval.status_code == 422 and "guidance_interval" in empty_interval.json()["message"]
    model = info.json()["models"][0]
    assert model["architecture"] == "dit" and model["classes"][:2] == ["0", "1"] and "samples.js" in page.text


@pytest.mark.slow
def test_the_samples_page_in_a_browser(dit_run, tmp_path):
    from _serving import browser_page

    from aiayn.serve import ServeSettings, create_app

    with browser_page(create_app(dit_run, ServeSettings(), device="cpu"), tmp_path) as (page, server, expect):
        page.goto(server.url + "/")
        expect(page.locator("#model-info")).to_contain_text("noise levels")
        assert page.locator("#class option").count() == 10
        page.select_option("#class", "7")
        page.fill("#n", "3")
        page.fill("#steps", "5")
        page.click("#go")
        page.wait_for_selector("#samples img:nth-child(3)", timeout=60_000)
        assert page.locator("#samples img").count() == 3
        assert page.text_content("#step-label") == "step 5 of 5"
        page.locator("#step").fill("0")
        assert page.text_content("#step-label") == "step 1 of 5"
        page.fill("#n", "65")
        page.click("#go")
        page.wait_for_selector("#error:not([hidden])")


def test_min_snr_weights_the_loss_and_validation_reports_the_plain_mse():
    from aiayn.tasks.image_generation import DenoisingLoss

    plain, weighted = DenoisingLoss(tiny_dit()), DenoisingLoss(tiny_dit(min_snr_gamma=5.0))
    ab = tiny_dit().noise_schedule().alphas_cumprod
    snr = ab / (1 - ab)
    torch.testing.assert_close(weighted.weights.double(), snr.clamp(max=5.0) / snr, rtol=1e-5, atol=0)
    assert torch.equal(plain.weights, torch.ones_like(plain.weights))
    images, labels, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 5]), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    loss, mse = weighted(images, labels, t, noise)
    _, plain_mse = plain(images, labels, t, noise)
    per_image = noise.pow(2).flatten(1).mean(1)  # the zero-initialised model predicts ε̂ = 0
    torch.testing.assert_close(mse, per_image.sum())
    torch.testing.assert_close(plain_mse, mse)
    torch.testing.assert_close(loss, (weighted.weights[t] * per_image).sum())


def test_dit_tiny_runs_the_erf_gelu_and_a_config_without_an_activation_keeps_dits_tanh():
    from aiayn.models.dit import DiTConfig
    from aiayn.nn import ACTIVATIONS

    assert tiny_dit().config.activation == "gelu"  # the dit-tiny preset's
    values = tiny_dit().config.to_dict()
    del values["activation"]  # a checkpoint written before the field existed: DiT's own GELU (tanh)
    old = models.build("dit", DiTConfig.from_dict(values))
    assert old.config.activation == "gelu_tanh" and old.layers[0].ffn.activation is ACTIVATIONS["gelu_tanh"][0]
    with pytest.raises(ValueError, match="activation"):
        DiTConfig.from_dict({**values, "activation": "gelu-approximate"})


def test_only_a_compile_for_one_shape_spells_short_attention_out():
    """runtime.compiling_for_one_shape: True while torch.compile traces for static shapes (a DiT compiled
    whole), False for dynamic ones (layers compiled for token buckets) and outside a compile."""
    from aiayn import runtime

    def static(x):
        return x + float(runtime.compiling_for_one_shape())

    def dynamic(x):
        return x + float(runtime.compiling_for_one_shape())

    try:
        assert torch.compile(static, dynamic=False)(torch.zeros(3)).eq(1).all()
        assert torch.compile(dynamic, dynamic=True)(torch.zeros(3)).eq(0).all()
    finally:
        torch._dynamo.reset()
    assert not runtime.compiling_for_one_shape()
    q, k = torch.randn(2, 4, 49, 32), torch.randn(2, 4, 49, 32)
    assert runtime.attention_spelled_out(q, k)  # eager, short: spelled out (as a compile for one shape does)


@pytest.mark.slow
def test_compiled_dit_training_is_one_static_graph_and_trains_like_eager(digits_data, tmp_path):
    """`compile: true` compiles the whole DiT for its one batch shape (dynamic=False): one graph for
    training and one for validation's batches, and the weights of an eager run."""
    import torch._dynamo
    from safetensors.torch import load_file

    settings = dict(max_updates=6, save_every=6, validate_every=0, ema_decay=0.0, precision="fp32")
    dit_trainer(digits_data, tmp_path / "eager", **settings).train()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        dit_trainer(digits_data, tmp_path / "compiled", compile=True, **settings).train()
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    # training's graph, and validation's (eval mode, no gradients, its own batch; a smaller last batch) at the end
    assert graphs <= 3, f"{graphs} graphs: the model was recompiled"
    a = load_file(tmp_path / "eager" / "checkpoints" / "step-00000006.safetensors")
    b = load_file(tmp_path / "compiled" / "checkpoints" / "step-00000006.safetensors")
    assert a.keys() == b.keys()  # the state-dict keys stay as they are
    worst = 0.0
    for k in a:  # leaving out the key biases: their true gradient is 0, so Adam blows their rounding noise up (test_train)
        x, y = a[k], b[k]
        if k.endswith("qkv_proj.bias"):
            x, y = torch.cat([x[:32], x[64:]]), torch.cat([y[:32], y[64:]])  # [q | k | v] of d_model 32
        if x.norm() > 0:
            worst = max(worst, ((x - y).norm() / x.norm()).item())
    print(f"\nworst relative difference, compiled against eager: {worst:.2e}")
    assert worst <= 1e-4, worst


def test_log_normal_noise_levels_take_each_draw_to_the_nearest_step_and_follow_their_distribution():
    from aiayn.diffusion import noise_to_signal, training_noise_levels

    schedule = NoiseSchedule.make("linear", 1000)
    log_sigma = noise_to_signal(schedule).log()
    assert bool((log_sigma[1:] > log_sigma[:-1]).all())
    # uniform: DDPM's steps, the same draws as torch.randint from the same generator
    uniform = training_noise_levels(schedule, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, 1000, (1000,), generator=torch.Generator().manual_seed(3)))
    for mean, std in [(0.0, 1.0), (-1.2, 0.6), (9.0, 0.5), (-9.0, 0.5)]:
        t = training_noise_levels(schedule, 20_000, torch.Generator().manual_seed(0), (mean, std))
        drawn = mean + std * torch.randn(20_000, generator=torch.Generator().manual_seed(0))
        nearest = (log_sigma.float()[None] - drawn[:, None]).abs().argmin(1)  # by brute force
        gap = (log_sigma.float()[t] - drawn).abs() - (log_sigma.float()[nearest] - drawn).abs()
        assert gap.abs().max() < 1e-6  # the nearest step (a tie may go either way)
        if abs(mean) < 5:  # inside the schedule's range: the drawn steps' ln σ follow N(mean, std)
            assert abs(log_sigma[t].mean().item() - mean) < 0.03 and abs(log_sigma[t].std().item() - std) < 0.03
        else:  # beyond its ends: the last or the first step
            assert int(t.min()) == int(t.max()) == (999 if mean > 0 else 0)


def test_the_config_chooses_the_training_noise_levels_and_validation_keeps_uniform_ones(digits_data):
    from aiayn.tasks import for_dataset
    from aiayn.tasks.images import ImageSampler

    task = for_dataset(digits_data, "dit-tiny")
    uniform = tiny_dit(in_channels=1, n_classes=10)
    low = tiny_dit(in_channels=1, n_classes=10, noise_levels="log_normal", log_sigma_mean=-2.0, log_sigma_std=0.2)
    assert uniform.training_log_normal is None and low.training_log_normal == (-2.0, 0.2)

    def steps(model):
        sampler = ImageSampler(len(task.train_data), 200, 1)
        sampler.set_epoch(0)
        return torch.cat([b.t for b in task.batches(sampler, model)])

    # σ_t = e^−2 ≈ 0.135 is t ≈ 38 of the linear schedule; ln σ within 4 std of −2 is t ≈ 12 … 100
    assert int(steps(low).max()) < 100 and float(steps(uniform).float().mean()) > 400
    # validation draws uniform steps for either config: the same weights give the same valid loss
    from aiayn.tasks.image_generation import denoising_loss

    for model in (uniform, low):
        torch.manual_seed(5)
        torch.nn.init.normal_(model.head.weight, std=0.5)  # (a zero head predicts ε̂ = 0 at every t)
    losses = [denoising_loss(m, task.valid_data, torch.device("cpu"), limit=200) for m in (uniform, low)]
    assert losses[0] == losses[1]
    with pytest.raises(ValueError, match="noise_levels"):
        models.DiTConfig.check({"noise_levels": "logit"}, "model.")
    with pytest.raises(ValueError, match="log_sigma_std"):
        models.DiTConfig.check({"log_sigma_std": 0.0}, "model.")


def test_a_v_predicting_model_samples_what_its_epsilon_twin_samples_and_trains_on_v():
    from aiayn.diffusion import epsilon_predictor, velocity
    from aiayn.generate.images import ImageGenerator
    from aiayn.tasks.image_generation import DenoisingLoss, to_pixels

    schedule = NoiseSchedule.make("linear", steps=300)
    eps = GaussianData(schedule)
    ab_all = schedule.alphas_cumprod.float()

    def v_model(x, t, y):  # E[v | x_t] = (E[ε | x_t] − √(1 − ᾱ) x_t) / √ᾱ, from v = √ᾱ ε − √(1 − ᾱ) x_0
        ab = ab_all[t].view(-1, 1)
        return (eps(x, t) - (1 - ab).sqrt() * x) / ab.sqrt()

    y = torch.zeros(4000, dtype=torch.long)
    as_eps = epsilon_predictor(v_model, schedule, "v")
    x, t = torch.randn(4000, 2), torch.randint(0, 300, (4000,))
    torch.testing.assert_close(as_eps(x, t, y), eps(x, t), atol=1e-4, rtol=1e-4)
    a = ddim_sample(lambda x, t: as_eps(x, t, y), schedule, (4000, 2), 50, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(eps, schedule, (4000, 2), 50, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    assert epsilon_predictor(v_model, schedule, "epsilon") is v_model
    with pytest.raises(ValueError, match="unknown prediction"):
        epsilon_predictor(v_model, schedule, "x0")

    # the loss's target is v; Min-SNR-γ weighs it min(SNR, γ)/(SNR + 1)
    model = tiny_dit(prediction="v", min_snr_gamma=5.0)
    loss_model = DenoisingLoss(model)
    ab = model.noise_schedule().alphas_cumprod
    snr = ab / (1 - ab)
    torch.testing.assert_close(loss_model.weights.double(), snr.clamp(max=5.0) / (snr + 1), rtol=1e-5, atol=0)
    images, labels, noise, t = (
        torch.rand(4, 3, 8, 8) * 2 - 1,
        torch.tensor([0, 1, 2, 5]),
        torch.randn(4, 3, 8, 8),
        torch.tensor([0, 10, 500, 999]),
    )
    _, mse = loss_model(images, labels, t, noise)
    v = velocity(images, noise, ab.float()[t].view(-1, 1, 1, 1))
    torch.testing.assert_close(mse, v.pow(2).flatten(1).mean(1).sum())  # the zero-initialised model predicts 0

    # the image generator samples a v-predicting DiT through its ε
    model = class_dependent_dit()
    model.config.prediction = "v"
    spec = {"height": 8, "width": 8, "channels": 3}
    gen = ImageGenerator(model, [str(i) for i in range(5)], spec, torch.device("cpu"))
    images, _ = gen.sample([1, 2], steps=5, guidance=2.0, seed=3)

    def ddim(denoiser):  # the generator's sampling, spelled out
        guided_eps = guided(denoiser, torch.tensor([1, 2]), model.null_class, 2.0)
        return to_pixels(
            ddim_sample(guided_eps, model.noise_schedule(), (2, 3, 8, 8), 5, generator=torch.Generator().manual_seed(3), clip=1.0)
        )

    assert np.array_equal(images, ddim(epsilon_predictor(model, model.noise_schedule(), "v")))
    assert not np.array_equal(images, ddim(model))  # (the same network taken as predicting ε)
