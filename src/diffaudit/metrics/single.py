"""Membership metrics of one score column (arXiv 2511.20592 §4.1; docs/verdicts.md).

Scores: higher = more likely a member (attack statistics are negated by the caller). Members are
the positive class — the reference code computed TPR@FPR with held-out as the positive class.
- AUC: trapezoidal area under the ROC, ties counted half (== sklearn ``roc_auc_score``).
- ASR: max over thresholds of ½(TPR + 1 − FPR) (balanced accuracy).
- TPR@x%FPR: the largest TPR among thresholds whose FPR ≤ x%, with counts compared exactly
  (FP ≤ x%·n_heldout: :func:`fpr_within`, the one FPR rule of the package); with fewer than 1/x
  held-out samples only FPR = 0 qualifies, so the result carries ``notes`` saying so.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..errors import InputError

FPR_TARGETS = {"tpr_at_1pct_fpr": "0.01", "tpr_at_0_1pct_fpr": "0.001"}
METRICS = ("auc", "asr", *FPR_TARGETS)


def scores_1d(x, what: str) -> np.ndarray:
    """A finite, non-empty 1-D float64 array (torch tensors accepted), or InputError."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a 1-D array of numbers ({e})") from None
    if a.ndim != 1:
        raise InputError(f"{what} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise InputError(f"{what} is empty")
    if not np.isfinite(a).all():
        raise InputError(f"{what} contains NaN or Inf at index {int(np.flatnonzero(~np.isfinite(a))[0])}")
    return a


def fpr_within(false_positives, n_heldout, target: str) -> np.ndarray:
    """FP / n_heldout ≤ target, compared exactly on counts (no float tolerance)."""
    t = Fraction(target)
    return np.rint(false_positives) * t.denominator <= np.rint(n_heldout) * t.numerator


def fpr_resolution_notes(n_heldout: int) -> list[str]:
    """Warnings for TPR@FPR targets finer than 1/n_heldout (not meaningful)."""
    notes = []
    for key, target in FPR_TARGETS.items():
        need = int(1 / Fraction(target))
        if n_heldout < need:
            notes.append(f"{key}: only {n_heldout} held-out samples (< {need}); only FPR = 0 is reachable "
                         f"below the target, so this value is not meaningful")
    return notes


def membership_metrics(member_scores, heldout_scores) -> dict:
    """AUC, ASR, TPR@1%FPR, TPR@0.1%FPR and the ROC curve (fpr, tpr, thresholds; sklearn's
    ``roc_curve`` with every threshold kept). Higher score = more likely member."""
    from sklearn.metrics import roc_auc_score, roc_curve

    mem, held = scores_1d(member_scores, "member_scores"), scores_1d(heldout_scores, "heldout_scores")
    y = np.r_[np.ones(mem.size), np.zeros(held.size)]
    s = np.r_[mem, held]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fp = np.rint(fpr * held.size)  # exact counts for the FPR comparisons
    out = {
        "auc": float(roc_auc_score(y, s)),
        "asr": float(np.max(0.5 * (tpr + 1 - fpr))),
    }
    for key, target in FPR_TARGETS.items():
        out[key] = float(tpr[fpr_within(fp, held.size, target)].max())
    out.update(fpr=fpr, tpr=tpr, thresholds=thr, n_member=int(mem.size), n_heldout=int(held.size),
               notes=fpr_resolution_notes(held.size))
    return out
