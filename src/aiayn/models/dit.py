"""DiT: a diffusion model's denoiser made of Transformer blocks (Peebles & Xie 2023, "Scalable
Diffusion Models with Transformers"), assembled from the block set.

    noisy image ─► patches (strided conv) + 2-D sinusoids ─► N × Block(pre_norm, adaLN-Zero) ─►
    final adaLN ─► Linear ─► unpatchify ─► predicted noise ε
    noise level t ─► sinusoids ─► MLP ─┐
    class y (or the null class) ─► embedding ─┴─► c = t_emb + y_emb ─► every block's (shift, scale, gate)

§3.2 of the paper: "adaptive layer norm (adaLN) ... we regress the dimension-wise scale and shift
parameters γ and β from the sum of the embedding vectors of t and c"; adaLN-Zero also regresses
a gate α applied to each sub-layer's output and "initializes the MLP to output the zero-vector for
all α; this initializes the full DiT block as the identity function". The blocks are the paper's
encoder layers (§3.1 of Vaswani et al.) in pre-norm order with norms without affine parameters;
the conditioning goes through `Residual`'s modulation hook. The class embedding has one extra row,
the null class, for classifier-free guidance (the task drops labels to it while training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aiayn import schema
from aiayn.models.config import ModelConfig, check_heads
from aiayn.nn import ACTIVATIONS, Block, Linear, PatchEmbedding, Stack, sinusoid_table_2d


@dataclass
class DiTConfig(ModelConfig):
    ARCHITECTURE = "dit"

    image_size: int = 32  # square images (or latents) of image_size × image_size
    patch_size: int = 4
    in_channels: int = 1
    n_classes: int = 10  # the class embedding has n_classes + 1 rows: the last is the null class
    d_model: int = 384
    n_heads: int = 6
    d_ff: int = 1536
    n_layers: int = 12
    activation: str = "gelu_tanh"  # DiT's (GELU's tanh approximation); gelu (erf) runs faster on CPUs (the dit-tiny preset's)
    time_frequencies: int = 256  # the sinusoidal embedding of t before its MLP
    layer_norm_eps: float = 1e-6
    class_dropout: float = 0.1  # training: the share of labels replaced by the null class (for guidance)
    prediction: str = "epsilon"  # what the network predicts: the noise ε, or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022)
    min_snr_gamma: float = 0.0  # training: Min-SNR-γ loss weights min(SNR_t, γ)/SNR_t (Hang et al. 2023; 0: DDPM's uniform)
    # training: the noise levels drawn, "uniform" over the steps (DDPM) or "log_normal": ln σ_t ~ N(log_sigma_mean,
    # log_sigma_std), σ_t the noise-to-signal ratio (diffusion.training_noise_levels; Karras et al. 2022, Esser et al. 2024)
    noise_levels: str = "uniform"
    log_sigma_mean: float = 0.0
    log_sigma_std: float = 1.0
    # the diffusion the model denoises (diffusion.NoiseSchedule): its β schedule and number of steps
    noise_schedule: str = "linear"
    diffusion_steps: int = 1000

    @classmethod
    def check(cls, values: dict, where: str = "") -> None:
        S = schema
        rules = {k: S.AT_LEAST_1 for k in ("image_size", "patch_size", "in_channels", "n_classes", "d_model", "n_heads", "d_ff")}
        rules.update(
            n_layers=S.AT_LEAST_1,
            time_frequencies=S.AT_LEAST_1,
            layer_norm_eps=S.POSITIVE,
            class_dropout=S.PROBABILITY,
            min_snr_gamma=S.AT_LEAST_0,
            noise_levels=S.Rule(choices=("uniform", "log_normal")),
            prediction=S.Rule(choices=("epsilon", "v")),
            log_sigma_std=S.POSITIVE,
        )
        rules.update(activation=S.Rule(choices=tuple(ACTIVATIONS)))
        rules.update(noise_schedule=S.Rule(choices=("linear", "cosine")), diffusion_steps=S.AT_LEAST_1)
        schema.check(cls, values, where, rules, what="model config")
        check_heads(values, where)
        if "image_size" in values and "patch_size" in values and values["image_size"] % values["patch_size"]:
            raise ValueError(f"{where}image_size={values['image_size']} is not a multiple of {where}patch_size={values['patch_size']}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def timestep_sinusoids(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """§3.5's sinusoids at a (real-valued) noise level per row: t [B] -> [B, dim] (cosines, then sines)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1) if dim % 2 else out


