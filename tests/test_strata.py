"""Distortion strata (Fig. 3) against a brute-force loop with sklearn's roc_auc_score."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from diffaudit.analysis.strata import auc_rows, distortion_strata, distortion_strata_over_t
from diffaudit.errors import InputError


def _data(n_m=60, n_h=50, n_t=3, seed=0):
    rng = np.random.default_rng(seed)
    md, hd = rng.gamma(2.0, size=n_m), rng.gamma(2.0, size=n_h)
    # Members more separable where distortion is high: shift grows with distortion.
    ms = rng.normal(size=(n_t, n_m)) + 0.4 * md[None] * np.arange(1, n_t + 1)[:, None] / n_t
    hs = rng.normal(size=(n_t, n_h))
    return ms, hs, md, hd


def _sk_auc(m, h):
    return roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(h))], np.r_[m, h])


def test_auc_rows_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    m, h = rng.integers(0, 5, size=(4, 30)).astype(float), rng.integers(0, 5, size=(4, 25)).astype(float)
    got = auc_rows(m, h)
    for i in range(4):
        assert got[i] == pytest.approx(_sk_auc(m[i], h[i]), abs=1e-12)


def test_strata_match_brute_force_loop():
    ms, hs, md, hd = _data()
    r = distortion_strata_over_t(ms, hs, md, hd, ts=[10, 20, 30], n_random=5, seed=3, keep_draws=True)
    allv = np.concatenate([md, hd])
    th = [np.quantile(allv, q) for q in (0.25, 0.5, 0.75)]
    assert r["thresholds"] == pytest.approx(th)

    def quart(d):  # brute force, one sample at a time
        return sum(d > x for x in th)

    for t in range(3):
        for q in range(4):
            mm = [ms[t, i] for i in range(len(md)) if quart(md[i]) == q]
            hh = [hs[t, i] for i in range(len(hd)) if quart(hd[i]) == q]
            assert r["n_members"][q] == len(mm) and r["n_heldout"][q] == len(hh)
            assert r["quartile_auc"][t][q] == pytest.approx(_sk_auc(mm, hh), abs=1e-12)
    # Random baseline: each draw has the stratum's counts, no repeats; mean/std recomputed with sklearn.
    assert len(r["draws"]) == 4 * 5
    for t in range(3):
        aucs = []
        for d in r["draws"]:
            q = d["stratum"]
            assert len(d["members"]) == r["n_members"][q] and len(set(d["members"])) == len(d["members"])
            assert len(d["heldout"]) == r["n_heldout"][q] and len(set(d["heldout"])) == len(d["heldout"])
            aucs.append(_sk_auc(ms[t, d["members"]], hs[t, d["heldout"]]))
        assert r["random_mean"][t] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert r["random_std"][t] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
        q0 = [a for a, d in zip(aucs, r["draws"]) if d["stratum"] == 0]
        assert r["random_quartile_mean"][t][0] == pytest.approx(np.mean(q0), abs=1e-12)
    # The planted effect: the top-distortion quartile beats the bottom one at the last t.
    assert r["quartile_auc"][2][3] > r["quartile_auc"][2][0] + 0.2
    assert r["notes"] == []


def test_single_t_and_determinism():
    ms, hs, md, hd = _data(n_t=1)
    a = distortion_strata(ms[0], hs[0], md, hd, seed=7)
    b = distortion_strata(ms[0], hs[0], md, hd, seed=7)
    assert a == b
    assert len(a["quartile_auc"]) == 4 and np.isfinite(a["random_mean"])
    full = distortion_strata_over_t(ms, hs, md, hd, seed=7)
    assert full["quartile_auc"][0] == a["quartile_auc"]


def test_stratum_without_heldout_is_nan_with_note():
    rng = np.random.default_rng(0)
    md = np.r_[rng.uniform(0, 1, 20), rng.uniform(10, 11, 20)]  # members only at high distortion
    hd = rng.uniform(0, 1, 40)
    ms, hs = rng.normal(size=40), rng.normal(size=40)
    r = distortion_strata(ms, hs, md, hd, n_random=3)
    assert np.isnan(r["quartile_auc"][3]) and r["n_heldout"][3] == 0
    assert any("stratum 4" in n and "0 held-out" in n for n in r["notes"])
    assert np.isfinite(r["quartile_auc"][0])


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_quantiles=1), dict(n_random=-1)],
)
def test_bad_arguments(kwargs):
    ms, hs, md, hd = _data(n_t=1)
    with pytest.raises(InputError):
        distortion_strata(ms[0], hs[0], md, hd, **kwargs)


def test_bad_shapes():
    ms, hs, md, hd = _data(n_t=2)
    with pytest.raises(InputError, match="disagree"):
        distortion_strata_over_t(ms, hs, md[:-1], hd)
    with pytest.raises(InputError, match="NaN"):
        distortion_strata_over_t(ms, hs, np.r_[md[:-1], np.nan], hd)
    with pytest.raises(InputError, match="1-D"):
        distortion_strata(ms, hs, md, hd)


def test_strata_finding_compares_quartiles_on_the_evaluation_fold():
    """Highest minus lowest distortion quartile on the evaluation fold: AUCs equal sklearn's on
    those subsets; the difference's SE is the two DeLong SEs in quadrature (disjoint samples)."""
    from diffaudit.audit.findings import strata_finding
    from diffaudit.metrics import auc_contrast

    rng = np.random.default_rng(3)
    n = 800
    member = rng.permutation(np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)])
    dist = rng.normal(size=n)
    ev = rng.random(n) < 0.5
    q = np.searchsorted(np.quantile(dist, [0.25, 0.5, 0.75]), dist)
    scores = rng.normal(size=n) + member * (q == 3) * 1.5  # only the top quartile leaks
    f = strata_finding(scores, member, ev, dist, "sima", 50, 0.5)
    top, low = ev & (q == 3), ev & (q == 0)
    a_top = roc_auc_score(member[top], scores[top])
    a_low = roc_auc_score(member[low], scores[low])
    assert f["estimate"] == pytest.approx(a_top - a_low, abs=1e-12)
    se = np.hypot(auc_contrast(scores[top], member[top], [1.0])["se"], auc_contrast(scores[low], member[low], [1.0])["se"])
    assert f["ci"][1] - f["ci"][0] == pytest.approx(2 * 1.959963984540054 * se, rel=1e-9)
    assert f["p_value"] < 1e-6 and f["direction"] == 1
    # A constant distortion has no strata; too few samples per quartile are refused, not judged.
    assert strata_finding(scores, member, ev, np.ones(n), "sima", 50, 0.5)["status"] == "not_applicable"
    small = np.r_[np.arange(60)]
    g = strata_finding(scores[small], member[small], ev[small], dist[small], "sima", 50, 0.5)
    assert g["status"] == "not_enough_samples" and "≥ 20" in g["reason"]
