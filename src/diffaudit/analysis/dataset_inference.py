"""Dataset inference: was this *set* of images used to train the model? A p-value, not a guess.

After CDI (Dubiński et al., "CDI: Copyrighted Data Identification in Diffusion Models",
arXiv 2411.12858; code github: unknowndi/dataset_inference_diffusion_models, whose
src/attacks/scores_computation/cdi.py fits the scorer and src/evaluation/evaluate.py tests with
Welch's t on one held-out part): per image a
feature vector of membership statistics; a scorer (logistic regression on standardized
features) fitted on part of the suspect set P (label 1) and the reference set U (label 0, known
unused, same distribution); a one-sided test on the images the scorer never saw. The null
hypothesis H0 is "P and U are drawn from the same distribution" (P scores no higher than U).

How folds are combined here, and why (measured figures: docs/dataset-inference.md):
- K cross-fitting folds, stratified (each fold holds ~1/K of P and ~1/K of U, drawn from a
  numpy Generator keyed by the seed). Fold k's scorer is fitted on the other folds. Under H0
  the labels inside fold k are exchangeable given that scorer, so the one-sided Mann–Whitney U
  test on fold k's held-out scores (distribution-free; scipy's `mannwhitneyu`) is valid there.
- The K fold p-values are dependent: fold j's images train fold k's scorer and vice versa. One
  test on all out-of-fold scores pooled ignores that and rejected 10.3 % of 1000 null data sets
  at level 5 % (n_P = n_U = 60, d = 8). So the folds are merged with the Bonferroni rule
  p = min(1, K · min_k p_k), valid under any dependence (union bound: P(min p_k ≤ α/K) ≤ α).
  With K = 2 (the default) it had the power of a single train/test split or a little more;
  K = 5 and twice the median of the fold p-values had much less.

The images-needed curve (as CDI's experiments/cdi_perf.py, p-value against the number of
suspect samples): P subsampled to n images (U kept whole), R times per n,
the whole test run on each subsample; the share that rejects at alpha estimates the power of a
data owner holding n suspect images. `detection_curve` is the same curve for an audit's members
(P) and held-out samples (U).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..rng import derive_seed

__all__ = ["DatasetTestResult", "PowerCurve", "check_settings", "dataset_test", "default_sizes", "detection_curve",
           "images_needed_curve", "METHOD"]

DEFAULT_FOLDS = 2
DEFAULT_REPEATS = 100
TARGET_POWER = 0.8

METHOD = ("K-fold cross-fitting (stratified, seeded): in each fold a StandardScaler + "
          "LogisticRegression(class_weight='balanced') pipeline is fitted on the other folds' suspect "
          "(label 1) and reference (label 0) images and scores the held-out fold; a one-sided Mann-Whitney U "
          "test (suspect scores greater) on each held-out fold; the K fold p-values are combined with the "
          "Bonferroni rule p = min(1, K * min p_k), valid under any dependence between folds.")


@dataclass(frozen=True)
class PowerCurve:
    """Estimated power of the test against the number of suspect images n."""

    sizes: list[int]
    power: list[float]  # share of the R subsamples of size n that rejected at alpha
    power_ci: list[tuple[float, float]]  # 95 % Clopper–Pearson interval of each share
    repeats: int
    alpha: float
    target_power: float
    n_needed: int | None  # smallest n whose power reached target_power (None: none did)
    n_reference: int

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "power": list(self.power),
                "power_ci95": [list(ci) for ci in self.power_ci], "repeats": self.repeats, "alpha": self.alpha,
                "target_power": self.target_power, "n_needed": self.n_needed, "n_reference": self.n_reference}


@dataclass(frozen=True)
class DatasetTestResult:
    p_value: float
    alpha: float
    reject: bool
    statistic: list[float]  # Mann–Whitney U of each fold (suspect vs reference held-out scores)
    fold_p_values: list[float]
    fold_auc: list[float]  # U / (n_P,k · n_U,k): the held-out AUC of each fold's scorer
    n_suspect: int
    n_reference: int
    folds: int
    seed: int
    method: str = METHOD
    curve: PowerCurve | None = None
    # Each image's out-of-fold score (from the one scorer that never saw it) and fold; not in to_dict.
    suspect_scores: np.ndarray = field(default=None, repr=False, compare=False)
    reference_scores: np.ndarray = field(default=None, repr=False, compare=False)
    suspect_folds: np.ndarray = field(default=None, repr=False, compare=False)
    reference_folds: np.ndarray = field(default=None, repr=False, compare=False)

    @property
    def verdict(self) -> str:
        if self.reject:
            return (f"p = {self.p_value:.3g} < {self.alpha:g}: the suspect images score higher than the reference "
                    "images; evidence that they were used in training")
        return (f"p = {self.p_value:.3g} >= {self.alpha:g}: no evidence at this level that the suspect images were "
                "used (not proof that they were not)")

    def to_dict(self) -> dict:
        return {"p_value": self.p_value, "alpha": self.alpha, "reject": self.reject, "verdict": self.verdict,
                "statistic": {"name": "Mann-Whitney U per fold", "values": list(self.statistic)},
                "fold_p_values": list(self.fold_p_values), "fold_auc": list(self.fold_auc),
                "n_suspect": self.n_suspect, "n_reference": self.n_reference, "folds": self.folds,
                "seed": self.seed, "method": self.method,
                "images_needed": self.curve.to_dict() if self.curve is not None else None}


def dataset_test(suspect, reference, alpha: float = 0.01, folds: int = DEFAULT_FOLDS, seed: int = 0,
                 curve: bool = True, sizes=None, repeats: int = DEFAULT_REPEATS,
                 target_power: float = TARGET_POWER) -> DatasetTestResult:
    """Test H0 "the suspect set P scores no higher than the reference set U" on features
    `suspect` [n_P, d] and `reference` [n_U, d] (see the module docstring for the procedure).

    With `curve`, also the images-needed curve (`images_needed_curve`, same alpha, folds, seed).
    """
    P, U = _features(suspect, "suspect"), _features(reference, "reference")
    _check(P, U, alpha, folds, repeats)
    rng = np.random.default_rng(derive_seed(seed, "all", "dataset-test/folds"))
    fold_p, fold_u, fold_auc, (sP, fP), (sU, fU) = _cross_fit(P, U, folds, rng)
    p = _combine(fold_p)
    c = images_needed_curve(P, U, alpha, folds, seed, sizes, repeats, target_power) if curve else None
    return DatasetTestResult(p_value=p, alpha=float(alpha), reject=bool(p < alpha), statistic=fold_u,
                             fold_p_values=fold_p, fold_auc=fold_auc, n_suspect=len(P), n_reference=len(U),
                             folds=int(folds), seed=int(seed), curve=c, suspect_scores=sP, reference_scores=sU,
                             suspect_folds=fP, reference_folds=fU)


def images_needed_curve(suspect, reference, alpha: float = 0.01, folds: int = DEFAULT_FOLDS, seed: int = 0,
                        sizes=None, repeats: int = DEFAULT_REPEATS, target_power: float = TARGET_POWER) -> PowerCurve:
    """Power of the test with n suspect images, for each n in `sizes` (default `default_sizes`).

    For each n and each repeat r: n images drawn from P without replacement and a fresh fold split,
    both from a Generator keyed by (seed, n, r); U is used whole; the whole test is run. The share
    of the `repeats` subsamples with p < alpha estimates the power at n; `n_needed` is the smallest
    n whose share reached `target_power`. At n close to n_P the subsamples overlap, so those
    points describe this P (and this U) rather than fresh draws from the owner's distribution.
    """
    from scipy.stats import binomtest

    P, U = _features(suspect, "suspect"), _features(reference, "reference")
    _check(P, U, alpha, folds, repeats)
    if not 0 < target_power <= 1:
        raise InputError(f"target_power must be in (0, 1], got {target_power!r}")
    sizes = default_sizes(len(P), folds) if sizes is None else _sizes(sizes, len(P), folds)
    power, cis = [], []
    for n in sizes:
        hits = 0
        for r in range(int(repeats)):
            rng = np.random.default_rng(derive_seed(seed, f"n={n}#r={r}", "dataset-test/subsample"))
            idx = np.sort(rng.choice(len(P), size=n, replace=False))
            hits += _combine(_cross_fit(P[idx], U, folds, rng)[0]) < alpha
        power.append(hits / repeats)
        ci = binomtest(int(hits), int(repeats)).proportion_ci(0.95, method="exact")
        cis.append((float(ci.low), float(ci.high)))
    needed = next((n for n, pw in zip(sizes, power) if pw >= target_power), None)
    return PowerCurve(sizes=list(sizes), power=power, power_ci=cis, repeats=int(repeats), alpha=float(alpha),
                      target_power=float(target_power), n_needed=needed, n_reference=len(U))


def detection_curve(member_features, heldout_features, alpha: float = 0.01, folds: int = DEFAULT_FOLDS,
                    seed: int = 0, sizes=None, repeats: int = DEFAULT_REPEATS,
                    target_power: float = TARGET_POWER) -> PowerCurve:
    """For the audit report: the probability that an owner of n training images detects their use
    at `alpha`, with the audit's members as the suspect set and its held-out samples as the
    reference set. Every scorer is fitted on folds disjoint from the members and held-out samples
    it scores (protocol: docs/dataset-inference.md)."""
    return images_needed_curve(member_features, heldout_features, alpha, folds, seed, sizes, repeats, target_power)


def default_sizes(n_suspect: int, folds: int = DEFAULT_FOLDS) -> list[int]:
    """10, 20, 50, 100, 200, 500, … below n_suspect, then n_suspect itself (sizes below `folds`,
    which cannot fill every fold, are left out)."""
    out, base = [], 10
    while base < n_suspect:
        out.extend(m * base for m in (1, 2, 5) if m * base < n_suspect)
        base *= 10
    return [n for n in out if n >= folds] + [int(n_suspect)]


def _cross_fit(P: np.ndarray, U: np.ndarray, folds: int, rng: np.random.Generator):
    """Per fold: p-values, U statistics, AUCs; each image's (out-of-fold score, fold) for P and U."""
    from scipy.stats import mannwhitneyu

    import sklearn

    fP, fU = _fold_of(len(P), folds, rng), _fold_of(len(U), folds, rng)
    sP, sU = np.empty(len(P)), np.empty(len(U))
    ps, us, aucs = [], [], []
    for k in range(folds):
        X = np.concatenate([P[fP != k], U[fU != k]])
        y = np.r_[np.ones(int((fP != k).sum())), np.zeros(int((fU != k).sum()))]
        # Inputs were checked in `_features`; sklearn's own per-call checks cost more than the
        # fit on small folds, and the curve runs thousands of them.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            model = _fit_scorer(X, y)
            held = model.decision_function(np.concatenate([P[fP == k], U[fU == k]]))
        n_held = int((fP == k).sum())
        sP[fP == k] = a = held[:n_held]
        sU[fU == k] = b = held[n_held:]
        res = mannwhitneyu(a, b, alternative="greater")
        ps.append(float(res.pvalue))
        us.append(float(res.statistic))
        aucs.append(float(res.statistic) / (len(a) * len(b)))
    return ps, us, aucs, (sP, fP), (sU, fU)