class DiT(nn.Module):
    """A class-conditional denoiser: forward(x_t, t, y) -> the predicted noise (or v, as the config
    says: diffusion.epsilon_predictor turns v into the noise), shaped as x_t."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size={cfg.image_size} is not a multiple of patch_size={cfg.patch_size}")
        d = cfg.d_model
        self.patch_embed = PatchEmbedding(cfg.in_channels, cfg.patch_size, d)
        self.register_buffer("position_table", sinusoid_table_2d(cfg.grid, cfg.grid, d)[None], persistent=False)
        self.time_mlp = nn.Sequential(Linear(cfg.time_frequencies, d), nn.SiLU(), Linear(d, d))
        self.class_embed = nn.Embedding(cfg.n_classes + 1, d)
        self.layers = Stack(
            Block(d, cfg.n_heads, cfg.d_ff, pre_norm=True, activation=cfg.activation, norm_eps=cfg.layer_norm_eps, norm_affine=False)
            for _ in range(cfg.n_layers)
        )
        self.modulation = nn.ModuleList(Linear(d, 6 * d) for _ in range(cfg.n_layers))  # c -> (shift, scale, gate) × 2 sub-layers
        self.final_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps, elementwise_affine=False)
        self.final_modulation = Linear(d, 2 * d)  # c -> (shift, scale)
        self.head = Linear(d, cfg.patch_size**2 * cfg.in_channels)
        self.reset_parameters()

    @property
    def null_class(self) -> int:
        return self.config.n_classes

    def reset_parameters(self) -> None:
        """DiT's: Xavier-uniform linear maps (the patch projection over its flattened patch), N(0, 0.02)
        for the class embedding and the time MLP, and zeros for every modulation and the head (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.size(0), -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        for linear in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
        for linear in [*self.modulation, self.final_modulation, self.head]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def condition(self, t: Tensor, y: Tensor) -> Tensor:
        """c = MLP(sinusoids(t)) + embedding(y): [B, d_model]."""
        return self.time_mlp(timestep_sinusoids(t, self.config.time_frequencies)) + self.class_embed(y)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[B, grid², p²·C] -> [B, C, H, W] (the inverse of the patch order: row-major, each patch (p, p, C))."""
        c, g, p = self.config.in_channels, self.config.grid, self.config.patch_size
        x = x.view(x.size(0), g, g, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.size(0), c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x: [B, C, H, W] noisy images; t: [B] noise levels (0 … T−1); y: [B] classes (null_class: none)."""
        c = torch.nn.functional.silu(self.condition(t, y))  # DiT's adaLN MLP: SiLU, then Linear
        h = self.patch_embed(x) + self.position_table
        modulations = [[m[:, None] for m in mod(c).chunk(6, dim=-1)] for mod in self.modulation]
        h, _ = self.layers(h, modulations=[(m[0:3], m[3:6]) for m in modulations])
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        return self.unpatchify(self.head(self.final_norm(h) * (1 + scale) + shift))

    def noise_schedule(self):
        from aiayn.diffusion import NoiseSchedule

        return NoiseSchedule.make(self.config.noise_schedule, self.config.diffusion_steps)

    @property
    def training_log_normal(self) -> tuple[float, float] | None:
        """(mean, std) of ln σ_t for the training draws, or None for uniform steps."""
        cfg = self.config
        return (cfg.log_sigma_mean, cfg.log_sigma_std) if cfg.noise_levels == "log_normal" else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
