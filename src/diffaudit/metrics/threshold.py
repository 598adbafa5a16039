"""Threshold transfer: what a deployed attacker achieves with a threshold fitted beforehand.

In-sample TPR@x%FPR picks the threshold with the labels it is scored on. As the CopyMark
benchmark of diffusion MIAs evaluates, the threshold for a target FPR is fitted on the
calibration fold's held-out scores and applied unchanged to the evaluation fold; the realized
FPR and TPR there come with exact (Clopper–Pearson) CIs (docs/verdicts.md).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

from .single import scores_1d


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    a = 1 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return [lo, hi]


def fit_threshold(heldout_scores, target_fpr: float) -> float:
    """The smallest threshold τ (flag score > τ) with at most ⌊target·n⌋ held-out scores above it."""
    h = np.sort(scores_1d(heldout_scores, "heldout_scores"))[::-1]
    k = int(math.floor(target_fpr * h.size + 1e-9))
    return float(h[min(k, h.size - 1)])


def transfer(cal_member, cal_heldout, ev_member, ev_heldout, target_fpr: float, level: float = 0.95) -> dict:
    """Fit τ on the calibration held-out scores; realized FPR / TPR on the evaluation fold."""
    tau = fit_threshold(cal_heldout, target_fpr)
    m, h = scores_1d(ev_member, "ev_member"), scores_1d(ev_heldout, "ev_heldout")
    tp, fp = int((m > tau).sum()), int((h > tau).sum())
    n_cal = len(np.asarray(cal_heldout))
    return {"target_fpr": target_fpr, "threshold": tau,
            "fpr": fp / h.size, "fpr_ci": clopper_pearson(fp, h.size, level),
            "tpr": tp / m.size, "tpr_ci": clopper_pearson(tp, m.size, level),
            "n_cal_heldout": n_cal, "n_eval": {"members": int(m.size), "heldout": int(h.size)},
            "resolvable": n_cal * target_fpr >= 1}
