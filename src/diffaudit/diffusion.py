"""The variance-preserving diffusion arithmetic shared by the attacks and the samplers.

A VP schedule is ``alphas_cumprod`` (ᾱ_t, 1-D, length T), indexed directly by t (ᾱ_0 = 1 − β_1,
as in the SecMI and PIA reference code). Forward noising is z_t = √ᾱ_t z + √(1−ᾱ_t) ε (Ho et al.
2020, arXiv 2006.11239, Eq. 4); the deterministic DDIM step (η = 0) from s to u with ε = ε̂(x_s, s)
is x̂_0 = (x_s − √(1−ᾱ_s) ε)/√ᾱ_s, x_u = √ᾱ_u x̂_0 + √(1−ᾱ_u) ε (Song et al. 2021,
arXiv 2010.02502, Eq. 12). Schedule coefficients are computed in float64, then cast to the
tensor's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError

__all__ = ["VPSchedule", "vp_schedule", "check_timesteps", "ddim_step"]


def ddim_step(x: torch.Tensor, eps: torch.Tensor, sqrt_a_from, sqrt_1ma_from, sqrt_a_to, sqrt_1ma_to) -> torch.Tensor:
    """One deterministic DDIM step x_s → x_u with ε = ε̂(x_s, s) (arXiv 2010.02502, Eq. 12).

    The coefficients √ᾱ_s, √(1−ᾱ_s), √ᾱ_u, √(1−ᾱ_u) are Python floats or tensors that
    broadcast against x (e.g. [N, 1, 1, 1] for per-sample timesteps).
    """
    x0 = (x - sqrt_1ma_from * eps) / sqrt_a_from
    return sqrt_a_to * x0 + sqrt_1ma_to * eps


@dataclass(frozen=True)
class VPSchedule:
    """√ᾱ_t and √(1−ᾱ_t) tables (float64) with per-sample lookups, forward noising and DDIM steps."""

    sqrt_a: torch.Tensor
    sqrt_1ma: torch.Tensor

    @property
    def T(self) -> int:
        return self.sqrt_a.shape[0]

    def coef(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] in like's dtype, shaped [N, 1, …] to broadcast against like."""
        return table[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def noisy(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion √ᾱ_t z + √(1−ᾱ_t) noise."""
        return self.coef(self.sqrt_a, t, z) * z + self.coef(self.sqrt_1ma, t, z) * noise

    def ddim(self, x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """:func:`ddim_step` between the per-sample timesteps t_from → t_to."""
        return ddim_step(x, eps, self.coef(self.sqrt_a, t_from, x), self.coef(self.sqrt_1ma, t_from, x),
                         self.coef(self.sqrt_a, t_to, x), self.coef(self.sqrt_1ma, t_to, x))


def vp_schedule(model, device) -> VPSchedule:
    """The checked schedule of a model with ``eps(z_t, t, cond=None)`` and ``alphas_cumprod``."""
    if not callable(getattr(model, "eps", None)) or getattr(model, "alphas_cumprod", None) is None:
        raise InputError("model must have a method eps(z_t, t, cond=None) and an alphas_cumprod tensor")
    ac = torch.as_tensor(model.alphas_cumprod).detach().to(device=device, dtype=torch.float64)
    if ac.dim() != 1 or ac.numel() == 0:
        raise InputError(f"model.alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(ac.shape)}")
    if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac > 1).any():
        raise InputError("model.alphas_cumprod must hold finite values in (0, 1]")
    return VPSchedule(ac.sqrt(), (1 - ac).sqrt())


def check_timesteps(t, n: int, T: int, device, margin: int = 0, what: str = "t") -> torch.Tensor:
    """An int or an integer tensor [] / [n] → LongTensor [n] on device; requires 0 ≤ t and t + margin < T.

    Raises :class:`~diffaudit.errors.InputError` naming ``what`` otherwise.
    """
    if isinstance(t, torch.Tensor):
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
            raise InputError(f"{what} must hold integers, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.reshape(1).expand(n)
        elif t.dim() != 1 or t.shape[0] != n:
            raise InputError(f"{what} must be an int or a LongTensor of shape [{n}], got shape {tuple(t.shape)}")
        tt = t.to(device=device, dtype=torch.long)
    else:
        if isinstance(t, bool) or not hasattr(t, "__index__"):
            raise InputError(f"{what} must be an int or a LongTensor, got {type(t).__name__}")
        tt = torch.full((n,), int(t), dtype=torch.long, device=device)
    lo, hi = int(tt.min()), int(tt.max())
    if lo < 0 or hi + margin >= T:
        extra = f" (t + interval must stay below T = {T})" if margin else ""
        raise InputError(f"{what} must lie in [0, {T - margin}) for a schedule of T = {T}{extra}, got {lo}..{hi}")
    return tt
