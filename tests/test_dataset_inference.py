"""Dataset inference (docs/dataset-inference.md): the test keeps its level on null data, its fold
p-values match a hand-written computation, it rejects a planted shift with a curve that falls as
the shift grows, the features are the stored statistics, and `diffaudit dataset-test` runs end to
end on a tiny model.
"""
import json
import re

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, kstest, norm

from diffaudit.analysis.dataset_features import statistic_features
from diffaudit.analysis.dataset_inference import (dataset_test, default_sizes, detection_curve,
                                                  images_needed_curve)
from diffaudit.errors import InputError

N_NULL, N_IMG, DIM = 500, 60, 8


def _null_pair(seed, n=N_IMG, d=DIM):
    g = np.random.default_rng(10_000 + seed)
    return g.standard_normal((n, d)), g.standard_normal((n, d))


def _shifted_pair(seed, shift, n, d=DIM):
    """Suspect images with every statistic lower by `shift` std (log scale), as members' are."""
    g = np.random.default_rng(20_000 + seed)
    return g.standard_normal((n, d)) - shift, g.standard_normal((n, d))


def _at_most(k: int, n: int, level: float) -> bool:
    """k rejections of n are consistent with a rate <= level (one-sided binomial test at 1 %)."""
    return binomtest(k, n, level, alternative="greater").pvalue >= 0.01


@pytest.fixture(scope="module")
def null_runs():
    """500 independent null data sets (P and U both N(0, I)): combined and per-fold p-values."""
    p, folds = [], []
    for s in range(N_NULL):
        r = dataset_test(*_null_pair(s), alpha=0.05, seed=s, curve=False)
        p.append(r.p_value)
        folds.append(r.fold_p_values)
    return np.array(p), np.array(folds)


def test_level_under_the_null(null_runs):
    p, _ = null_runs
    k = int((p < 0.05).sum())
    assert _at_most(k, N_NULL, 0.05), f"{k}/{N_NULL} rejections at level 0.05"


def test_fold_combination_is_valid(null_runs):
    """Each fold's test is exact (its p-values uniform); the Bonferroni merge is super-uniform at
    every level, although the folds' p-values are dependent."""
    p, folds = null_runs
    for k in range(folds.shape[1]):
        assert kstest(folds[:, k], "uniform").pvalue > 0.01
    for level in (0.01, 0.05, 0.1, 0.2, 0.5):
        assert _at_most(int((p <= level).sum()), N_NULL, level), level
    # The dependence the merge guards against: the two folds' p-values move together.
    assert np.corrcoef(norm.isf(folds[:, 0]), norm.isf(folds[:, 1]))[0, 1] > 0.1


def test_fold_p_values_match_hand_computation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    P, U = _shifted_pair(0, 0.3, 41)
    r = dataset_test(P, U[:37], alpha=0.01, folds=3, seed=5, curve=False)
    U = U[:37]
    assert sorted(np.bincount(r.suspect_folds)) == [13, 14, 14]  # stratified, sizes within 1
    assert sorted(np.bincount(r.reference_folds)) == [12, 12, 13]
    for k in range(3):
        tr_p, tr_u = r.suspect_folds != k, r.reference_folds != k
        m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
        m.fit(np.r_[P[tr_p], U[tr_u]], np.r_[np.ones(tr_p.sum()), np.zeros(tr_u.sum())])
        a, b = m.decision_function(P[~tr_p]), m.decision_function(U[~tr_u])
        np.testing.assert_allclose(r.suspect_scores[~tr_p], a, rtol=1e-10)
        np.testing.assert_allclose(r.reference_scores[~tr_u], b, rtol=1e-10)
        u = sum(float(x > y) + 0.5 * float(x == y) for x in a for y in b)  # brute-force pair count
        assert r.statistic[k] == u
        assert r.fold_auc[k] == pytest.approx(u / (len(a) * len(b)))
        mn = len(a) * len(b)  # no ties: normal approximation with continuity correction
        z = (u - mn / 2 - 0.5) / np.sqrt(mn * (len(a) + len(b) + 1) / 12)
        assert r.fold_p_values[k] == pytest.approx(norm.sf(z), rel=1e-9)
    assert r.p_value == pytest.approx(min(1.0, 3 * min(r.fold_p_values)))
    again = dataset_test(P, U, alpha=0.01, folds=3, seed=5, curve=False)
    assert again.fold_p_values == r.fold_p_values  # keyed by the seed
    other = dataset_test(P, U, alpha=0.01, folds=3, seed=6, curve=False)
    assert not np.array_equal(other.suspect_folds, r.suspect_folds)


