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


def test_strata_finding_verdicts_follow_the_band():
    """'shows' > 2 std above the random band; 'does not show' only > 2 std below it at every t."""
    from diffaudit.audit.findings import strata_finding

    def finding(top, band_std=0.01):
        q = [[0.80, 0.80, 0.80, x] for x in top]
        s = {"t": [10, 20], "quartile_auc": q, "random_mean": [0.80, 0.80], "random_std": [band_std, band_std]}
        return strata_finding({"sima": s}, "sima")["shows"]

    assert finding([0.85, 0.79]) is True  # +5 std at t = 10
    assert finding([0.795, 0.79]) is None  # reversed order, but inside the band: noise
    assert finding([0.81, 0.70]) is None  # +1 std at best
    assert finding([0.75, 0.70]) is False  # below the band by > 2 std at every t
