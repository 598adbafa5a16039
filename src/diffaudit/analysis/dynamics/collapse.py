"""Trajectory collapse across seeds (Kim et al. 2025: memorized prompts "collapse denoising
trajectories").

Diversity at a step = mean pairwise L2 distance between the N seeds' latents. The schedule
alone (a deterministic run, every seed heading to its own image) keeps the noise part of z_t at
b_t·z_T (b = √(1−ᾱ_t) for DDIM, σ for a flow run; `paths.py`), so the distance it explains is
b_t · mean_{i<j} ‖z_T^i − z_T^j‖; the normalised diversity divides by it (≈ 1 at the start; well
below 1 once seeds have collapsed onto one image; undefined — NaN — where b_t < 1e-4, e.g. a
final ᾱ of 1 or σ of 0).
"""
from __future__ import annotations

import torch

from ...errors import InputError


def mean_pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i < j of ‖x_i − x_j‖ for one batch x [N, ...] (float64 scalar)."""
    return _mpd(x)


def _mpd(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    if n < 2:
        raise InputError(f"trajectory collapse needs at least 2 seeds, got {n}")
    f = x.reshape(n, -1).double()
    iu = torch.triu_indices(n, n, offset=1)
    # explicit differences, not cdist: cdist's matmul shortcut loses digits for near-equal rows
    return (f[iu[0]] - f[iu[1]]).norm(dim=-1).mean()


def diversity_curves(traj) -> dict:
    """Raw and schedule-normalised diversity per step output ([S] float64), plus the start."""
    lat = traj.latents  # [S+1, N, *shape]
    if lat.dim() < 3:
        raise InputError("latents must be [steps+1, seeds, ...]")
    raw = torch.stack([_mpd(z) for z in lat])  # [S+1]
    expected = traj.path.coefficients(traj.levels_out.double())[1] * raw[0]
    norm = torch.where(expected > 1e-4 * raw[0].clamp_min(1e-300), raw[1:] / expected, torch.full_like(expected, float("nan")))
    return {"diversity_start": float(raw[0]), "diversity": raw[1:], "diversity_expected": expected, "diversity_norm": norm}
