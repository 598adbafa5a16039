"""CLiD: conditional likelihood discrepancy (Zhai et al., NeurIPS 2024, arXiv 2405.14800 §3.3–3.5).

A text- or class-conditioned model overfits p(x | c) more than p(x): for a member the denoising
error with its own condition c drops further below the error with a reduced condition c* (the
null condition, and optionally perturbed copies of c) than for a held-out sample. With one noise
draw ε per t shared by every condition (the paper's Eq. 13: the difference is estimated, not the
two ELBOs separately) and e_c = ε̂(z_t, t, c) − ε, e_i = ε̂(z_t, t, c*_i) − ε:

    D_i = mean_t (‖e_i‖² − ‖e_c‖²)        (Eq. 14, one per reduced condition; c*_k = null)
    L   = −mean_t ‖e_c‖²                  (Eq. 15)

at t ∈ {440, 450, 460} (App. D.1: M = N = 3 draws around t = 450). The registered vector is the
per-dim form v = mean_t [e_c² − mean_i e_i²] (signed; Σ_d v = −mean_i D_i, smaller ⇒ member), so
an influence mask selects which dims' discrepancy is summed. The paper's threshold form CLiD_th
mixes the robust-scaled mean discrepancy and L, α·S(mean_i D_i) + (1 − α)·S(L)
(:func:`clid_threshold_scores`); its CLiD_vec feeds [D_1 … D_k, L] to a classifier
(:func:`diffaudit.attacks.classifier.classifier_scores`). The authors' code was not public when
this was written (github zhaisf/CLiD holds only the README): this follows the paper's equations.

Reduced conditions: the null condition always (the paper's "Null (K = 1)" variant by default);
:func:`gaussian_conditions` gives the paper's Gaussian-noise reduction (App. D.2, scales 50/70/90 %,
read here as ε-noise of that fraction of the embedding's RMS). Its default importance clipping
needs word attributions (DAAM) and is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..diffusion import check_timesteps
from ..errors import InputError
from .base import register_attack
from .common import check_cond, keyed_noise, model_eps, prepare

__all__ = ["clid", "clid_terms", "ClidTerms", "clid_timesteps", "gaussian_conditions", "clid_threshold_scores",
           "DEFAULT_OFFSETS"]

DEFAULT_OFFSETS = (-10, 0, 10)


@dataclass(frozen=True)
class ClidTerms:
    """The per-sample CLiD quantities: ``vector`` shaped like z, ``discrepancy`` [N, k] (D_i),
    ``likelihood`` [N] (L)."""

    vector: torch.Tensor
    discrepancy: torch.Tensor
    likelihood: torch.Tensor


def clid_timesteps(t, offsets: Sequence[int], T: int) -> list[int]:
    """t + offset for each offset (App. D.1: 450 ± 10), each checked to lie in [0, T)."""
    base = int(check_timesteps(t, 1, T, "cpu", what="t for clid"))
    try:
        ts = [base + int(o) for o in offsets]
    except (TypeError, ValueError):
        raise InputError(f"offsets must be a sequence of ints, got {offsets!r}") from None
    if not ts:
        raise InputError("offsets is empty")
    if min(ts) < 0 or max(ts) >= T:
        raise InputError(f"clid timesteps {ts} (t = {base} with offsets {list(offsets)}) must lie in [0, {T})")
    return ts


def _null_condition(model, n: int):
    uncond = getattr(model, "uncond", None)
    if not callable(uncond):
        raise InputError("clid needs the null condition: pass null_cond=… or use a model with uncond(n)")
    return uncond(n)


@torch.no_grad()
def clid_terms(model, z: torch.Tensor, t=450, cond=None, *, null_cond=None, perturbed: Sequence = (),
               sample_ids: Sequence | None = None, seed: int = 0, noise_fn: Callable | None = None,
               offsets: Sequence[int] = DEFAULT_OFFSETS) -> ClidTerms:
    """D_i, L and the per-dim vector for reduced conditions (*perturbed, null).

    ``noise_fn(t)`` → noise shaped like z; else keyed draws from ``sample_ids`` and ``seed``.
    """
    if cond is None:
        raise InputError("clid compares the error under each sample's condition with the null condition: "
                         "it needs a conditional model and cond (captions' embeddings or class labels)")
    s, _ = prepare(model, z, 0, cond)
    n = z.shape[0]
    ts = clid_timesteps(t, offsets, s.T)
    reduced = list(perturbed) + [_null_condition(model, n) if null_cond is None else null_cond]
    for c in reduced:
        if c is None:
            raise InputError("a reduced condition is None: the model's null condition must be a tensor")
        check_cond(c, n)
    if noise_fn is None:
        noise_fn = keyed_noise(z, sample_ids, seed, "clid", lambda t_: f"clid/t={t_}")

    dims = tuple(range(1, z.dim()))
    vec = torch.zeros_like(z)
    disc = torch.zeros(n, len(reduced), dtype=z.dtype, device=z.device)
    cond_sq = torch.zeros(n, dtype=z.dtype, device=z.device)
    for t_ in ts:
        e = noise_fn(t_)
        if not isinstance(e, torch.Tensor) or e.shape != z.shape:
            raise InputError(f"noise_fn({t_}) must return a tensor shaped like z {tuple(z.shape)}")
        e = e.to(device=z.device, dtype=z.dtype)
        tt = torch.full((n,), t_, dtype=torch.long, device=z.device)
        x = s.noisy(z, tt, e)
        err_c = (model_eps(model, x, tt, cond) - e).pow(2)
        err_r = torch.stack([(model_eps(model, x, tt, c) - e).pow(2) for c in reduced])  # [k, N, ...]
        sq_c = err_c.sum(dims)
        vec += err_c - err_r.mean(0)
        disc += err_r.sum(tuple(range(2, err_r.dim()))).T - sq_c[:, None]
        cond_sq += sq_c
    m = len(ts)
    return ClidTerms(vector=vec / m, discrepancy=disc / m, likelihood=-cond_sq / m)


def clid(model, z: torch.Tensor, t=450, cond=None, **kwargs) -> torch.Tensor:
    """The per-dim CLiD vector mean_t [e_c² − mean_i e_i²], shaped like z (statistic: Σ v, signed;
    smaller ⇒ more likely a member). Keywords as :func:`clid_terms`."""
    return clid_terms(model, z, t, cond, **kwargs).vector


def gaussian_conditions(cond: torch.Tensor, sample_ids: Sequence, seed: int = 0,
                        scales: Sequence[float] = (0.5, 0.7, 0.9)) -> list[torch.Tensor]:
    """Perturbed conditions c + s·rms(c)·ξ (arXiv 2405.14800 App. D.2, "Gaussian noise"), ξ keyed
    by (seed, sample id, scale); rms over each sample's embedding. Float embeddings only."""
    if not isinstance(cond, torch.Tensor) or not cond.is_floating_point() or cond.dim() < 2:
        raise InputError("gaussian_conditions needs float embeddings [N, …] (class labels cannot be perturbed)")
    if len(sample_ids) != cond.shape[0]:
        raise InputError(f"sample_ids has {len(sample_ids)} entries for {cond.shape[0]} conditions")
    from ..rng import randn_per_sample

    rms = cond.pow(2).mean(dim=tuple(range(1, cond.dim())), keepdim=True).sqrt()
    out = []
    for sc in scales:
        xi = randn_per_sample(cond.shape[1:], list(sample_ids), seed, f"clid/cond-noise={float(sc)}",
                              dtype=cond.dtype, device=cond.device)
        out.append(cond + float(sc) * rms * xi)
    return out


