"""Training presets as data: one table row per setting (arXiv 2511.20592 App. H).

A preset fixes the architecture (diffusers configs), the losses and the optimisation. Nothing in
the trainer branches on a preset's name; it only reads these fields.

Conventions (stated once, used everywhere):
- β-VAE loss = mean |x − D(z)| over pixels + β_KL · KL, where KL is
  ½(μ² + σ² − 1 − log σ²) **averaged over latent elements** (batch × c × h × w), z ~ q(z|x).
- Step counts: `*_steps` wins; otherwise `*_epochs` × ceil(N / batch) for N training images.
- `scaling_factor`: a number, or None for "1 / std of the member latents" (Rombach et al.'s
  rule), measured once after the VAE stage and written into the VAE config.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    resolution: int  # images must be [N, C, resolution, resolution]
    n_members: int  # split sizes the demo / CLI use by default (the trainer sees members only)
    n_holdout: int
    # --- β-VAE (diffusers AutoencoderKL, or VQModel when vae_type == "vq", App. E) ---
    vae_type: str  # "kl" | "vq"
    vae_config: dict[str, Any]
    beta_kl: float
    vae_batch: int
    vae_lr: float = 2e-4
    vae_weight_decay: float = 1e-4
    vae_steps: int | None = None
    vae_epochs: float | None = None
    vae_init_logvar: float | None = None  # start the encoder's log σ² here (bias of its last 1x1 conv)
    # --- latent DDPM (diffusers UNet2DModel, linear β, T = 1000, ε-prediction) ---
    unet_config: dict[str, Any] = field(default_factory=dict)
    unet_batch: int = 64
    unet_lr: float = 2e-4
    unet_weight_decay: float = 1e-4
    unet_steps: int | None = None
    unet_epochs: float | None = None
    scaling_factor: float | None = 1.0
    hflip: bool = False  # random horizontal flips (CelebA in App. H); digits must not flip
    cond_drop: float = 0.1  # class-conditional runs: share of labels replaced by the null class
    scheduler_config: dict[str, Any] = field(
        default_factory=lambda: {
            "num_train_timesteps": 1000,
            "beta_schedule": "linear",
            "beta_start": 1e-4,
            "beta_end": 2e-2,
            "prediction_type": "epsilon",
            "clip_sample": False,
        }
    )
    checkpoint_every: int = 500  # optimisation steps between resumable checkpoints

    def steps(self, stage: str, n_images: int) -> int:
        """Number of optimisation steps of `stage` ("vae" | "unet") for n_images training images."""
        steps, epochs, batch = (
            (self.vae_steps, self.vae_epochs, self.vae_batch)
            if stage == "vae"
            else (self.unet_steps, self.unet_epochs, self.unet_batch)
        )
        if steps is not None:
            return int(steps)
        return int(math.ceil(epochs * math.ceil(n_images / batch)))

    def with_overrides(self, **kw) -> "Preset":
        """A copy with some fields replaced; unknown field names are a ConfigError."""
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(kw) - names)
        if bad:
            raise ConfigError(f"unknown preset field(s) {bad}; known: {sorted(names)}")
        return dataclasses.replace(self, **{k: v for k, v in kw.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _kl_vae(widths, latent_channels=4, layers=1, groups=32, attention=False, resolution=32):
    """AutoencoderKL config: one DownEncoderBlock2D per width, each but the last halves H, W."""
    n = len(widths)
    return {
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(widths),
        "layers_per_block": layers,
        "latent_channels": latent_channels,
        "norm_num_groups": groups,
        "act_fn": "silu",
        "sample_size": resolution,
        # No attention in the VAE's mid-block by default: forward-mode AD (geometry JVPs)
        # fails through diffusers' attention on CPU without extra care (docs/method.md).
        "mid_block_add_attention": attention,
    }


def _unet(widths, attn_levels, layers=2, dropout=0.0, groups=32, latent_channels=4):
    """UNet2DModel config; attention (AttnDownBlock2D/AttnUpBlock2D) at the levels in attn_levels."""
    down = ["AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(len(widths))]
    up = [("AttnUpBlock2D" if i in attn_levels else "UpBlock2D") for i in reversed(range(len(widths)))]
    return {
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "block_out_channels": list(widths),
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": layers,
        "dropout": dropout,
        "norm_num_groups": groups,
        "attention_head_dim": 8,
    }


_PAPER_VAE = dict(widths=(128, 256, 256), layers=2)  # 32→16→8 (App. H); widths past the first: ours

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="digits",
            description="embedded default: sklearn digits 16x16, tiny β-VAE (4x8x8) + tiny UNet",
            resolution=16,
            n_members=512,
            n_holdout=512,
            vae_type="kl",
            # Two resnet layers per block (as the paper's VAE, App. H): with one, 2 of the 4 latent
            # channels carried almost no decoder influence (active share 0.0002 and 0.03 at 3 nats;
            # β_KL = 0 did not help); with two, all four are active (0.85-1.00), measured on 128
            # members after 1000 steps, seed 0. Chosen by latent usage, not by attack AUC.
            vae_config=_kl_vae((16, 32), layers=2, groups=8, resolution=16),
            beta_kl=1e-5,  # 1e-2/1e-3 collapsed 2-3 of the 4 channels on digits (1-layer VAE prototype)
            vae_batch=64,
            vae_steps=1000,
            # The encoder starts at σ ≈ 0.08 (log σ² = -5) instead of diffusers' σ ≈ 1. With σ ≈ 1 every
            # channel starts at signal/noise ≈ 0.15 (its posterior-mean spread over σ); the decoder learns
            # to ignore the channels that stay noisy, and one stayed dead: at seeds 0-4 the least-used
            # channel had 0.78 / 0.0005 / 0.47 / 0.87 / 0.12 of its dims active (within 3 nats of the
            # sample's top influence). Starting at σ ≈ 0.08 (the σ the used channels train to): 0.99 /
            # 0.97 / 0.91 / 0.98 / 0.97, at a final loss 0.0168 vs 0.0150 (mean of 5 seeds).
            # lr 1e-3 instead left seed 1's channel dead (0.002); decoding the posterior mean for the
            # first 200 steps revived it to 0.36 only. Measured on the VAE alone, chosen by latent
            # usage and training loss, not by attack AUC: benchmarks/vae_latent_usage.py and
            # benchmarks/results/vae_latent_usage_digits_*.json.
            vae_init_logvar=-5.0,
            # 0.81M-param UNet, ≈0.08 s/step on one idle core. Paper lr 2e-4 kept. SimA best-t AUC at
            # 1000/2000/3000 steps (seed 0): 0.60/0.73/0.87: 3000 is the first measured count that
            # clears the demo's 0.75 with margin while training stays ≈ 5 CPU-minutes.
            # (Those AUCs were measured with the 1-layer VAE; with the 2-layer VAE the default demo,
            # seed 0, gave SimA 0.862 and PIA 0.823: benchmarks/results/demo-digits-seed0.json; with the
            # encoder started at log σ² = -5 it gives SimA 0.787 and PIA 0.716 under the paper's protocol,
            # 0.798 and 0.694 calibrated: benchmarks/results/demo-digits-seed0-bundled.json.)
            unet_config=_unet((32, 32, 64), attn_levels={2}, layers=1, groups=8) | {"sample_size": 8},
            unet_batch=64,
            unet_steps=3000,
            scaling_factor=1.0,
            checkpoint_every=500,
        ),
        Preset(
            name="fashion-mnist",
            description="demo on real images: Fashion-MNIST resized to 32x32, β-VAE 4x8x8 + the digits UNet",
            resolution=32,
            n_members=1000,
            n_holdout=1000,
            vae_type="kl",
            vae_config=_kl_vae((16, 32, 32), layers=2, groups=8, resolution=32),  # 32→16→8; 2 layers as digits
            # β_KL = 1e-3 (the issue-9 prototype's "all channels live") measured on this 2-layer VAE,
            # seed 0: channel 1 only 45% active at 3 nats (all dims 79%), 53% of the k = 40 filter's
            # dropped dims inactive. 1e-5 as on digits, chosen by latent usage, not by attack AUC:
            # channel 1 53% active (all dims 82%), 46% of dropped dims inactive.
            beta_kl=1e-5,
            vae_batch=64,
            vae_steps=1000,
            unet_config=_unet((32, 32, 64), attn_levels={2}, layers=1, groups=8) | {"sample_size": 8},
            unet_batch=64,
            # The prototype's count for SimA ≈ 0.85. Measured, seed 0 (benchmarks/results/demo-fashion-mnist-
            # seed0.json): SimA 0.842, PIA 0.834, Loss 0.697, SecMI 0.767 (paper protocol).
            unet_steps=6000,
            scaling_factor=1.0,
        ),
        Preset(
            name="cifar10-paper",
            description="App. H CIFAR-10: 32², 25k/25k, β_KL=1e-2, UNet 128 (1,2,2,2), 2048 epochs",
            resolution=32,
            n_members=25000,
            n_holdout=25000,
            vae_type="kl",
            vae_config=_kl_vae(_PAPER_VAE["widths"], layers=_PAPER_VAE["layers"], resolution=32),
            beta_kl=1e-2,
            vae_batch=128,  # the paper does not state the VAE batch size
            vae_epochs=120,
            unet_config=_unet((128, 256, 256, 256), attn_levels={1}, layers=2, dropout=0.1) | {"sample_size": 8},
            unet_batch=128,
            unet_epochs=2048,
        ),
        Preset(
            name="celeba-paper",
            description="App. H CelebA: 64², 30k/30k, β_KL=1e-3, UNet 224 (1,2,3,4), 512 epochs, flips",
            resolution=64,
            n_members=30000,
            n_holdout=30000,
            vae_type="kl",
            vae_config=_kl_vae(_PAPER_VAE["widths"], layers=_PAPER_VAE["layers"], resolution=64),
            beta_kl=1e-3,
            vae_batch=128,
            vae_epochs=120,
            unet_config=_unet((224, 448, 672, 896), attn_levels={1, 2, 3}, layers=2, dropout=0.1) | {"sample_size": 16},
            unet_batch=256,
            unet_epochs=512,
            hflip=True,
        ),
        Preset(
            name="mnist-paper",
            description="paper's MNIST setting (30k/30k), also Fashion-MNIST: 28² resized to 32², CIFAR-10 architecture",
            resolution=32,  # 28² → 14 → 7 leaves a 7x7 latent the UNet cannot halve cleanly; use 32² (4x8x8)
            n_members=30000,
            n_holdout=30000,
            vae_type="kl",
            vae_config=_kl_vae(_PAPER_VAE["widths"], layers=_PAPER_VAE["layers"], resolution=32),
            beta_kl=1e-2,  # not stated for MNIST; the CIFAR-10 value (same resolution)
            vae_batch=128,
            vae_epochs=120,
            unet_config=_unet((128, 256, 256, 256), attn_levels={1}, layers=2, dropout=0.1) | {"sample_size": 8},
            unet_batch=128,
            unet_epochs=2048,
        ),
        Preset(
            name="digits-vq",
            description="App. E variant: the digits preset with a VQ decoder (diffusers VQModel)",
            resolution=16,
            n_members=512,
            n_holdout=512,
            vae_type="vq",
            vae_config=_kl_vae((16, 32), groups=8, resolution=16) | {"num_vq_embeddings": 256},
            beta_kl=0.0,  # VQ: the commitment loss of diffusers' VectorQuantizer replaces the KL
            vae_batch=64,
            vae_steps=1000,
            unet_config=_unet((32, 32, 64), attn_levels={2}, layers=1, groups=8) | {"sample_size": 8},
            unet_batch=64,
            unet_steps=3000,
            scaling_factor=1.0,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a ConfigError listing the known ones."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
