"""The first stage of a latent diffusion model: a VAE, a VQ autoencoder, or the identity.

The autoencoder classes are a table (`KINDS`); scaling follows diffusers' pipelines:
z = s·(E(x) − shift), x = D(z/s + shift) (SD3 and FLUX have a shift factor, SD 1.x/2.x/XL not).
Everything runs in float32: the geometry differentiates the decoder (docs/contracts.md).
"""
from __future__ import annotations

import torch

from .._checks import check_batched
from ..errors import ModelError
from .placement import place

# diffusers autoencoder class → kind of latent space ("pixel" when there is no first stage)
KINDS = {"AutoencoderKL": "latent", "VQModel": "vq"}


def _make_jvp_safe(vae) -> None:
    """Let geometry's forward-mode JVP through the VAE's attention, if geometry offers it."""
    try:
        from ..geometry import prepare_decoder_for_jvp
    except ImportError:
        return
    prepare_decoder_for_jvp(vae)


def kind_of(vae) -> str:
    if vae is None:
        return "pixel"
    for cls in type(vae).__mro__:
        if cls.__name__ in KINDS:
            return KINDS[cls.__name__]
    raise ModelError(f"first stage {type(vae).__name__} is not supported (supported: {', '.join(KINDS)})")


class FirstStage:
    """encode / decode / quantize of one autoencoder (or the identity in pixel space)."""

    def __init__(self, vae, device):
        self.device = device
        self.kind = kind_of(vae)
        self.vae = None if vae is None else place(vae, device, torch.float32)
        if self.vae is not None:
            _make_jvp_safe(self.vae)
        cfg = self.vae.config if self.vae is not None else {}
        self.scaling_factor = float(cfg.get("scaling_factor", 1.0) or 1.0) if self.vae is not None else 1.0
        self.shift_factor = float(cfg.get("shift_factor") or 0.0) if self.vae is not None else 0.0

    @property
    def downsampling(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    def image_shape(self, latent_shape) -> tuple[int, int, int]:
        c, h, w = latent_shape
        if self.vae is None:
            return (c, h, w)
        f = self.downsampling
        return (int(self.vae.config["in_channels"]), h * f, w * f)

    def encode(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.vae is None:
            return x.clone()
        with torch.no_grad():
            out = self.vae.encode(x)
            if self.kind == "vq":
                h = out.latents
            elif sample:
                h = out.latent_dist.sample(generator=generator)
            else:
                h = out.latent_dist.mean
        return (h - self.shift_factor) * self.scaling_factor

    def _unscale(self, z: torch.Tensor) -> torch.Tensor:
        check_batched(z, "z", min_dim=4)
        return z.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return z.to(self.device, torch.float32)
        return self.vae.decode(self._unscale(z)).sample

    def decode_quantized(self, zq: torch.Tensor) -> torch.Tensor:
        if self.kind != "vq":
            return self.decode(zq)
        return self.vae.decode(self._unscale(zq), force_not_quantize=True).sample

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind != "vq":
            return z
        with torch.no_grad():
            zq = self.vae.quantize(self._unscale(z))[0]
        return zq * self.scaling_factor
