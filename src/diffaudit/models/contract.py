"""The model contract: what the core (attacks, geometry, audit, dynamics) needs from a model.

`LatentDiffusion` and its family subclasses satisfy it; so can any hand-written object (the
core's tests use analytic models). The attacks need only `eps` and `alphas_cumprod`
(docs/contracts.md); the audit and the geometry use the rest. A flow-matching model is
presented through its VP-equivalent (docs/models.md §Flow matching), so nothing here knows
about σ or velocities.
"""
from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import torch

Kind = Literal["latent", "pixel", "vq"]
Conditioning = Literal["caption", "label", "embedding", "none"]


@runtime_checkable
class DiffusionModel(Protocol):
    """A (latent) diffusion model as the core sees it.

    - `eps(z_t, t, cond=None)`: ε̂(z_t, t, c) in float32, t a LongTensor [N] (or an int) in
      [0, T); z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε in the model's VP coordinates.
    - `alphas_cumprod`: 1-D float tensor of length T (ᾱ_t, indexed directly by t).
    - `encode(x)` images in [-1, 1] → scaled latents z; `decode(z)` back (float32, differentiable).
    - `geometry_decode` / `geometry_point(z)`: the decoder the geometry differentiates and
      where (a VQ decoder after quantization, at the quantized latent; otherwise `decode` at z).
    - `encode_cond(values)`: captions or class labels → the condition `eps` takes (one
      batch-first tensor); `uncond(n)`: the null condition (None for unconditional models).
    """

    kind: Kind
    prediction_type: str
    conditioning: Conditioning
    scaling_factor: float
    source: Any
    alphas_cumprod: torch.Tensor

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def eps(self, z_t: torch.Tensor, t, cond=None) -> torch.Tensor: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    @property
    def geometry_decode(self): ...

    def geometry_point(self, z: torch.Tensor) -> torch.Tensor: ...

    def encode_cond(self, values: Sequence | torch.Tensor): ...

    def uncond(self, n: int): ...
