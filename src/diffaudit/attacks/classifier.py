"""The classifier protocol of the feature attacks (GSA, CLiD_vec): fit on the calibration fold,
score the evaluation fold.

The papers train their classifier on a shadow model's members and non-members (GSA: Pang et al.,
arXiv 2308.06405, XGBoost on standardised features; CLiD_vec: arXiv 2405.14800 §3.5, XGBoost).
An auditor rarely has a shadow model, but does know the labels of the audit's calibration fold:
the classifier is fitted there and applied, unchanged, to the evaluation fold, so no evaluation
label is ever seen. Gradient-boosted trees from scikit-learn (``HistGradientBoostingClassifier``,
200 iterations like the reference's 200 estimators, no early stopping, seeded) stand in for
XGBoost; trees ignore monotone rescaling, so features are not standardised.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["classifier_scores"]


def _features(x, what: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{what} must be a non-empty [N, F] array, got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(1))
        raise InputError(f"{what} holds NaN/Inf in row(s) {bad[:10].tolist()}")
    return a


def classifier_scores(features_cal, member_cal, features_eval, seed: int = 0, max_iter: int = 200) -> np.ndarray:
    """P(member) for every evaluation row (higher ⇒ more likely a member), from gradient-boosted
    trees fitted on the calibration rows and their labels only."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    xc, xe = _features(features_cal, "features_cal"), _features(features_eval, "features_eval")
    if xc.shape[1] != xe.shape[1]:
        raise InputError(f"features_cal has {xc.shape[1]} columns, features_eval {xe.shape[1]}")
    y = np.asarray(member_cal).reshape(-1)
    if y.shape[0] != xc.shape[0]:
        raise InputError(f"member_cal has {y.shape[0]} labels for {xc.shape[0]} calibration rows")
    if not np.isin(y, (0, 1)).all():
        raise InputError("member_cal must hold booleans or 0/1 labels")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise InputError("the calibration fold needs both members and non-members to fit a classifier")
    clf = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=False, random_state=seed)
    clf.fit(xc, y)
    return clf.predict_proba(xe)[:, list(clf.classes_).index(True)]