def test_planted_shift_rejects_and_curve_falls():
    r = dataset_test(*_shifted_pair(1, 1.0, N_IMG), alpha=0.01, seed=0, curve=False)
    assert r.reject and r.p_value < 1e-4 and min(r.fold_auc) > 0.8
    needed, power20 = [], []
    for shift in (0.15, 0.3, 0.6):
        c = images_needed_curve(*_shifted_pair(2, shift, 200), alpha=0.01, seed=0, repeats=20)
        assert c.sizes == [10, 20, 50, 100, 200]
        assert all(lo <= pw <= hi for pw, (lo, hi) in zip(c.power, c.power_ci))
        needed.append(c.n_needed if c.n_needed is not None else np.inf)
        power20.append(c.power[c.sizes.index(20)])
    assert needed[0] > needed[1] > needed[2], needed
    assert power20[0] <= power20[1] <= power20[2], power20


def test_detection_curve_is_the_images_needed_curve_of_members_vs_heldout():
    members, heldout = _shifted_pair(3, 0.5, 50)
    c = detection_curve(members, heldout, alpha=0.05, seed=2, sizes=[10, 50], repeats=5)
    ref = images_needed_curve(members, heldout, alpha=0.05, seed=2, sizes=[10, 50], repeats=5)
    assert c == ref and c.sizes == [10, 50] and c.n_reference == 50
    assert c.to_dict()["n_needed"] in (None, 10, 50)


def test_default_sizes():
    assert default_sizes(7) == [7]
    assert default_sizes(10) == [10]
    assert default_sizes(120) == [10, 20, 50, 100, 120]
    assert default_sizes(1000) == [10, 20, 50, 100, 200, 500, 1000]


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(suspect=np.ones((5, 3)), reference=np.ones((5, 4))), "differ in width"),
    (dict(suspect=np.full((5, 3), np.nan), reference=np.ones((5, 3))), "suspect features contain NaN"),
    (dict(suspect=np.ones((1, 3)), reference=np.ones((5, 3))), "2 folds need at least 2"),
    (dict(suspect=np.ones((5, 3)), reference=np.ones((5, 3)), alpha=1.5), "alpha must be in (0, 1)"),
    (dict(suspect=np.ones((5, 3)), reference=np.ones((5, 3)), folds=1), "folds must be an integer >= 2"),
    (dict(suspect=np.ones(5), reference=np.ones((5, 3))), "must be a 2-D array"),
    (dict(suspect=np.ones((5, 3)), reference=np.ones((5, 3)), sizes=[6]), "curve sizes must be integers in [2, 5]"),
])
def test_bad_input(kwargs, fragment):
    with pytest.raises(InputError, match=re.escape(fragment)):
        dataset_test(**kwargs)


def test_statistic_features_are_the_stored_statistics():
    g = np.random.default_rng(0)
    grids = {"sima": [0, 10, 20], "pfami": [50, 100]}
    masks = ["none", "influence@40", "reverse@40"]
    arrays = {"stats__sima": g.uniform(0.5, 2, (6, 3, 3)), "stats__pfami": g.normal(size=(6, 2, 3)),
              "hf__sima": g.uniform(1, 2, (6, 1, 2)), "member": np.ones(6, bool)}
    F, names = statistic_features(arrays, grids, masks, ("none", "influence@40"), hf_timesteps=[50])
    want, want_names = [], []
    for a, grid in grids.items():
        for m in ("none", "influence@40"):
            for ti, t in enumerate(grid):
                col = arrays[f"stats__{a}"][:, ti, masks.index(m)]
                want.append(np.log(col) if a == "sima" else col)  # pfami has negative values: as is
                want_names.append(f"{a}/t{t}/{m}")
        if a == "sima":
            want += [np.log(arrays["hf__sima"][:, 0, 0]), np.log(arrays["hf__sima"][:, 0, 1])]
            want_names += ["sima/hf-t50/plain", "sima/hf-t50/filtered"]
    np.testing.assert_array_equal(F, np.stack(want, axis=1))
    assert names == want_names
    arrays["stats__sima"][4, 1, 1] = np.nan
    with pytest.raises(InputError, match="sima/t10/influence@40 of sample 4 is NaN"):
        statistic_features(arrays, grids, masks, ("none", "influence@40"))
    with pytest.raises(InputError, match="mask 'influence@90' is not in the audit's mask bank"):
        statistic_features(arrays, grids, masks, ("influence@90",))


