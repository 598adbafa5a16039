"""Model construction and the two training losses (arXiv 2511.20592 App. H, App. E).

- β-VAE: diffusers `AutoencoderKL`, loss ℓ1 + β_KL · KL with KL averaged over latent elements.
- VQ variant: diffusers `VQModel`, loss ℓ1 + the quantizer's commitment/codebook loss.
- Latent DDPM: diffusers `UNet2DModel`, ε-prediction, MSE, `DDPMScheduler` (linear β, T = 1000).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .presets import Preset


def build_vae(preset: Preset, in_channels: int):
    from diffusers import AutoencoderKL, VQModel

    cfg = dict(preset.vae_config, in_channels=in_channels, out_channels=in_channels)
    if preset.vae_type == "vq":
        return VQModel(**cfg, scaling_factor=1.0)
    vae = AutoencoderKL(**cfg, scaling_factor=1.0)
    if preset.vae_init_logvar is not None:
        # The log σ² half of the posterior moments comes from quant_conv's last latent_channels outputs.
        with torch.no_grad():
            vae.quant_conv.bias[cfg["latent_channels"]:] = float(preset.vae_init_logvar)
    return vae


def build_unet(preset: Preset, num_class_embeds: int | None = None):
    from diffusers import UNet2DModel

    cfg = dict(preset.unet_config)
    if num_class_embeds is not None:
        cfg["num_class_embeds"] = num_class_embeds
    return UNet2DModel(**cfg)


def build_scheduler(preset: Preset):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**preset.scheduler_config)


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per latent element, ½(μ² + σ² − 1 − log σ²) (same shape as μ)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def vae_loss(vae, x: torch.Tensor, beta_kl: float, sample: bool = True) -> dict[str, torch.Tensor]:
    """β-VAE loss on a batch: {'loss', 'recon', 'kl'} (App. H).

    recon = mean |x − D(z)| over all pixels; kl = mean over all latent elements of
    ½(μ² + σ² − 1 − log σ²); loss = recon + beta_kl · kl. z is drawn from the posterior
    (global torch RNG) when `sample`, else the posterior mean. For a `VQModel` the `kl` entry
    holds the quantizer's commitment + codebook loss and beta_kl is ignored (weight 1).
    """
    if hasattr(vae, "quantize"):  # VQModel
        h = vae.encode(x).latents
        out = vae.decode(h)
        recon = (x - out.sample).abs().mean()
        reg = out.commit_loss.mean() if out.commit_loss is not None else x.new_zeros(())
        return {"loss": recon + reg, "recon": recon, "kl": reg}
    post = vae.encode(x).latent_dist
    z = post.sample() if sample else post.mean
    x_hat = vae.decode(z).sample
    recon = (x - x_hat).abs().mean()
    kl = kl_per_element(post.mean, post.logvar).mean()
    return {"loss": recon + beta_kl * kl, "recon": recon, "kl": kl}


@torch.no_grad()
def encode_latents(vae, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unscaled deterministic latents: the posterior mean (KL) or the pre-quantization code (VQ)."""
    out = []
    for i in range(0, x.shape[0], batch):
        enc = vae.encode(x[i : i + batch])
        out.append(enc.latents if hasattr(enc, "latents") else enc.latent_dist.mean)
    return torch.cat(out)


def ddpm_loss(unet, scheduler, z0: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """ε-prediction MSE at a uniform t ~ U{0..T-1} with ε ~ N(0, I) (global torch RNG)."""
    noise = torch.randn_like(z0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), device=z0.device)
    z_t = scheduler.add_noise(z0, noise, t)
    pred = unet(z_t, t, class_labels=class_labels).sample
    return F.mse_loss(pred, noise)
