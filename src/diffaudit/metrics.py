"""Membership metrics and bootstrap confidence intervals (SPEC §2, paper §4.1).

Scores: higher = more likely a member (attack statistics are negated by the caller). Members are
the positive class — the reference code computed TPR@FPR with held-out as the positive class.
- AUC: trapezoidal area under the ROC, ties counted half (== sklearn ``roc_auc_score``).
- ASR: max over thresholds of ½(TPR + 1 − FPR) (balanced accuracy).
- TPR@x%FPR: the largest TPR among thresholds whose FPR ≤ x% (counts compared exactly:
  FP ≤ x%·n_heldout); with fewer than 1/x held-out samples only FPR = 0 qualifies, so the
  result dict carries ``notes`` (and :func:`fpr_resolution_notes`) saying so.
Bootstrap: stratified resampling (members and held-out each with replacement, sizes fixed),
percentile intervals; all replicates are evaluated at once from one sort via resampling weights.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from .errors import InputError

FPR_TARGETS = {"tpr_at_1pct_fpr": "0.01", "tpr_at_0_1pct_fpr": "0.001"}
METRICS = ("auc", "asr", *FPR_TARGETS)


def _scores(x, what: str) -> np.ndarray:
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

    mem, held = _scores(member_scores, "member_scores"), _scores(heldout_scores, "heldout_scores")
    y = np.r_[np.ones(mem.size), np.zeros(held.size)]
    s = np.r_[mem, held]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fp = np.rint(fpr * held.size)  # exact counts for the FPR comparisons
    out = {
        "auc": float(roc_auc_score(y, s)),
        "asr": float(np.max(0.5 * (tpr + 1 - fpr))),
    }
    for key, target in FPR_TARGETS.items():
        t = Fraction(target)
        ok = fp * t.denominator <= held.size * t.numerator
        out[key] = float(tpr[ok].max())
    out.update(fpr=fpr, tpr=tpr, thresholds=thr, n_member=int(mem.size), n_heldout=int(held.size),
               notes=fpr_resolution_notes(held.size))
    return out


# -- vectorised evaluation of many resamples ------------------------------------------------

def _sorted_layout(mem: np.ndarray, held: np.ndarray):
    """Descending order of all scores, member flags in that order, last index of each tie group."""
    s = np.r_[mem, held]
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    return order, order < mem.size, ends


def _weighted_metrics(layout, w_mem: np.ndarray, w_held: np.ndarray, metrics) -> dict:
    """Metrics for B weightings at once (w_*: [B, m] / [B, h] sample multiplicities)."""
    order, is_mem, ends = layout
    w = np.concatenate([w_mem, w_held], axis=1)[:, order].astype(np.float64)
    tp = np.cumsum(np.where(is_mem, w, 0.0), axis=1)[:, ends]
    fp = np.cumsum(np.where(is_mem, 0.0, w), axis=1)[:, ends]
    zero = np.zeros((w.shape[0], 1))
    tp, fp = np.hstack([zero, tp]), np.hstack([zero, fp])
    n_mem, n_held = tp[:, -1:], fp[:, -1:]
    tpr, fpr = tp / n_mem, fp / n_held
    out = {}
    if "auc" in metrics:
        out["auc"] = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    if "asr" in metrics:
        out["asr"] = np.max(0.5 * (tpr + 1 - fpr), axis=1)
    for key, target in FPR_TARGETS.items():
        if key in metrics:
            t = Fraction(target)
            ok = np.rint(fp) * t.denominator <= np.rint(n_held) * t.numerator
            out[key] = np.max(np.where(ok, tpr, -np.inf), axis=1)
    return out


def _bootstrap_indices(m: int, h: int, n_boot: int, seed: int):
    """Resampled index arrays in chunks: yields (idx_member [b, m], idx_heldout [b, h]).

    The chunk size depends only on (m, h), so results depend only on the data and the seed.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // (m + h))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield rng.integers(0, m, size=(b, m)), rng.integers(0, h, size=(b, h))


def _counts(idx: np.ndarray, size: int) -> np.ndarray:
    b = idx.shape[0]
    flat = (idx + np.arange(b)[:, None] * size).ravel()
    return np.bincount(flat, minlength=b * size).reshape(b, size)


def _check_boot(metric: str, n_boot: int, level: float):
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise InputError(f"n_boot must be an int ≥ 2, got {n_boot!r}")
    if not (0 < level < 1):
        raise InputError(f"level must lie in (0, 1), got {level!r}")


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(member_scores, heldout_scores, metric: str = "auc", n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap CI of one metric → dict(metric, estimate, low, high, std, level, n_boot)."""
    _check_boot(metric, n_boot, level)
    mem, held = _scores(member_scores, "member_scores"), _scores(heldout_scores, "heldout_scores")
    layout = _sorted_layout(mem, held)
    est = _weighted_metrics(layout, np.ones((1, mem.size)), np.ones((1, held.size)), (metric,))[metric][0]
    reps = np.concatenate([
        _weighted_metrics(layout, _counts(im, mem.size), _counts(ih, held.size), (metric,))[metric]
        for im, ih in _bootstrap_indices(mem.size, held.size, n_boot, seed)
    ])
    lo, hi = _interval(reps, level)
    return {"metric": metric, "estimate": float(est), "low": lo, "high": hi, "std": float(reps.std(ddof=1)),
            "level": level, "n_boot": int(n_boot)}


def paired_bootstrap_diff(member_a, heldout_a, member_b, heldout_b, metric: str = "auc",
                          n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """CI of metric(a) − metric(b) for two statistics of the SAME samples.

    ``member_a[i]`` and ``member_b[i]`` must score the same member (likewise held-out); each
    replicate resamples sample indices once and applies them to both, so the correlation
    between the two attacks is kept. ``p_value``: two-sided bootstrap p for a zero difference.
    """
    _check_boot(metric, n_boot, level)
    ma, ha = _scores(member_a, "member_a"), _scores(heldout_a, "heldout_a")
    mb, hb = _scores(member_b, "member_b"), _scores(heldout_b, "heldout_b")
    if ma.size != mb.size or ha.size != hb.size:
        raise InputError(f"paired scores must have equal lengths: members {ma.size} vs {mb.size}, "
                         f"held-out {ha.size} vs {hb.size}")
    la, lb = _sorted_layout(ma, ha), _sorted_layout(mb, hb)
    one_m, one_h = np.ones((1, ma.size)), np.ones((1, ha.size))
    est_a = _weighted_metrics(la, one_m, one_h, (metric,))[metric][0]
    est_b = _weighted_metrics(lb, one_m, one_h, (metric,))[metric][0]
    diffs = []
    for im, ih in _bootstrap_indices(ma.size, ha.size, n_boot, seed):
        wm, wh = _counts(im, ma.size), _counts(ih, ha.size)
        diffs.append(_weighted_metrics(la, wm, wh, (metric,))[metric] - _weighted_metrics(lb, wm, wh, (metric,))[metric])
    d = np.concatenate(diffs)
    lo, hi = _interval(d, level)
    p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    return {"metric": metric, "estimate": float(est_a - est_b), "estimate_a": float(est_a),
            "estimate_b": float(est_b), "low": lo, "high": hi, "std": float(d.std(ddof=1)),
            "p_value": float(p), "level": level, "n_boot": int(n_boot)}