def test_suspect_reference_samples_from_two_sources(tmp_path):
    from diffaudit.audit.dataset_test import open_side, suspect_reference_samples

    g = np.random.default_rng(0)
    a, b = g.integers(0, 256, (4, 8, 8), dtype=np.uint8), g.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=np.concatenate([a, a[:1]]))  # a repeated picture counts once
    np.savez(tmp_path / "b.npz", images=b)
    P, U = open_side(f"npz:{tmp_path / 'a.npz'}", "suspect"), open_side(f"npz:{tmp_path / 'b.npz'}", "reference")
    assert (len(P), len(U)) == (4, 3)
    s = suspect_reference_samples(P, U, image_shape=(1, 8, 8))
    assert s.member.tolist() == [True] * 4 + [False] * 3 and s.keys[0].startswith("suspect/")
    x, _ = s.load([5, 1, 4])
    want = torch.from_numpy(np.stack([b[1], a[1], b[0]])).float()[:, None] / 127.5 - 1
    torch.testing.assert_close(x, want)


# --- the command line, end to end on a tiny model ------------------------------------------------

CONFIG = dict(t_max=40, n_random=1, bootstrap=10, k_sweep=[0, 40], n_probes=2, svd_rank=2, svd_block_size=2,
              svd_power_iters=1, hf_timesteps=[20], strata_random=2, chunk_size=4, batch_size=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from diffaudit.models.tiny import save_tiny_model_folder
    from test_reliability import run_cli

    root = tmp_path_factory.mktemp("dataset-test")
    model = save_tiny_model_folder(root / "model", kind="latent", image_size=8, image_channels=1)
    g = np.random.default_rng(0)
    np.savez(root / "images.npz", images=g.integers(0, 256, (20, 8, 8), dtype=np.uint8))
    np.savez(root / "reference.npz", images=g.integers(0, 256, (12, 8, 8), dtype=np.uint8))
    code, _, _ = run_cli(["split", f"npz:{root / 'images.npz'}", "--members", 10, "--out", root / "splits"])
    assert code == 0
    (root / "cfg.json").write_text(json.dumps(CONFIG))
    return root, model


def test_cli_dataset_test_end_to_end(tiny, capsys):
    from test_reliability import run_cli

    root, model = tiny
    args = ["dataset-test", "--model", model, "--suspect", root / "splits" / "members.json",
            "--reference", f"npz:{root / 'reference.npz'}", "--out", root / "out", "--config", root / "cfg.json",
            "--repeats", 4, "--no-progress"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    doc = json.loads((root / "out" / "dataset-test.json").read_text())
    assert doc["alpha"] == 0.01 and 0 <= doc["p_value"] <= 1 and doc["reject"] == (doc["p_value"] < 0.01)
    assert (doc["n_suspect"], doc["n_reference"], doc["folds"]) == (10, 12, 2)
    assert len(doc["fold_p_values"]) == 2 == len(doc["statistic"]["values"])
    assert doc["p_value"] == pytest.approx(min(1, 2 * min(doc["fold_p_values"])))
    curve = doc["images_needed"]
    assert curve["sizes"] == [10] and curve["repeats"] == 4 and 0 <= curve["power"][0] <= 1
    cols = doc["features"]["columns"]
    assert doc["features"]["n_columns"] == len(cols) and "sima/t0/influence@40" in cols
    assert doc["suspect"]["n"] == 10 and doc["reference"]["source"].startswith("npz:")
    assert (root / "out" / "results.json").exists()
    assert f"p-value {doc['p_value']:.3g}" in out and "verdict:" in out
    # A rerun reuses the stored statistics and gives the same numbers.
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    again = json.loads((root / "out" / "dataset-test.json").read_text())
    assert again["fold_p_values"] == doc["fold_p_values"]


def test_cli_dataset_test_refuses_overlapping_sets(tiny, capsys):
    from test_cli_errors import assert_one_error_line
    from test_reliability import run_cli

    root, model = tiny
    code, _, err = run_cli(["dataset-test", "--model", model, "--suspect", root / "splits" / "members.json",
                            "--reference", f"npz:{root / 'images.npz'}", "--out", root / "out2", "--no-progress"],
                           capsys)
    assert_one_error_line(code, err, "has the same pixels as suspect image", "must be disjoint")
    code, _, err = run_cli(["dataset-test", "--model", model, "--suspect", root / "splits" / "members.json",
                            "--reference", root / "splits" / "heldout.json", "--out", root / "out3", "--alpha", 2,
                            "--no-progress"], capsys)
    assert_one_error_line(code, err, "alpha must be in (0, 1)")
