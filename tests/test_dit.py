"""DiT (models/dit.py) and diffusion (aiayn/diffusion.py): the forward process's closed form
against iterating it, adaLN-Zero blocks starting as the identity, patches back to images, DDIM
with η = 1 and every step equal to DDPM, both sampling a known distribution, guidance scale 1
equal to the conditional model, and seeded sampling reproducible."""

import math

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


def test_guidance_scale_1_is_the_conditional_model_and_sampling_with_a_seed_repeats():
    model = tiny_dit()
    with torch.no_grad():  # outputs that depend on the class
        for p in [*model.modulation.parameters(), *model.final_modulation.parameters(), *model.head.parameters()]:
            p.normal_(0, 0.05)
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