def _fit_scorer(X: np.ndarray, y: np.ndarray):
    """CDI's scorer (arXiv 2411.12858; its cdi.py): logistic regression, max_iter 1000, on
    standardized features, fitted.
    Balanced class weights, since a subsampled P may be much smaller than U: the weights of
    class_weight="balanced", n / (2 n_c), given as sample weights (sklearn's helper that computes
    them cost a fifth of each small fit). An unconverged fit is still a fixed scorer for the
    held-out fold, so the test stays exact: its warning is muted."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    n1 = int(y.sum())
    w = np.where(y == 1, len(y) / (2 * n1), len(y) / (2 * (len(y) - n1)))
    model = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=1000))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y, logreg__sample_weight=w)


def _fold_of(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index of each of n items: a seeded permutation dealt round-robin (sizes differ by ≤ 1)."""
    f = np.empty(n, dtype=np.int64)
    f[rng.permutation(n)] = np.arange(n) % folds
    return f


def _combine(fold_p) -> float:
    """Bonferroni: valid whatever the dependence between the folds' p-values."""
    return float(min(1.0, len(fold_p) * min(fold_p)))


def _features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"{name} features must be a 2-D array [images, features], got shape {a.shape}")
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        i, j = bad[0]
        raise InputError(f"{name} features contain NaN/Inf (image {i}, feature {j})")
    return a


