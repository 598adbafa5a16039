"""DeLong's variance of AUCs and of linear contrasts between them (DeLong et al., Biometrics 1988).

The verdicts of the report compare AUCs of several statistics of the SAME samples (filtered vs
unfiltered, filtered vs the mean of random-mask draws, …). An AUC is a two-sample U-statistic:
AUC_j = mean_i V10[i, j] over members = mean_k V01[k, j] over held-out, with placement values
V10[i, j] = P(member i outscores a random held-out sample) and V01[k, j] likewise. For a contrast
c·AUC, DeLong's estimator Var = cᵀ S10 c / m + cᵀ S01 c / n (S the covariances of the placement
values across columns) resamples nothing and keeps the pairing of columns, so a contrast with
the mean over mask draws has the draws inside it. The normal approximation needs both classes
to be reasonably large: the verdicts refuse to judge below ``diffaudit.audit.verdicts``'
minimum sample size (docs/verdicts.md).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from .grid import count_below, labels

_Z = {0.95: float(norm.ppf(0.975))}


def placements(scores, member) -> tuple[np.ndarray, np.ndarray]:
    """(V10 [m, C], V01 [n, C]) placement values of every column; their means are the AUCs."""
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim == 1:
        S = S[:, None]
    y, m, n = labels(member)
    v10 = count_below(S[~y], S[y]) / n          # held-out scored below member i (ties half)
    v01 = 1.0 - count_below(S[y], S[~y]) / m    # members scored above held-out k (ties half)
    return v10, v01


def auc_contrast(scores, member, weights, level: float = 0.95) -> dict:
    """Estimate, standard error, CI and p-values of Σ_j w_j·AUC_j (DeLong).

    ``p_two_sided`` tests a zero contrast; ``p_greater`` tests it against a positive one.
    """
    w = np.asarray(weights, dtype=np.float64)
    v10, v01 = placements(scores, member)
    if w.shape != (v10.shape[1],):
        raise ValueError(f"weights must have one entry per column ({v10.shape[1]}), got shape {w.shape}")
    a10, a01 = v10 @ w, v01 @ w
    est = float(a10.mean())
    m, n = len(a10), len(a01)
    var = (a10.var(ddof=1) / m if m > 1 else 0.0) + (a01.var(ddof=1) / n if n > 1 else 0.0)
    return _normal(est, float(np.sqrt(max(var, 0.0))), level)


def independent_difference(a: dict, b: dict, level: float = 0.95) -> dict:
    """AUC_a − AUC_b for two DISJOINT sample sets (e.g. two distortion quartiles)."""
    return _normal(a["estimate"] - b["estimate"], float(np.hypot(a["se"], b["se"])), level)


def _sf(x: float) -> float:
    """Standard normal upper tail (math.erfc: scipy's per-call overhead dominates null simulations)."""
    return 0.5 * math.erfc(x / math.sqrt(2))


def _normal(est: float, se: float, level: float) -> dict:
    z = _Z.get(level) or float(norm.ppf((1 + level) / 2))
    if se > 0:
        stat = est / se
        p2, pg = min(1.0, 2 * _sf(abs(stat))), _sf(stat)
    else:  # identical columns (or one sample): no evidence either way unless the estimate moved
        p2 = pg = 1.0 if est == 0 else 0.0
        if est < 0:
            pg = 1.0
    return {"estimate": est, "se": se, "ci": [est - z * se, est + z * se], "p_two_sided": p2,
            "p_greater": pg, "level": level}
