"""Distortion strata: membership AUC inside each quantile of local distortion (arXiv 2511.20592 §4.4, Fig. 3).

Quantile thresholds are computed jointly over members ∪ held-out; each stratum's AUC uses only
the members and held-out samples whose distortion falls in it. The baseline is a "random"
stratum: `n_random` random subsets with the same member and held-out counts as each stratum,
reported as mean ± std (the paper's shaded band). A stratum with no member or no held-out
sample has no AUC: NaN, and a note says why.

Scores follow the house convention: higher = more likely a member (score = −statistic).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from ..metrics.grid import count_below

__all__ = ["distortion_strata", "distortion_strata_over_t", "stratum_index", "auc_rows"]


def auc_rows(member_scores: np.ndarray, heldout_scores: np.ndarray) -> np.ndarray:
    """AUC of every row at once ([..., m] vs [..., h] → [...]); equals sklearn's roc_auc_score.

    The Mann–Whitney U of the members (each member's count of held-out scores below it, ties
    half: `metrics.grid.count_below`, the metric engine's AUC) divided by m·h is the area under
    the ROC curve, ties counted one half — the trapezoidal ROC area.
    """
    m, h = member_scores.shape[-1], heldout_scores.shape[-1]
    lead = member_scores.shape[:-1]
    if m == 0 or h == 0:
        return np.full(lead, np.nan)
    if heldout_scores.shape[:-1] != lead:
        raise InputError(f"member and held-out scores need the same leading shape, got {lead} and "
                         f"{heldout_scores.shape[:-1]}")
    M = np.asarray(member_scores, dtype=np.float64).reshape(-1, m).T  # [m, rows]
    H = np.asarray(heldout_scores, dtype=np.float64).reshape(-1, h).T
    return (count_below(H, M).sum(axis=0) / (m * h)).reshape(lead)


def stratum_index(distortion: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Stratum of each value: 0 for d ≤ thresholds[0], i for thresholds[i-1] < d ≤ thresholds[i]."""
    return np.searchsorted(thresholds, distortion, side="left")


def _as_2d(scores, name: str) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise InputError(f"{name} must be [N] or [T, N] scores, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN/Inf")
    return a


def _as_1d(d, name: str) -> np.ndarray:
    a = np.asarray(d, dtype=np.float64)
    if a.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of per-sample distortions, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN/Inf")
    return a


def distortion_strata_over_t(
    member_scores,
    heldout_scores,
    member_dist,
    heldout_dist,
    ts: Sequence[int] | None = None,
    n_quantiles: int = 4,
    n_random: int = 10,
    seed: int = 0,
    keep_draws: bool = False,
) -> dict:
    """Strata AUC for many timesteps at once (rows of `member_scores` [T, m], `heldout_scores` [T, h]).

    The strata and the random subsets are drawn once and shared by every t, so the curves over t
    are comparable (as in Fig. 3). Returns a JSON-able dict:
      t, thresholds (n_quantiles − 1), n_members / n_heldout per stratum,
      quartile_auc [T][n_quantiles] (NaN where a stratum lacks one class),
      random_mean / random_std [T] (pooled over all strata's matched draws: the band),
      random_quartile_mean / random_quartile_std [T][n_quantiles] (draws matched to one stratum),
      notes (why a stratum is NaN), and with keep_draws the subsets' indices.
    """
    ms, hs = _as_2d(member_scores, "member_scores"), _as_2d(heldout_scores, "heldout_scores")
    md, hd = _as_1d(member_dist, "member_dist"), _as_1d(heldout_dist, "heldout_dist")
    if ms.shape[0] != hs.shape[0]:
        raise InputError(f"member_scores has {ms.shape[0]} timesteps but heldout_scores has {hs.shape[0]}")
    if ms.shape[1] != md.size or hs.shape[1] != hd.size:
        raise InputError(
            f"scores and distortions disagree in length: members {ms.shape[1]} vs {md.size}, "
            f"held-out {hs.shape[1]} vs {hd.size}"
        )
    if md.size == 0 or hd.size == 0:
        raise InputError("distortion strata need at least one member and one held-out sample")
    if int(n_quantiles) < 2:
        raise InputError(f"n_quantiles must be >= 2, got {n_quantiles}")
    if int(n_random) < 0:
        raise InputError(f"n_random must be >= 0, got {n_random}")
    n_t = ms.shape[0]
    ts = list(range(n_t)) if ts is None else [int(t) for t in ts]
    if len(ts) != n_t:
        raise InputError(f"ts has {len(ts)} entries but the scores have {n_t} timesteps")

    # Joint thresholds over members ∪ held-out (the paper: "through a joint set").
    qs = np.arange(1, n_quantiles) / n_quantiles
    thresholds = np.quantile(np.concatenate([md, hd]), qs)
    m_idx, h_idx = stratum_index(md, thresholds), stratum_index(hd, thresholds)

    quartile_auc = np.full((n_t, n_quantiles), np.nan)
    rand_q_mean = np.full((n_t, n_quantiles), np.nan)
    rand_q_std = np.full((n_t, n_quantiles), np.nan)
    pooled = []  # AUCs [T] of every random draw, all strata
    notes, draws = [], []
    n_m = [int((m_idx == q).sum()) for q in range(n_quantiles)]
    n_h = [int((h_idx == q).sum()) for q in range(n_quantiles)]
    rng = np.random.default_rng(seed)
    for q in range(n_quantiles):
        if n_m[q] == 0 or n_h[q] == 0:
            notes.append(
                f"stratum {q + 1} of {n_quantiles} has {n_m[q]} member(s) and {n_h[q]} held-out "
                "sample(s): no AUC (NaN)"
            )
            continue
        quartile_auc[:, q] = auc_rows(ms[:, m_idx == q], hs[:, h_idx == q])
        draw_aucs = []
        for _ in range(int(n_random)):
            # Same counts as the stratum, drawn from all members / all held-out without replacement.
            mi = rng.choice(md.size, size=n_m[q], replace=False)
            hi = rng.choice(hd.size, size=n_h[q], replace=False)
            draw_aucs.append(auc_rows(ms[:, mi], hs[:, hi]))
            if keep_draws:
                draws.append({"stratum": q, "members": mi.tolist(), "heldout": hi.tolist()})
        if draw_aucs:
            a = np.stack(draw_aucs, axis=1)  # [T, n_random]
            rand_q_mean[:, q] = a.mean(axis=1)
            rand_q_std[:, q] = a.std(axis=1, ddof=1) if a.shape[1] > 1 else 0.0
            pooled.append(a)
    if pooled:
        p = np.concatenate(pooled, axis=1)
        rand_mean, rand_std = p.mean(axis=1), (p.std(axis=1, ddof=1) if p.shape[1] > 1 else np.zeros(n_t))
    else:
        rand_mean = rand_std = np.full(n_t, np.nan)

    out = {
        "t": ts,
        "n_quantiles": int(n_quantiles),
        "thresholds": thresholds.tolist(),
        "n_members": n_m,
        "n_heldout": n_h,
        "quartile_auc": quartile_auc.tolist(),
        "random_mean": np.asarray(rand_mean).tolist(),
        "random_std": np.asarray(rand_std).tolist(),
        "random_quartile_mean": rand_q_mean.tolist(),
        "random_quartile_std": rand_q_std.tolist(),
        "n_random": int(n_random),
        "seed": int(seed),
        "notes": notes,
    }
    if keep_draws:
        out["draws"] = draws
    return out


def distortion_strata(
    member_scores,
    heldout_scores,
    member_dist,
    heldout_dist,
    n_quantiles: int = 4,
    n_random: int = 10,
    seed: int = 0,
    keep_draws: bool = False,
) -> dict:
    """Strata AUC at one timestep (1-D scores); the same fields as the over-t helper, without the T axis."""
    ms, hs = np.asarray(member_scores), np.asarray(heldout_scores)
    if ms.ndim != 1 or hs.ndim != 1:
        raise InputError(
            f"distortion_strata takes 1-D scores for one t (got {ms.shape} and {hs.shape}); "
            "use distortion_strata_over_t for many"
        )
    r = distortion_strata_over_t(
        ms[None], hs[None], member_dist, heldout_dist, ts=None,
        n_quantiles=n_quantiles, n_random=n_random, seed=seed, keep_draws=keep_draws,
    )
    r.pop("t")
    for key in ("quartile_auc", "random_quartile_mean", "random_quartile_std", "random_mean", "random_std"):
        r[key] = r[key][0]
    return r