def check_settings(n_suspect: int, n_reference: int, alpha: float = 0.01, folds: int = DEFAULT_FOLDS,
                   repeats: int = DEFAULT_REPEATS) -> None:
    """InputError unless the test can run with these settings (callers check before costly work)."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InputError(f"folds must be an integer >= 2, got {folds!r}")
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise InputError(f"repeats must be a positive integer, got {repeats!r}")
    for name, n in (("suspect", n_suspect), ("reference", n_reference)):
        if n < folds:
            raise InputError(f"the {name} set has {n} images; {folds} folds need at least {folds}")


def _check(P: np.ndarray, U: np.ndarray, alpha: float, folds: int, repeats: int = 1) -> None:
    if P.shape[1] != U.shape[1]:
        raise InputError(f"suspect and reference features differ in width ({P.shape[1]} vs {U.shape[1]})")
    if P.shape[1] == 0:
        raise InputError("the feature matrices have no columns")
    check_settings(len(P), len(U), alpha, folds, repeats)


def _sizes(sizes, n_suspect: int, folds: int) -> list[int]:
    out = []
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not folds <= n <= n_suspect:
            raise InputError(f"curve sizes must be integers in [{folds}, {n_suspect}] (folds .. suspect images), "
                             f"got {n!r}")
        out.append(int(n))
    return sorted(set(out))
