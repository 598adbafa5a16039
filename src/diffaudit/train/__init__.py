"""Training the paper's LDMs (arXiv 2511.20592 App. H): β-VAE + latent DDPM, presets as data."""
from .models import build_scheduler, build_unet, build_vae, ddpm_loss, encode_latents, kl_per_element, vae_loss
from .presets import PRESETS, Preset, get_preset
from .data import load_split_images
from .run import train_ldm

__all__ = [
    "PRESETS",
    "Preset",
    "get_preset",
    "train_ldm",
    "load_split_images",
    "vae_loss",
    "kl_per_element",
    "ddpm_loss",
    "encode_latents",
    "build_vae",
    "build_unet",
    "build_scheduler",
]
