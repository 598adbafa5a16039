"""From stored statistics to metrics: the metric grid, the two protocols and bootstrap CIs.

Columns of many (t, mask) cells are scored at once: AUC from ranks (ties as scikit-learn), and
ASR / TPR at fixed FPR from one sort per column over the full ROC (no dropped points, so "the
largest threshold with FPR ≤ target" is exact). `diffaudit.metrics.membership_metrics` is the
one-column reference these are tested against.

Protocols (SPEC §1):
- "paper": each metric takes its best t over the grid, chosen with the labels on all samples
  (optimistic: what the papers report).
- "calibrated": t is chosen by AUC on a calibration fold (stratified, seeded) and every metric is
  measured on the remaining samples: an honest estimate.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ..errors import InputError

METRICS = ("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr")
_FPR_TARGETS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001}


def metrics_matrix(scores: np.ndarray, member: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of every column of `scores` [N, C] (higher = member) -> {metric: [C]}."""
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim == 1:
        S = S[:, None]
    y = np.asarray(member, dtype=bool)
    if not np.isfinite(S).all():
        raise InputError("scores contain NaN/Inf")
    P, Nn = int(y.sum()), int((~y).sum())
    if P == 0 or Nn == 0:
        raise InputError("need at least one member and one held-out sample")
    ranks = rankdata(S, axis=0)  # average ranks for ties: the Mann-Whitney AUC == sklearn's
    auc = (ranks[y].sum(0) - P * (P + 1) / 2) / (P * Nn)

    order = np.argsort(-S, axis=0, kind="stable")
    s_sorted = np.take_along_axis(S, order, 0)
    y_sorted = y[order]
    tpr = np.cumsum(y_sorted, 0) / P
    fpr = np.cumsum(~y_sorted, 0) / Nn
    last = np.ones_like(s_sorted, dtype=bool)  # a threshold sits after the last of each tie group
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    out = {"auc": auc}
    out["asr"] = np.maximum(np.where(last, 0.5 * (tpr + 1 - fpr), -np.inf).max(0), 0.5)
    for name, target in _FPR_TARGETS.items():
        out[name] = np.where(last & (fpr <= target + 1e-12), tpr, 0.0).max(0)
    return out


def stratified_indices(member: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap resample drawn within members and within held-out (class counts kept)."""
    pos, neg = np.flatnonzero(member), np.flatnonzero(~member)
    return np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])


def bootstrap_columns(scores: np.ndarray, member: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Metrics of each column on n_boot paired resamples -> {metric: [n_boot, C]}.

    The same resample serves every column, so differences between columns are paired.
    """
    rng = np.random.default_rng(seed)
    S = np.asarray(scores, dtype=np.float64)
    out = {m: np.empty((n_boot, S.shape[1])) for m in METRICS}
    for b in range(n_boot):
        idx = stratified_indices(member, rng)
        mm = metrics_matrix(S[idx], member[idx])
        for m in METRICS:
            out[m][b] = mm[m]
    return out


def ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    a = (1 - level) / 2
    return [float(np.quantile(samples, a)), float(np.quantile(samples, 1 - a))]


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


def summarise_attack(stats: np.ndarray, member: np.ndarray, grid: list[int], cols: dict, n_boot: int,
                     seed: int, protocol: str, calibration: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """One attack's row of the Table-1-style summary under one protocol.

    stats: [N, T, M] statistics (lower = member); cols: {"none": j, "influence": j, "reverse": j,
    "random": [j...], "channel": [j...]} column indices of the mask bank at the default k.
    """
    if protocol == "calibrated":
        cal, ev = calibration
    else:
        cal = ev = np.ones(len(member), dtype=bool)

    # Scores (= −stats) are taken one [N, T] or [N] slice at a time: negating or indexing the
    # whole [N, T, M] array would hold a second copy of the audit's largest array.
    def per_t(col):  # metrics over t for one mask column, on the selection fold
        return metrics_matrix(-stats[:, :, col][cal], member[cal])

    chosen = {}  # setting -> {metric: t index}
    for setting in ("none", "influence", "reverse"):
        mm = per_t(cols[setting])
        if protocol == "paper":
            chosen[setting] = {m: int(np.argmax(mm[m])) for m in METRICS}
        else:
            ti = int(np.argmax(mm["auc"]))
            chosen[setting] = {m: ti for m in METRICS}
    ti_f = chosen["influence"]["auc"]
    ti_u = chosen["none"]["auc"]

    # Columns evaluated on the evaluation fold, with one shared bootstrap (paired differences).
    y_ev = member[ev]
    names, columns = [], []
    for setting in ("none", "influence", "reverse"):
        for m in METRICS:
            names.append((setting, m))
            columns.append(-stats[:, chosen[setting][m], cols[setting]][ev])
    ctrl = {}
    for setting in ("random", "channel"):
        ctrl[setting] = (len(columns), len(cols[setting]))
        columns.extend(-stats[:, ti_f, j][ev] for j in cols[setting])
    C = np.stack(columns, axis=1)
    point = metrics_matrix(C, y_ev)
    boot = bootstrap_columns(C, y_ev, n_boot, seed)

    label = {"none": "unfiltered", "influence": "filtered", "reverse": "reverse"}
    rows: dict = {"t": {label[s]: {m: grid[chosen[s][m]] for m in METRICS} for s in chosen}}
    for j, (setting, m) in enumerate(names):
        r = rows.setdefault(label[setting], {})
        r[m] = float(point[m][j])
        r[m + "_ci"] = ci(boot[m][:, j])
    for setting, (start, n) in ctrl.items():
        r = rows.setdefault("random" if setting == "random" else "channel_matched", {})
        for m in METRICS:
            draws = point[m][start:start + n]
            r[m] = float(draws.mean())
            r[m + "_std"] = float(draws.std(ddof=1)) if n > 1 else 0.0
    rows["random"]["t"] = rows["channel_matched"]["t"] = grid[ti_f]

    def col(setting, m):
        return names.index((setting, m))

    for other, key in (("none", "diff_filtered_unfiltered"), ("random", "diff_filtered_random"),
                       ("channel", "diff_filtered_channel_matched")):
        d = {}
        for m in METRICS:
            f_pt, f_bt = point[m][col("influence", m)], boot[m][:, col("influence", m)]
            if other == "none":
                o_pt, o_bt = point[m][col("none", m)], boot[m][:, col("none", m)]
            else:
                start, n = ctrl[other]
                o_pt, o_bt = point[m][start:start + n].mean(), boot[m][:, start:start + n].mean(1)
            d[m] = float(f_pt - o_pt)
            d[m + "_ci"] = ci(f_bt - o_bt)
        rows[key] = d
    d = {}
    for m in METRICS:  # paired, like the filter's differences: reverse − unfiltered on the same resamples
        r_j, u_j = col("reverse", m), col("none", m)
        d[m] = float(point[m][r_j] - point[m][u_j])
        d[m + "_ci"] = ci(boot[m][:, r_j] - boot[m][:, u_j])
    rows["diff_reverse_unfiltered"] = d
    rows["n_eval"] = {"members": int(y_ev.sum()), "heldout": int((~y_ev).sum())}
    rows["t_unfiltered_auc"] = grid[ti_u]
    return rows
