"""One engine: the report's numbers are the public metric functions (docs/verdicts.md)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffaudit.audit.assemble import bank_columns
from diffaudit.audit.plan import AuditConfig, mask_bank
from diffaudit.audit.protocol import calibration_split, summarise_attack
from diffaudit.metrics import (auc_contrast, bootstrap_ci, clopper_pearson, holm, membership_metrics, metrics_matrix,
                               transfer)


def _stats(seed=0, n=120, T=6):
    cfg = AuditConfig(attacks=("sima",), t_max=T * 10, t_stride=10, k=40, k_sweep=(40,), n_random=3)
    bank = mask_bank(cfg)
    rng = np.random.default_rng(seed)
    member = rng.permutation(np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)])
    stats = np.exp(rng.normal(size=(n, T, len(bank))) - 0.4 * member[:, None, None]).astype(np.float32)
    return cfg, bank, member, stats


@pytest.mark.parametrize("protocol", ["paper", "calibrated"])
def test_membership_metrics_on_a_report_column_reproduce_the_report(protocol):
    cfg, bank, member, stats = _stats()
    cols = bank_columns(bank, cfg.k)
    cal = calibration_split(member, 0.5, 0)
    rows = summarise_attack(stats, member, cfg.grid("sima"), cols, 200, 17, protocol, cal)
    ev = cal[1] if protocol == "calibrated" else np.ones(len(member), bool)
    for label, setting in (("unfiltered", "none"), ("filtered", "influence"), ("reverse", "reverse")):
        for metric in ("auc", "asr", "tpr_at_1pct_fpr"):
            t = rows["t"][label][metric]
            s = -stats[:, cfg.grid("sima").index(t), cols[setting]].astype(np.float64)
            ref = membership_metrics(s[ev & member], s[ev & ~member])
            assert rows[label][metric] == pytest.approx(ref[metric], abs=1e-12)
            ci = bootstrap_ci(s[ev & member], s[ev & ~member], metric=metric, n_boot=200, seed=17)
            assert rows[label][metric + "_ci"] == [ci["low"], ci["high"]]  # exactly: one random stream


def test_each_control_gets_its_own_selection():
    """Calibrated: the random control's t maximises ITS mean calibration AUC over draws, not the filter's."""
    cfg, bank, member, stats = _stats(seed=4)
    cols = bank_columns(bank, cfg.k)
    cal = calibration_split(member, 0.5, 1)
    rows = summarise_attack(stats, member, cfg.grid("sima"), cols, 10, 0, "calibrated", cal)
    grid = cfg.grid("sima")
    for label, setting in (("random", "random"), ("channel_matched", "channel"), ("filtered", "influence")):
        js = cols[setting] if isinstance(cols[setting], list) else [cols[setting]]
        mean_auc = [np.mean([membership_metrics(-stats[cal[0] & member, ti, j], -stats[cal[0] & ~member, ti, j])["auc"]
                             for j in js]) for ti in range(len(grid))]
        assert rows["t"][label]["auc"] == grid[int(np.argmax(mean_auc))]


def _brute_delong(scores, member, w):
    """DeLong's variance from its definition: ψ over every (member, held-out) pair, per column."""
    S = np.asarray(scores, float)
    X, Y = S[member], S[~member]
    psi = (X[:, None, :] > Y[None, :, :]) + 0.5 * (X[:, None, :] == Y[None, :, :])  # [m, n, C]
    v10, v01 = psi.mean(1) @ w, psi.mean(0) @ w
    var = v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01)
    return float(psi.mean((0, 1)) @ w), float(np.sqrt(var))


