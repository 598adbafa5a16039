"""Membership metrics vs scikit-learn and brute-force threshold loops; bootstrap vs explicit resampling."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from diffaudit.errors import InputError
from diffaudit.metrics.bootstrap import bootstrap_indices as _bootstrap_indices
from diffaudit.metrics import (bootstrap_ci, fpr_resolution_notes, membership_metrics,
                               paired_bootstrap_diff)


def brute_force(mem, held):
    """Every threshold (each distinct score and +inf), member iff score ≥ threshold."""
    mem, held = np.asarray(mem, float), np.asarray(held, float)
    best_asr, tpr1, tpr01 = 0.0, 0.0, 0.0
    for thr in np.r_[np.unique(np.r_[mem, held]), np.inf]:
        tp, fp = np.sum(mem >= thr), np.sum(held >= thr)
        tpr, fpr = tp / mem.size, fp / held.size
        best_asr = max(best_asr, 0.5 * (tpr + 1 - fpr))
        if fp * 100 <= held.size:
            tpr1 = max(tpr1, tpr)
        if fp * 1000 <= held.size:
            tpr01 = max(tpr01, tpr)
    return {"asr": best_asr, "tpr_at_1pct_fpr": tpr1, "tpr_at_0_1pct_fpr": tpr01}


def skl_auc(mem, held):
    return roc_auc_score(np.r_[np.ones(len(mem)), np.zeros(len(held))], np.r_[mem, held])


CASES = {
    "continuous": lambda r: (r.normal(1, 1, 300), r.normal(0, 1, 1200)),
    "ties": lambda r: (r.integers(0, 8, 150).astype(float), r.integers(-2, 6, 260).astype(float)),
    "unequal_small": lambda r: (r.normal(0.5, 1, 7), r.normal(0, 1, 40)),
    "separable": lambda r: (r.normal(10, 1, 50), r.normal(0, 1, 2000)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_membership_metrics_vs_sklearn_and_loop(case):
    mem, held = CASES[case](np.random.default_rng(1))
    got = membership_metrics(mem, held)
    assert got["auc"] == pytest.approx(skl_auc(mem, held), abs=1e-12)
    for key, val in brute_force(mem, held).items():
        assert got[key] == pytest.approx(val, abs=1e-12), key
    assert got["fpr"][0] == 0 and got["tpr"][-1] == 1 and np.all(np.diff(got["fpr"]) >= 0)
    assert got["n_member"] == len(mem) and got["n_heldout"] == len(held)


def test_members_are_the_positive_class():
    rng = np.random.default_rng(0)
    mem, held = rng.normal(3, 1, 1000), rng.normal(0, 1, 1000)
    m = membership_metrics(mem, held)
    assert m["auc"] > 0.95 and m["tpr_at_1pct_fpr"] > 0.5
    flipped = membership_metrics(held, mem)
    assert flipped["auc"] < 0.05 and flipped["tpr_at_1pct_fpr"] < 0.01


def test_torch_input_and_notes():
    mem, held = torch.randn(20) + 1, torch.randn(500)
    m = membership_metrics(mem, held)
    assert m["auc"] == pytest.approx(skl_auc(mem.numpy(), held.numpy()), abs=1e-12)
    assert len(m["notes"]) == 1 and "tpr_at_0_1pct_fpr" in m["notes"][0]
    assert len(fpr_resolution_notes(50)) == 2 and fpr_resolution_notes(1000) == []


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [[0.1, 0.2]], ["a"], [np.inf]])
def test_bad_scores(bad):
    with pytest.raises(InputError):
        membership_metrics(bad, [0.0, 1.0])
    with pytest.raises(InputError):
        bootstrap_ci([0.0, 1.0], bad)


def _replicates(mem, held, n_boot, seed, fn):
    out = []
    for im, ih in _bootstrap_indices(len(mem), len(held), n_boot, seed):
        out += [fn(im[b], ih[b]) for b in range(im.shape[0])]
    return np.array(out)


@pytest.mark.parametrize("metric", ["auc", "asr", "tpr_at_1pct_fpr"])
def test_bootstrap_ci_matches_explicit_resampling(metric):
    rng = np.random.default_rng(2)
    mem, held = rng.integers(0, 10, 60).astype(float) + 1, rng.integers(0, 10, 150).astype(float)
    got = bootstrap_ci(mem, held, metric=metric, n_boot=200, level=0.9, seed=5)

    def one(im, ih):
        if metric == "auc":
            return skl_auc(mem[im], held[ih])
        return brute_force(mem[im], held[ih])[metric]

    reps = _replicates(mem, held, 200, 5, one)
    lo, hi = np.quantile(reps, [0.05, 0.95])
    assert got["low"] == pytest.approx(lo, abs=1e-12) and got["high"] == pytest.approx(hi, abs=1e-12)
    assert got["std"] == pytest.approx(reps.std(ddof=1), abs=1e-12)
    assert got["estimate"] == pytest.approx(membership_metrics(mem, held)[metric], abs=1e-12)
    assert got["low"] <= got["estimate"] <= got["high"]


def test_bootstrap_columns_in_row_blocks_equal_explicit_resampling(monkeypatch):
    """Every replicate of every column, evaluated in blocks of a few rows, equals sklearn and
    the brute-force loop on the explicitly resampled scores; blocking changes no bit."""
    from diffaudit.metrics import bootstrap

    rng = np.random.default_rng(4)
    member = np.zeros(70, bool)
    member[rng.permutation(70)[:30]] = True
    S = np.c_[rng.normal(size=70), rng.integers(0, 4, 70).astype(float)]  # the second column has ties
    whole = bootstrap.bootstrap_columns(S, member, 60, seed=8)
    monkeypatch.setattr(bootstrap, "BLOCK_ELEMS", 3 * 71)  # blocks of 3 rows or so
    blocked = bootstrap.bootstrap_columns(S, member, 60, seed=8)
    assert all(np.array_equal(whole[k], blocked[k]) for k in whole)
    for j in range(2):
        mem, held = S[member, j], S[~member, j]
        reps = _replicates(mem, held, 60, 8, lambda im, ih: [skl_auc(mem[im], held[ih]),
                                                             *brute_force(mem[im], held[ih]).values()])
        for col, key in enumerate(("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr")):
            np.testing.assert_allclose(blocked[key][:, j], reps[:, col], rtol=0, atol=1e-12)


def test_paired_bootstrap_matches_explicit_joint_resampling():
    rng = np.random.default_rng(3)
    base_m, base_h = rng.normal(0.6, 1, 80), rng.normal(0, 1, 120)
    a_m, a_h = base_m + 0.3 * rng.normal(size=80), base_h + 0.3 * rng.normal(size=120)
    b_m, b_h = base_m + 0.3 * rng.normal(size=80), base_h + 0.3 * rng.normal(size=120)
    got = paired_bootstrap_diff(a_m, a_h, b_m, b_h, n_boot=150, seed=9)
    reps = _replicates(a_m, a_h, 150, 9, lambda im, ih: skl_auc(a_m[im], a_h[ih]) - skl_auc(b_m[im], b_h[ih]))
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert got["low"] == pytest.approx(lo, abs=1e-12) and got["high"] == pytest.approx(hi, abs=1e-12)
    assert got["estimate"] == pytest.approx(skl_auc(a_m, a_h) - skl_auc(b_m, b_h), abs=1e-12)
    # pairing keeps the shared component out: the paired CI is narrower than unpaired ones combined
    ua = bootstrap_ci(a_m, a_h, n_boot=150, seed=1)["std"]
    ub = bootstrap_ci(b_m, b_h, n_boot=150, seed=2)["std"]
    assert got["std"] < np.hypot(ua, ub)
    same = paired_bootstrap_diff(a_m, a_h, a_m, a_h, n_boot=50)
    assert same["low"] == same["high"] == same["estimate"] == 0 and same["p_value"] == 1
    with pytest.raises(InputError, match="equal lengths"):
        paired_bootstrap_diff(a_m, a_h, b_m[:-1], b_h)


def test_bootstrap_argument_errors():
    with pytest.raises(InputError, match="metric"):
        bootstrap_ci([1.0], [0.0], metric="f1")
    with pytest.raises(InputError, match="level"):
        bootstrap_ci([1.0], [0.0], level=1.5)
    with pytest.raises(InputError, match="n_boot"):
        bootstrap_ci([1.0], [0.0], n_boot=1)
