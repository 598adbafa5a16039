"""PIA-N: PIA with the proximal noise ε₀ = ε̂(z, 0) rescaled per sample to the mean absolute value
of a standard normal (Kong et al., ICLR 2024, arXiv 2305.18355, "PIAN").

ε_N = ε₀ · √(2/π) / mean|ε₀|, the mean taken over all of a sample's dims (E|ξ| = √(2/π) for
ξ ~ N(0, 1)), and the vector is ε_N − ε̂(√ᾱ_t z + √(1−ᾱ_t) ε_N, t), statistic Σ|v|⁴. Checked
against the SimA authors' attacker class ``PIAN`` (github mx-ethan-rao/SimA, DDPM/components.py):
the same per-sample normalisation over every non-batch dim, ᾱ indexed directly by t, ℓ4 power sum.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_batched
from ..errors import InputError, NonFiniteError
from .base import register_attack
from .common import model_eps, prepare, residual_x0
from .pia import proximal_job

__all__ = ["pian", "normalized_eps0"]

_MEAN_ABS_NORMAL = math.sqrt(2 / math.pi)  # E|ξ|, ξ ~ N(0, 1)


def normalized_eps0(eps0: torch.Tensor) -> torch.Tensor:
    """ε₀ · √(2/π) / mean|ε₀| per sample (mean over every non-batch dim)."""
    check_batched(eps0, "eps0")
    scale = eps0.abs().mean(dim=tuple(range(1, eps0.dim())), keepdim=True)
    bad = (~(scale > 0) | ~torch.isfinite(scale)).flatten().nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        raise NonFiniteError(f"PIA-N: ε̂(z, 0) is all zero or not finite for {len(bad)} sample(s) "
                             f"(batch rows {shown}); it cannot be normalised")
    return eps0 / scale * _MEAN_ABS_NORMAL


@torch.no_grad()
def pian(model, z: torch.Tensor, t, cond=None, eps0: torch.Tensor | None = None) -> torch.Tensor:
    """PIA-N vector ε_N − ε̂(√ᾱ_t z + √(1−ᾱ_t) ε_N, t), shaped like z (statistic: Σ|v|⁴).

    ``eps0``: a precomputed raw ε̂(z, 0) (normalised here), to share it across timesteps.
    """
    s, tt = prepare(model, z, t, cond)
    if eps0 is None:
        eps0 = model_eps(model, z, torch.zeros_like(tt), cond)
    elif not isinstance(eps0, torch.Tensor) or eps0.shape != z.shape:
        raise InputError(f"eps0 must be a tensor shaped like z {tuple(z.shape)}")
    e = normalized_eps0(eps0.to(z.dtype))
    return e - model_eps(model, s.noisy(z, tt, e), tt, cond)


# The shared raw ε̂(z, 0) (one call for PIA, PIA-N, SimA and SecMI), normalised, then one row per sample and t.
pian_job = proximal_job("pian", normalized_eps0)


register_attack(
    "pian", pian, 4, display_name="PIA-N", job=pian_job, first_t=1, needs=("cond",), predicted_x0=residual_x0,
    reference="Kong et al. 2024, arXiv 2305.18355 (PIAN); checked against mx-ethan-rao/SimA DDPM/components.py PIAN",
    description="ε_N − ε̂(z_t(ε_N), t) with ε_N = ε̂(z, 0)·√(2/π)/mean|ε̂(z, 0)|", calls_per_t=1,
)