def test_delong_contrast_matches_its_definition_with_ties():
    rng = np.random.default_rng(5)
    member = rng.random(70) < 0.45
    S = rng.integers(0, 6, size=(70, 4)).astype(float) + member[:, None] * np.array([0.0, 1.0, 0.5, 2.0])
    for w in ([1, -1, 0, 0], [1, -1 / 3, -1 / 3, -1 / 3], [0, 0, 0, 1]):
        got = auc_contrast(S, member, w)
        est, se = _brute_delong(S, member, np.asarray(w, float))
        assert got["estimate"] == pytest.approx(est, abs=1e-12)
        assert got["se"] == pytest.approx(se, rel=1e-10)
    a = auc_contrast(S, member, [0, 0, 0, 1])["estimate"]
    assert a == pytest.approx(membership_metrics(S[member, 3], S[~member, 3])["auc"], abs=1e-12)


def test_placements_and_aucs_equal_the_average_rank_form_bit_for_bit():
    """Counting by binary search (half-integers, exact) gives the very floats of scipy's average
    ranks: the numbers of reports made before the change stay identical."""
    from scipy.stats import rankdata

    from diffaudit.analysis.strata import auc_rows
    from diffaudit.metrics.delong import placements

    rng = np.random.default_rng(11)
    for it in range(200):
        n = int(rng.integers(3, 200))
        S = rng.normal(size=(n, 3)) if it % 2 else rng.integers(0, 4, size=(n, 3)).astype(float)
        y = np.arange(n) < int(rng.integers(1, n))
        rng.shuffle(y)
        m, h = int(y.sum()), int((~y).sum())
        r_all, r_mem, r_held = rankdata(S, axis=0), rankdata(S[y], axis=0), rankdata(S[~y], axis=0)
        v10, v01 = placements(S, y)
        assert np.array_equal(v10, (r_all[y] - r_mem) / h)
        assert np.array_equal(v01, 1.0 - (r_all[~y] - r_held) / m)
        auc = (r_all[y].sum(0) - m * (m + 1) / 2) / (m * h)
        assert np.array_equal(metrics_matrix(S, y, ("auc",))["auc"], auc)
        assert np.array_equal(auc_rows(S[y].T, S[~y].T), auc)  # the strata's rows: the same engine


def test_holm_matches_the_step_down_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(rng.integers(1, 8)) ** 2
        m = len(p)
        brute = np.empty(m)
        for i in range(m):  # adjusted p_i = max over the step-down prefix of (m - rank) p
            order = np.argsort(p, kind="stable")
            r = int(np.flatnonzero(order == i)[0])
            brute[i] = min(1.0, max((m - j) * p[order[j]] for j in range(r + 1)))
        assert np.allclose(holm(p), brute)
    assert np.isnan(holm([0.1, np.nan])[1]) and holm([0.1, np.nan])[0] == pytest.approx(0.1)


def test_threshold_transfer_counts_like_a_loop():
    rng = np.random.default_rng(2)
    cal_m, cal_h, ev_m, ev_h = rng.normal(1, 1, 300), rng.normal(0, 1, 300), rng.normal(1, 1, 250), rng.normal(0, 1, 400)
    r = transfer(cal_m, cal_h, ev_m, ev_h, 0.01)
    assert sum(x > r["threshold"] for x in cal_h) <= 3  # ≤ 1% of the calibration held-out flagged
    assert sum(x > r["threshold"] for x in cal_h) == 3  # and the smallest such threshold (no ties)
    assert r["fpr"] == sum(x > r["threshold"] for x in ev_h) / 400
    assert r["tpr"] == sum(x > r["threshold"] for x in ev_m) / 250
    lo, hi = clopper_pearson(int(r["tpr"] * 250), 250)
    assert r["tpr_ci"] == [lo, hi] and lo < r["tpr"] < hi


def test_grid_tpr_at_fpr_uses_the_exact_count_rule():
    """Exactly 1% FPR qualifies (FP·100 ≤ n); the grid agrees with the single-column function."""
    member = np.r_[np.ones(5, bool), np.zeros(100, bool)]
    for scores in itertools.islice((np.random.default_rng(s).integers(0, 30, 105).astype(float) for s in range(30)), 30):
        mm = metrics_matrix(scores[:, None], member)
        ref = membership_metrics(scores[member], scores[~member])
        for k in ("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"):
            assert mm[k][0] == pytest.approx(ref[k], abs=1e-12)
