"""The established memorization detector of Wen et al. (ICLR 2024, "Detecting, Explaining,
and Mitigating Memorization in Diffusion Models", arXiv 2407.21720), and the
separation metrics used to compare it with the deviation score.

Per step the L2 norm over the whole latent of ε̂(z_t, c) − ε̂(z_t, ∅) along the sampled
(guided) trajectory, averaged over the generations of the prompt and over the first `window`
steps. Needs no training image. For a flow model it is ‖v̂(x_σ, c) − v̂(x_σ, ∅)‖, the difference
guidance scales there: its ε̂ difference is (1−σ)·(v̂_c − v̂_u), zero at σ = 1 (the first step)
whatever the prompt, so the ε̂ form would blank out Wen et al.'s first-step score.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import InputError


def wen_curve(traj) -> torch.Tensor:
    """Per step, the seed-mean of ‖p̂_c − p̂_u‖₂ for the native prediction p̂ (ε̂; v̂ for flow) ([S] float64)."""
    d = (traj.pred_c - traj.pred_u).reshape(*traj.pred_c.shape[:2], -1).double()
    return d.norm(dim=-1).mean(dim=1)


def wen_score(traj, window: int | None = None) -> float:
    """Mean of `wen_curve` over the first `window` steps (None: all steps)."""
    c = wen_curve(traj)
    if window is not None and window < 1:
        raise InputError(f"window must be ≥ 1, got {window}")
    return float(c[: window or len(c)].mean())


def separation(positive, negative) -> dict:
    """AUC and TPR@1%FPR for scores where higher = the positive class (memorized).

    Uses `diffaudit.metrics.membership_metrics` when that module is present, otherwise
    scikit-learn's ROC (TPR at the largest threshold with FPR ≤ 1%, as diffaudit.metrics).
    """
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if len(pos) == 0 or len(neg) == 0:
        return {"auc": None, "tpr_at_1pct_fpr": None, "n_pos": len(pos), "n_neg": len(neg)}
    try:
        from ...metrics import membership_metrics
    except ImportError:
        membership_metrics = None
    if membership_metrics is not None:
        m = membership_metrics(torch.as_tensor(pos), torch.as_tensor(neg))
        auc, tpr = float(m["auc"]), float(m["tpr_at_1pct_fpr"])
    else:
        from sklearn.metrics import roc_auc_score, roc_curve

        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        s = np.r_[pos, neg]
        auc = float(roc_auc_score(y, s))
        fpr, tpr_c, _ = roc_curve(y, s)
        tpr = float(tpr_c[fpr <= 0.01].max())
    return {"auc": auc, "tpr_at_1pct_fpr": tpr, "n_pos": len(pos), "n_neg": len(neg)}
