"""Membership-inference attack vectors on a noise predictor (SPEC §1, paper §3.1).

Each attack returns a *vector* shaped like the latent z; a statistic (an ℓp norm, optionally
after an influence mask) turns it into one number per sample: smaller ⇒ more likely a member.
A model is any object with ``eps(z_t, t, cond=None)`` (t a LongTensor [N]) and
``alphas_cumprod`` (1-D, length T). ᾱ is indexed directly by t (ᾱ_0 = 1 − β_1, as in the
SecMI and PIA reference code), and all schedule coefficients are computed in float64.

For many timesteps at once use :func:`attack_sweep`, which packs (sample, t) pairs into few
model calls and shares ε̂(z, 0) and SecMI's inversion trajectory (issue 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._checks import check_batched
from .errors import InputError, ModelError, NonFiniteError


# -- schedule and model plumbing ------------------------------------------------------------

@dataclass(frozen=True)
class _Schedule:
    """√ᾱ_t and √(1−ᾱ_t) tables (float64, on z's device)."""

    sqrt_a: torch.Tensor
    sqrt_1ma: torch.Tensor

    @property
    def T(self) -> int:
        return self.sqrt_a.shape[0]

    def coef(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return table[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _schedule(model, device) -> _Schedule:
    if not callable(getattr(model, "eps", None)) or getattr(model, "alphas_cumprod", None) is None:
        raise InputError("model must have a method eps(z_t, t, cond=None) and an alphas_cumprod tensor")
    ac = torch.as_tensor(model.alphas_cumprod).detach().to(device=device, dtype=torch.float64)
    if ac.dim() != 1 or ac.numel() == 0:
        raise InputError(f"model.alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(ac.shape)}")
    if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac > 1).any():
        raise InputError("model.alphas_cumprod must hold finite values in (0, 1]")
    return _Schedule(ac.sqrt(), (1 - ac).sqrt())


def _timesteps(t, n: int, T: int, device, margin: int = 0, what: str = "t") -> torch.Tensor:
    """An int or a LongTensor [] / [n] → LongTensor [n]; requires 0 ≤ t and t + margin < T."""
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


def _eps(model, x: torch.Tensor, t: torch.Tensor, cond, names=None) -> torch.Tensor:
    """One model call, checked: same shape as x, finite (NonFiniteError names the samples)."""
    out = model.eps(x, t) if cond is None else model.eps(x, t, cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model.eps returned {got}, expected a tensor of shape {tuple(x.shape)}")
    out = out.to(x.dtype)
    if not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).reshape(out.shape[0], -1).any(1).nonzero().flatten().tolist()
        shown = [names(i) if names else i for i in bad]
        tail = " …" if len(shown) > 10 else ""
        raise NonFiniteError(
            f"model.eps produced NaN/Inf for {len(bad)} sample(s): {', '.join(map(str, shown[:10]))}{tail}"
        )
    return out


def _noisy(s: _Schedule, z, t, noise):
    """Forward diffusion √ᾱ_t z + √(1−ᾱ_t) noise."""
    return s.coef(s.sqrt_a, t, z) * z + s.coef(s.sqrt_1ma, t, z) * noise


def _ddim(s: _Schedule, x, t_from, t_to, e):
    """Deterministic DDIM step x_s → x_u with ε = ε̂(x_s, s) (SPEC §1)."""
    x0 = (x - s.coef(s.sqrt_1ma, t_from, x) * e) / s.coef(s.sqrt_a, t_from, x)
    return s.coef(s.sqrt_a, t_to, x) * x0 + s.coef(s.sqrt_1ma, t_to, x) * e


def _index_cond(cond, idx: torch.Tensor, n: int):
    """Rows idx of a batch-first condition (None passes through)."""
    if cond is None or idx.numel() == n:
        return cond
    if not isinstance(cond, torch.Tensor):
        raise InputError("cond must be a batch-first tensor when samples are processed in subsets")
    return cond[idx.to(cond.device)]


def _check_cond(cond, n: int):
    if isinstance(cond, torch.Tensor) and (cond.dim() == 0 or cond.shape[0] != n):
        raise InputError(f"cond must be batch-first with {n} rows, got shape {tuple(cond.shape)}")


def _prepare(model, z, t, cond, margin=0):
    check_batched(z, "z")
    _check_cond(cond, z.shape[0])
    s = _schedule(model, z.device)
    return s, _timesteps(t, z.shape[0], s.T, z.device, margin)


# -- the four attacks (SPEC §1 table) -------------------------------------------------------

@torch.no_grad()
def sima(model, z: torch.Tensor, t, cond=None) -> torch.Tensor:
    """SimA: ε̂(z, t), the model queried at the clean latent itself (p = 4)."""
    _, tt = _prepare(model, z, t, cond)
    return _eps(model, z, tt, cond)


@torch.no_grad()
def loss(model, z: torch.Tensor, t, noise: torch.Tensor, cond=None) -> torch.Tensor:
    """Loss ("naive"): noise − ε̂(√ᾱ_t z + √(1−ᾱ_t) noise, t) (p = 2).

    For batch-independent noise draw it with :func:`loss_noise` (keyed by sample id).
    """
    s, tt = _prepare(model, z, t, cond)
    if not isinstance(noise, torch.Tensor) or noise.shape != z.shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise InputError(f"noise must be a tensor shaped like z {tuple(z.shape)}, got {got}")
    noise = noise.to(device=z.device, dtype=z.dtype)
    return noise - _eps(model, _noisy(s, z, tt, noise), tt, cond)


@torch.no_grad()
def pia(model, z: torch.Tensor, t, cond=None, eps0: torch.Tensor | None = None) -> torch.Tensor:
    """PIA: ε₀ − ε̂(√ᾱ_t z + √(1−ᾱ_t) ε₀, t) with ε₀ = ε̂(z, 0) (p = 4).

    Pass a precomputed ``eps0`` to share ε̂(z, 0) across timesteps.
    """
    s, tt = _prepare(model, z, t, cond)
    if eps0 is None:
        eps0 = _eps(model, z, torch.zeros_like(tt), cond)
    elif not isinstance(eps0, torch.Tensor) or eps0.shape != z.shape:
        raise InputError(f"eps0 must be a tensor shaped like z {tuple(z.shape)}")
    return eps0 - _eps(model, _noisy(s, z, tt, eps0.to(z.dtype)), tt, cond)


@torch.no_grad()
def secmi(model, z: torch.Tensor, t, interval: int = 10, cond=None) -> torch.Tensor:
    """SecMI t-error: x̂_t − x̃_t (p = 2).

    x̃_t: deterministic DDIM inversion of z (taken as x at timestep 0) through 0, Δ, 2Δ, …, and
    a last shorter step to t when t is not a multiple of Δ; x̃_{t+Δ}: one DDIM step on;
    x̂_t: one DDIM step back using ε̂(x̃_{t+Δ}, t+Δ). The reference code (SecMI,
    ``get_intermediate_results``) calls this timestep ``t_sec − Δ``: its default t_sec = 100
    is t = 90 here. Per-sample t (LongTensor [N]) is supported.
    """
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise InputError(f"interval must be a positive int, got {interval!r}")
    s, tt = _prepare(model, z, t, cond, margin=interval)
    n = z.shape[0]
    x, cur = z, torch.zeros_like(tt)
    while True:
        active = (cur < tt).nonzero().flatten()
        if active.numel() == 0:
            break
        nxt = torch.minimum(cur + interval, tt)
        if active.numel() == n:  # common case: everybody steps, no gather/scatter
            x = _ddim(s, x, cur, nxt, _eps(model, x, cur, cond))
            cur = nxt
        else:
            xa, ca, na = x[active], cur[active], nxt[active]
            x = x.clone()
            x[active] = _ddim(s, xa, ca, na, _eps(model, xa, ca, _index_cond(cond, active, n)))
            cur = cur.clone()
            cur[active] = na
    up = tt + interval
    x_on = _ddim(s, x, tt, up, _eps(model, x, tt, cond))
    back = _ddim(s, x_on, up, tt, _eps(model, x_on, up, cond))
    return back - x


def loss_noise(shape, sample_ids, seed: int, t: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Loss-attack noise for timestep t, keyed by sample id (batch-independent)."""
    from .rng import randn_per_sample

    return randn_per_sample(tuple(shape), list(sample_ids), seed, f"loss/t={int(t)}", dtype=dtype, device=device)


# -- statistic ------------------------------------------------------------------------------

def statistic(vector: torch.Tensor, p: float, mask: torch.Tensor | None = None, power: bool = True) -> torch.Tensor:
    """ℓp norm of each sample's vector over all non-batch dims, after an optional 0/1 mask → [N].

    ``power=True`` returns Σ|v|^p (same ranking as the norm, and what the reference code scores
    for p = 2); ``p = inf`` gives max |v|.
    """
    check_batched(vector, "vector")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p > 0):
        raise InputError(f"p must be a positive number, got {p!r}")
    v = vector.abs()
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise InputError("mask must be a tensor")
        try:
            ok = torch.broadcast_shapes(mask.shape, v.shape) == v.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise InputError(f"mask of shape {tuple(mask.shape)} does not fit vector of shape {tuple(v.shape)}")
        v = torch.where(mask.to(device=v.device).bool(), v, torch.zeros((), dtype=v.dtype, device=v.device))
    flat = v.reshape(v.shape[0], -1)
    if math.isinf(p):
        return flat.amax(1)
    out = flat.pow(p).sum(1)
    return out if power else out.pow(1.0 / p)


# -- registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: ``fn(model, z, t, cond=None[, noise])`` → vector shaped like z.

    ``job`` (optional) is a generator factory used by :func:`attack_sweep` to pack the attack's
    model calls with others; without one the sweep calls ``fn`` once per timestep.
    """

    name: str
    fn: Callable
    p: float
    needs_noise: bool = False
    job: Callable | None = None
    description: str = ""


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, fn: Callable, p: float, needs_noise: bool = False, job=None,
                    description: str = "", overwrite: bool = False) -> AttackSpec:
    """Add an attack to :data:`ATTACKS` (one line per attack)."""
    if name in ATTACKS and not overwrite:
        raise InputError(f"attack {name!r} is already registered (pass overwrite=True to replace it)")
    spec = AttackSpec(name, fn, p, needs_noise, job, description)
    ATTACKS[name] = spec
    return spec


from . import _sweep  # noqa: E402  (the jobs need the helpers above)
from ._sweep import attack_sweep  # noqa: E402,F401

register_attack("sima", sima, 4, job=_sweep.sima_job, description="ε̂(z, t)")
register_attack("loss", loss, 2, needs_noise=True, job=_sweep.loss_job, description="ε − ε̂(z_t(ε), t)")
register_attack("pia", pia, 4, job=_sweep.pia_job, description="ε₀ − ε̂(z_t(ε₀), t), ε₀ = ε̂(z, 0)")
register_attack("secmi", secmi, 2, job=_sweep.secmi_job, description="DDIM t-error, inversion shared along the grid")
