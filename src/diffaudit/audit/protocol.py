"""The two protocols of the headline summary (docs/verdicts.md).

- "paper": every row (unfiltered, filtered, reverse, random, channel-matched) takes, per metric,
  its own best t over the grid, chosen with the labels on all samples — what the papers'
  tables report (arXiv 2511.20592 §4, Table 1). Optimistic; the report draws no verdict from it.
- "calibrated": every row takes the t at which ITS OWN AUC is best on a calibration fold
  (stratified, seeded; the random controls by the mean AUC of their draws), and every metric is
  measured on the other samples. The verdicts are judged here: nothing evaluated on the
  evaluation fold was chosen with its labels, and each control gets the same selection as the
  treatment.

Single-row CIs are the stratified percentile bootstrap of :mod:`diffaudit.metrics` (the same
replicates for every row, so paired). AUC differences under the calibrated protocol come from
DeLong's variance of the contrast (:func:`diffaudit.metrics.auc_contrast`), which resamples the
samples analytically with the mask draws inside the contrast; they carry the p-values the
verdicts use. Thresholds for 1% / 0.1% FPR are also fitted on the calibration fold and applied
to the evaluation fold (:func:`diffaudit.metrics.transfer`).

An unmasked attack (a scalar statistic: PFAMI) is summarised with its unfiltered row only
(``settings=("none",)``); a feature attack (GSA) by :func:`summarise_classifier`, under the
calibrated protocol only: its classifier is fitted on the calibration fold (docs/attacks.md).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..metrics import METRICS, auc_contrast, bootstrap_columns, interval, metrics_matrix, transfer

SETTINGS = ("none", "influence", "reverse", "random", "channel")
LABEL = {"none": "unfiltered", "influence": "filtered", "reverse": "reverse", "random": "random",
         "channel": "channel_matched"}
DIFFERENCES = {  # key -> (treatment, control)
    "diff_filtered_unfiltered": ("influence", "none"),
    "diff_filtered_random": ("influence", "random"),
    "diff_filtered_channel_matched": ("influence", "channel"),
    "diff_reverse_unfiltered": ("reverse", "none"),
}
FPR_LEVELS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001}


def calibration_split(member: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (calibration, evaluation), stratified by membership."""
    rng = np.random.default_rng([seed, 7])
    cal = np.zeros(len(member), dtype=bool)
    for cls in (True, False):
        idx = np.flatnonzero(member == cls)
        n = int(round(fraction * len(idx)))
        if n < 1 or n >= len(idx):
            raise InputError("too few samples for a calibration fold; lower calibration_fraction or add samples")
        cal[rng.permutation(idx)[:n]] = True
    return cal, ~cal


def _columns(cols: dict, setting: str) -> list[int]:
    c = cols[setting]
    return list(c) if isinstance(c, (list, tuple)) else [c]


def select_t(stats: np.ndarray, member: np.ndarray, sel: np.ndarray, columns: list[int], by_metric: bool) -> dict:
    """{metric: t index} maximising the row's metric (mean over its columns) on the samples `sel`."""
    want = METRICS if by_metric else ("auc",)
    S = -stats[:, :, columns][sel]  # [n, T, J] (J columns of M, never the whole array): one call
    n, T, J = S.shape
    mm = metrics_matrix(S.reshape(n, T * J), member[sel], want)
    mean = {m: np.mean(mm[m].reshape(T, J).T, axis=0) for m in want}
    if by_metric:
        return {m: int(np.argmax(mean[m])) for m in METRICS}
    ti = int(np.argmax(mean["auc"]))
    return {m: ti for m in METRICS} | {"_auc_at_t": float(mean["auc"][ti])}