def clid_threshold_scores(disc_cal, lik_cal, member_cal, disc_eval, lik_eval,
                          alphas: Sequence[float] = tuple(np.linspace(0, 1, 21))) -> tuple[np.ndarray, float]:
    """CLiD_th (arXiv 2405.14800 Eq. 16): α·S(mean_i D_i) + (1 − α)·S(L), higher ⇒ more likely a member.

    S is scikit-learn's RobustScaler ((a − median)/IQR) and α the grid value with the best AUC,
    both fitted on the calibration fold (labels known there) and applied to the evaluation fold
    — the paper fits them on a shadow model instead. Returns (evaluation scores, α).
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import RobustScaler

    def stack(d, l, what):
        d, l = np.asarray(d, dtype=np.float64), np.asarray(l, dtype=np.float64).reshape(-1)
        d = d.reshape(len(d), -1)
        if len(d) != len(l) or not len(l):
            raise InputError(f"{what}: discrepancy has {len(d)} rows, likelihood {len(l)}")
        x = np.stack([d.mean(1), l], 1)
        if not np.isfinite(x).all():
            raise InputError(f"{what}: CLiD terms hold NaN/Inf")
        return x

    cal, ev = stack(disc_cal, lik_cal, "calibration"), stack(disc_eval, lik_eval, "evaluation")
    member = np.asarray(member_cal).astype(bool).reshape(-1)
    if len(member) != len(cal) or member.all() or not member.any():
        raise InputError("member_cal must hold one label per calibration sample, with members and non-members")
    scaler = RobustScaler().fit(cal)
    sc, se = scaler.transform(cal), scaler.transform(ev)
    alphas = [float(a) for a in alphas]
    aucs = [roc_auc_score(member, a * sc[:, 0] + (1 - a) * sc[:, 1]) for a in alphas]
    best = alphas[int(np.argmax(aucs))]
    return best * se[:, 0] + (1 - best) * se[:, 1], best


register_attack(
    "clid", clid, 1, display_name="CLiD", first_t=10, needs=("cond", "perturbation", "conditional"),
    output="signed", grid=(450,), calls_per_t=6,
    reference="Zhai et al. 2024, arXiv 2405.14800 (NeurIPS 2024)",
    description="per-dim (ε̂(z_t, t, c) − ε)² − (ε̂(z_t, t, ∅) − ε)² at t ∈ {440, 450, 460}",
)