def summarise_attack(stats: np.ndarray, member: np.ndarray, grid: list[int], cols: dict, n_boot: int,
                     seed: int, protocol: str, calibration: tuple[np.ndarray, np.ndarray] | None = None,
                     settings: tuple[str, ...] = SETTINGS) -> dict:
    """One attack's row of the Table-1-style summary under one protocol.

    stats: [N, T, M] statistics (lower = member); cols: {"none": j, "influence": j, "reverse": j,
    "random": [j...], "channel": [j...]} column indices of the mask bank at the default k.
    `settings`: the rows to summarise (an unmasked attack: ("none",), whose summary then has
    the unfiltered row only and no differences).
    """
    if protocol not in ("paper", "calibrated"):
        raise InputError(f"protocol must be 'paper' or 'calibrated', got {protocol!r}")
    if not settings or any(s not in SETTINGS for s in settings) or "none" not in settings:
        raise InputError(f"settings must be among {SETTINGS} and include 'none', got {settings!r}")
    cal, ev = calibration if protocol == "calibrated" else (np.ones(len(member), bool),) * 2
    chosen = {s: select_t(stats, member, cal, _columns(cols, s), by_metric=protocol == "paper") for s in settings}

    # Evaluation columns (one [N] slice each: the audit's [N, T, M] array is never copied whole),
    # deduplicated, with one shared bootstrap so that every difference is paired.
    y_ev = member[ev]
    keys: dict[tuple[int, int], int] = {}
    columns = []
    for s in settings:
        for m in METRICS:
            for j in _columns(cols, s):
                if (chosen[s][m], j) not in keys:
                    keys[(chosen[s][m], j)] = len(columns)
                    columns.append(-stats[:, chosen[s][m], j][ev])
    C = np.stack(columns, axis=1)
    point = metrics_matrix(C, y_ev)
    boot = bootstrap_columns(C, y_ev, n_boot, seed)

    def idx(s, m):
        return [keys[(chosen[s][m], j)] for j in _columns(cols, s)]

    rows: dict = {"t": {}}
    for s in settings:
        r = rows[LABEL[s]] = {}
        rows["t"][LABEL[s]] = {m: grid[chosen[s][m]] for m in METRICS}
        for m in METRICS:
            r[m] = float(point[m][idx(s, m)].mean())
            r[m + "_ci"] = interval(boot[m][:, idx(s, m)].mean(1))
            if len(idx(s, m)) > 1:  # spread over the mask draws (descriptive; the CI is the uncertainty)
                r[m + "_draw_std"] = float(point[m][idx(s, m)].std(ddof=1))
        if len(_columns(cols, s)) > 1:
            r["draws"] = len(_columns(cols, s))
        r["t"] = grid[chosen[s]["auc"]]

    for key, (a, b) in DIFFERENCES.items():
        if a not in settings or b not in settings:
            continue
        d = {}
        for m in METRICS:
            d[m] = float(point[m][idx(a, m)].mean() - point[m][idx(b, m)].mean())
            if not (m == "auc" and protocol == "calibrated"):  # the calibrated AUC CI is DeLong's, below
                d[m + "_ci"] = interval(boot[m][:, idx(a, m)].mean(1) - boot[m][:, idx(b, m)].mean(1))
        if protocol == "calibrated":  # the verdicts' test: DeLong on the evaluation fold
            ia, ib = idx(a, "auc"), idx(b, "auc")
            w = np.zeros(C.shape[1])
            np.add.at(w, ia, 1.0 / len(ia))
            np.add.at(w, ib, -1.0 / len(ib))
            test = auc_contrast(C, y_ev, w)
            d["auc_ci"] = test["ci"]
            d.update(auc_se=test["se"], p_two_sided=test["p_two_sided"], test="DeLong")
        rows[key] = d

    if protocol == "calibrated":
        rows["selection_auc"] = {LABEL[s]: chosen[s]["_auc_at_t"] for s in settings}
        rows["threshold_transfer"] = {}
        for s in (s for s in ("none", "influence") if s in settings):
            j, ti = _columns(cols, s)[0], chosen[s]["auc"]
            score = -stats[:, ti, j]
            rows["threshold_transfer"][LABEL[s]] = {
                m: transfer(score[cal & member], score[cal & ~member], score[ev & member], score[ev & ~member], f)
                for m, f in FPR_LEVELS.items()}
    rows["n_eval"] = {"members": int(y_ev.sum()), "heldout": int((~y_ev).sum())}
    rows["t_unfiltered_auc"] = grid[chosen["none"]["auc"]]
    return rows


def summarise_classifier(features: np.ndarray, member: np.ndarray, t: int, n_boot: int, seed: int,
                         calibration: tuple[np.ndarray, np.ndarray],
                         classifier_seed: int = 0) -> tuple[dict, np.ndarray]:
    """A feature attack's unfiltered row under the calibrated protocol, and its scores.

    The classifier (:func:`diffaudit.attacks.classifier.classifier_scores`, gradient-boosted trees)
    is fitted on the calibration fold's features and labels and scores the evaluation fold, where
    AUC, ASR and TPR@FPR and their bootstrap CIs are measured as for every other row (GSA: Pang
    et al., arXiv 2308.06405 §4, with the calibration fold in place of shadow models). Returns the
    row and the scores [N] (P(member); NaN on the calibration fold).
    """
    from ..attacks.classifier import classifier_scores

    cal, ev = calibration
    F = np.asarray(features)
    scores = np.full(len(member), np.nan)
    scores[ev] = classifier_scores(F[cal], member[cal], F[ev], seed=classifier_seed)
    y_ev = member[ev]
    C = scores[ev][:, None]
    point = metrics_matrix(C, y_ev)
    boot = bootstrap_columns(C, y_ev, n_boot, seed)
    un = {}
    for m in METRICS:
        un[m] = float(point[m][0])
        un[m + "_ci"] = interval(boot[m][:, 0])
    un["t"] = int(t)
    rows = {"t": {"unfiltered": {m: int(t) for m in METRICS}}, "unfiltered": un,
            "n_eval": {"members": int(y_ev.sum()), "heldout": int((~y_ev).sum())}, "t_unfiltered_auc": int(t)}
    return rows, scores
