"""The report writer on a results dict built from real small computations (docs/results-schema.md)."""
import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffaudit.analysis.frequency import distortion_frequency_correlation, hf_filtered_statistic
from diffaudit.analysis.strata import auc_rows, distortion_strata_over_t
from diffaudit.errors import InputError
from diffaudit.report import summary_table, write_report
from diffaudit.report.sentences import ci_direction, phrase_change, phrase_difference
from diffaudit.report.tables import METRICS_COLUMNS
from diffaudit.report.writer import FIGURES, json_safe

try:  # the project's metrics (docs/contracts.md); sklearn until it lands
    from diffaudit.metrics import membership_metrics
except ImportError:  # pragma: no cover
    from sklearn.metrics import roc_auc_score, roc_curve

    def membership_metrics(m, h):
        y, s = np.r_[np.ones(len(m)), np.zeros(len(h))], np.r_[m, h]
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        return {"auc": roc_auc_score(y, s), "asr": np.max(0.5 * (tpr + 1 - fpr)),
                "tpr_at_1pct_fpr": tpr[fpr <= 0.01].max(), "tpr_at_0_1pct_fpr": tpr[fpr <= 0.001].max(),
                "fpr": fpr, "tpr": tpr}

METRICS = ("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr")
XSS = "<script>alert(1)</script>"


def _metrics(scores, member):
    return membership_metrics(scores[member], scores[~member])


def _auc(scores, member):
    return float(auc_rows(scores[member], scores[~member]))


def _ci(values):
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def _synthetic_audit(n=48, seed=0, n_boot=200):
    """A small audit: masked norms of synthetic attack vectors, scored with the project's metrics."""
    rng = np.random.default_rng(seed)
    N, c, h, w, K = 2 * n, 2, 4, 4, 40
    d = c * h * w
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    infl = rng.normal(size=(N, d)) + np.repeat([1.0, -2.0], h * w)  # channel 1 mostly weak
    grid = [0, 50, 100]
    # Members' vectors are smaller in the influential dims: the filter should help.
    strength = 0.25 * (infl > 0) * np.array([0.5, 1.0, 0.6])[:, None, None]  # [T, 1, d] after transpose
    vecs = {a: rng.normal(size=(N, len(grid), d)) * (1 - f * member[:, None, None] * strength.transpose(1, 0, 2))
            for a, f in (("sima", 1.0), ("pia", 0.7))}

    def stat(keep, a="sima"):  # keep: [N, d] bool → statistics [N, T] (lower = member)
        return np.sqrt((vecs[a] ** 2 * keep[:, None, :]).sum(-1))

    order = np.argsort(infl, axis=1)
    def drop_lowest(k):
        keep = np.ones((N, d), bool)
        np.put_along_axis(keep, order[:, : d * k // 100], False, axis=1)
        return keep
    masks = {"none": [np.ones((N, d), bool)], "influence": [drop_lowest(K)], "reverse": [~drop_lowest(100 - K)]}
    masks["random"] = [np.stack([rng.permutation(d) >= d * K // 100 for _ in range(N)]) for _ in range(3)]
    masks["channel"] = []
    for _ in range(3):
        keep = np.ones((N, d), bool)
        dropped = ~masks["influence"][0]
        for i in range(N):
            for ch in range(c):
                sl = slice(ch * h * w, (ch + 1) * h * w)
                nd = dropped[i, sl].sum()
                keep[i, sl] = rng.permutation(h * w) >= nd
        masks["channel"].append(keep)
    stats = {a: {m: [stat(k, a) for k in ks] for m, ks in masks.items()} for a in ("sima", "pia")}

    rows = []
    for a in stats:
        for m, draws in stats[a].items():
            for ti, t in enumerate(grid):
                mm = [_metrics(-s[:, ti], member) for s in draws]
                r = {"attack": a, "mask": m, "k": 0 if m == "none" else K, "t": t, "protocol": "all", "draws": len(mm)}
                for met in METRICS:
                    v = np.array([x[met] for x in mm])
                    r[met] = float(v.mean())
                    if len(v) > 1:
                        r[met + "_std"] = float(v.std(ddof=1))
                rows.append(r)

    def summarise(a, sel):
        y = member[sel]
        out, tsel = {"t": {}}, {}
        for key, m in (("unfiltered", "none"), ("filtered", "influence"), ("reverse", "reverse")):
            s = stats[a][m][0][sel]
            per_t = [_metrics(-s[:, ti], y) for ti in range(len(grid))]
            tsel[key] = {met: int(np.argmax([p[met] for p in per_t])) for met in METRICS}
            out["t"][key] = {met: grid[tsel[key][met]] for met in METRICS}
            out[key] = {met: float(per_t[tsel[key][met]][met]) for met in METRICS}
        ti = tsel["filtered"]["auc"]
        for key, m in (("random", "random"), ("channel_matched", "channel")):
            v = np.array([_auc(-s[sel][:, ti], y) for s in stats[a][m]])
            out[key] = {"auc": float(v.mean()), "auc_std": float(v.std(ddof=1)), "t": grid[ti]}
        # Paired bootstrap (stratified resamples), AUC by ranks (auc_rows equals sklearn: test_strata).
        cols = {key: -stats[a][m][0][sel][:, tsel[key]["auc"]] for key, m in
                (("unfiltered", "none"), ("filtered", "influence"), ("reverse", "reverse"))}
        cols.update({f"random{j}": -s[sel][:, ti] for j, s in enumerate(stats[a]["random"])})
        C = np.stack(list(cols.values()))  # [columns, n]
        idx_m, idx_h = np.flatnonzero(y), np.flatnonzero(~y)
        bm, bh = rng.choice(idx_m, (n_boot, idx_m.size)), rng.choice(idx_h, (n_boot, idx_h.size))
        reps = auc_rows(C[:, bm], C[:, bh]).T  # [n_boot, columns]
        names = list(cols)
        boot = {key: reps[:, names.index(key)] for key in ("unfiltered", "filtered", "reverse")}
        boot["random"] = reps[:, [names.index(k) for k in names if k.startswith("random")]].mean(1)
        for key in ("unfiltered", "filtered", "reverse"):
            out[key]["auc_ci"] = _ci(boot[key])
        out["diff_filtered_unfiltered"] = {"auc": out["filtered"]["auc"] - out["unfiltered"]["auc"],
                                           "auc_ci": _ci(boot["filtered"] - boot["unfiltered"])}
        out["diff_filtered_random"] = {"auc": out["filtered"]["auc"] - out["random"]["auc"],
                                       "auc_ci": _ci(boot["filtered"] - boot["random"])}
        out["n_eval"] = {"members": int(y.sum()), "heldout": int((~y).sum())}
        return out

    cal_eval = np.r_[np.arange(n) % 2 == 1, np.arange(n) % 2 == 1]
    protocols = {
        "paper": {"description": "best t per metric on all samples", "per_attack": {}},
        "calibrated": {"description": "t chosen on a calibration fold", "calibration_fraction": 0.5, "per_attack": {}},
    }
    for a in stats:
        protocols["paper"]["per_attack"][a] = summarise(a, np.ones(N, bool))
        protocols["calibrated"]["per_attack"][a] = summarise(a, cal_eval)

    # Images: blobs whose edges (high frequencies) grow with a per-image sharpness; distortion follows it.
    sharp = rng.uniform(0.5, 4.0, N)
    yy, xx = np.mgrid[:16, :16]
    r2 = (yy - 7.5) ** 2 + (xx - 7.5) ** 2
    img = 1 / (1 + np.exp(-(25 - r2[None]) * sharp[:, None, None] / 8)) + 0.05 * rng.normal(size=(N, 16, 16))
    img_f = np.clip(img, 0, 1) * 2 - 1  # [-1, 1]
    distortion = sharp + 0.1 * rng.normal(size=N)
    images = ((img_f + 1) * 127.5).round().astype(np.uint8)[..., None]

    best_t = {a: protocols["paper"]["per_attack"][a]["t"]["unfiltered"]["auc"] for a in stats}
    roc, ksweep, strata = {}, {}, {}
    for a in stats:
        ti = grid.index(best_t[a])
        roc[a] = {"t": best_t[a], "t_filtered": best_t[a]}
        for key, m in (("unfiltered", "none"), ("filtered", "influence")):
            mm = _metrics(-stats[a][m][0][:, ti], member)
            roc[a][key] = {"fpr": np.asarray(mm["fpr"]).tolist(), "tpr": np.asarray(mm["tpr"]).tolist()}
        ks = [0, 20, 40, 60, 80]
        ksweep[a] = {"t": best_t[a], "k": ks, "influence": [], "reverse": [], "random_mean": [], "random_std": [],
                     "channel_mean": [], "channel_std": []}
        for k in ks:
            ksweep[a]["influence"].append(_auc(-stat(drop_lowest(k), a)[:, ti], member))
            ksweep[a]["reverse"].append(_auc(-stat(~drop_lowest(100 - k) if k else np.ones((N, d), bool), a)[:, ti],
                                             member))
            rs = [_auc(-stat(np.stack([rng.permutation(d) >= d * k // 100 for _ in range(N)]), a)[:, ti], member)
                  for _ in range(3)]
            ksweep[a]["random_mean"].append(float(np.mean(rs)))
            ksweep[a]["random_std"].append(float(np.std(rs, ddof=1)))
            ksweep[a]["channel_mean"].append(float(np.mean(rs)) + 0.002)
            ksweep[a]["channel_std"].append(float(np.std(rs, ddof=1)))
        s = -stats[a]["none"][0]
        strata[a] = distortion_strata_over_t(s[member].T, s[~member].T, distortion[member], distortion[~member],
                                             ts=grid, n_random=5, seed=seed)
    frequency = distortion_frequency_correlation(distortion, img_f[:, None], n_boot=100, seed=seed)

    # App. F statistic on "decoded" images: predictions nearer the target for members.
    x0 = torch.from_numpy(img_f[:, None]).float()
    pred = x0 + torch.from_numpy(rng.normal(size=x0.shape) * (1 - 0.3 * member)[:, None, None, None]).float()
    plain = hf_filtered_statistic(pred, x0, radius=3, scale=1.0).numpy()
    filt = hf_filtered_statistic(pred, x0, radius=3, scale=0.2).numpy()
    ap, af = _metrics(-plain, member)["auc"], _metrics(-filt, member)["auc"]
    hf = {"pia": {"t": 50, "auc_plain": ap, "auc_filtered": af, "diff": af - ap, "diff_ci": [af - ap - 0.05, af - ap + 0.05]}}

    ids = np.arange(N)
    keys = np.array([f"img{i:03d}.png" for i in range(N)], dtype=object)
    score = -stats["sima"]["none"][0][:, grid.index(best_t["sima"])]
    top_m = [i for i in np.argsort(-score) if member[i]][:10]
    keys[top_m[0]] = "<img src=x onerror=alert(1)>.png"  # a hostile file name, listed in the report
    top_h = [i for i in np.argsort(-score) if not member[i]][:10]
    entry = lambda i: {"id": int(ids[i]), "key": str(keys[i]), "score": float(score[i]),  # noqa: E731
                       "distortion": float(distortion[i])}
    lu_c = infl.reshape(N, c, h * w)
    dsum = protocols["paper"]["per_attack"]["sima"]["diff_filtered_unfiltered"]
    results = {
        "diffaudit_version": "0.1.0", "created": "2025-01-01T00:00:00", "seed": seed,
        "config": {"k": K, "attacks": ["sima", "pia"], "note": XSS},
        "model": {"path": "/models/<tiny & digits>", "kind": "latent", "latent_shape": [c, h, w],
                  "scaling_factor": 1.0, "sha256": "ab" * 32},
        "split": {"members": {"path": "members.json", "sha256": "cd" * 32, "n": n},
                  "heldout": {"path": "heldout.json", "sha256": "ef" * 32, "n": n}},
        "versions": {"torch": torch.__version__, "python": "3.11"},
        "timing": {"total_s": 12.5},
        "timesteps": {a: grid for a in stats},
        "masks": ["none", f"influence@{K}", f"reverse@{K}", f"random@{K}", f"channel@{K}"],
        "metrics": rows, "protocols": protocols, "k_sweep": ksweep, "roc": roc,
        "latent_usage": {"channel_mean_influence": lu_c.mean((0, 2)).tolist(),
                         "channel_std_influence": lu_c.std((0, 2)).tolist(),
                         "dim_mean_influence": infl.mean(0).reshape(c, h, w).tolist(),
                         "active_share": float((infl >= infl.max(1, keepdims=True) - 3).mean()),
                         "active_nats": 3.0, "dropped_inactive_share": 0.4, "note": "most dims are live"},
        "strata": strata, "frequency": frequency, "hf_filter": hf,
        "at_risk": {"members": [entry(i) for i in top_m], "heldout_false_positives": [entry(i) for i in top_h]},
        "findings": [
            {"id": "filter_gain/sima", "claim": XSS, "shows": {1: True, -1: False}.get(ci_direction(dsum["auc_ci"])),
             "sentence": "SimA: " + phrase_difference(dsum["auc"], dsum["auc_ci"])},
            {"id": "nan", "claim": "a finding with no CI", "shows": None, "sentence": "n/a"},
        ],
        "warnings": ["TPR@0.1%FPR needs >= 1000 held-out images <b>&</b>"],
    }
    samples = {"id": ids, "key": keys, "member": member, "distortion": distortion,
               "label": rng.integers(0, 10, N), "score__sima__t50": score}
    return results, samples, images


@pytest.fixture(scope="module")
def audit():
    return _synthetic_audit()


@pytest.fixture(scope="module")
def report(audit, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results, samples, images = audit
    return out, write_report(out, results, samples, images)


def test_all_files_and_valid_pngs(report):
    out, paths = report
    expected = {"results.json", "metrics.csv", "differences.csv", "k_sweep.csv", "strata.csv", "samples.csv",
                "summary.md", "report.html"} | {f[0] for f in FIGURES}
    assert expected <= set(paths)
    for name in expected:
        assert (out / name).stat().st_size > 0
    for f in FIGURES:
        with Image.open(out / f[0]) as im:
            im.verify()
        with Image.open(out / f[0]) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
            # Not blank: a real plot has many distinct colours.
            px = np.asarray(im.convert("RGB")).astype(np.uint32)
            assert np.unique((px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]).size > 10


def test_results_json_is_strict_json_and_complete(report, audit):
    out, _ = report
    text = (out / "results.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded["protocols"]["paper"]["per_attack"]["sima"]["filtered"]["auc"] == pytest.approx(
        audit[0]["protocols"]["paper"]["per_attack"]["sima"]["filtered"]["auc"])
    assert loaded["strata"]["sima"]["quartile_auc"] == json_safe(audit[0]["strata"]["sima"]["quartile_auc"])


def test_metrics_csv_tidy(report, audit):
    out, _ = report
    results = audit[0]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRICS_COLUMNS
    all_rows = [r for r in rows if r["protocol"] == "all"]
    assert len(all_rows) == len(results["metrics"])
    # Key uniqueness: one row per protocol × attack × mask × k × t.
    keys = [(r["protocol"], r["attack"], r["mask"], r["k"], r["t"]) for r in rows]
    assert len(keys) == len(set(keys))
    src = results["metrics"][5]
    got = next(r for r in all_rows if (r["attack"], r["mask"], r["t"]) == (src["attack"], src["mask"], str(src["t"])))
    assert float(got["auc"]) == pytest.approx(src["auc"])
    paper = [r for r in rows if r["protocol"] == "paper" and r["attack"] == "sima"]
    assert {r["mask"] for r in paper} == {"none", "influence", "reverse", "random", "channel"}
    filt = next(r for r in paper if r["mask"] == "influence")
    ps = results["protocols"]["paper"]["per_attack"]["sima"]
    assert float(filt["auc"]) == pytest.approx(ps["filtered"]["auc"])
    assert float(filt["auc_ci_lo"]) == pytest.approx(ps["filtered"]["auc_ci"][0])
    assert int(filt["t_asr"]) == ps["t"]["filtered"]["asr"] and filt["k"] == "40"
    rnd = next(r for r in paper if r["mask"] == "random")
    assert float(rnd["auc_std"]) == pytest.approx(ps["random"]["auc_std"])


def test_samples_csv(report, audit):
    out, _ = report
    samples = audit[1]
    with open(out / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["id", "key", "member", "distortion"]
    assert len(rows) == len(samples["id"])
    assert sum(r["member"] == "true" for r in rows) == int(samples["member"].sum())
    assert float(rows[7]["distortion"]) == samples["distortion"][7]
    hostile = int(np.flatnonzero(samples["key"] == "<img src=x onerror=alert(1)>.png")[0])
    assert rows[hostile]["key"] == samples["key"][hostile]  # CSV keeps the raw string


def test_html_self_contained_and_escaped(report):
    out, _ = report
    html = (out / "report.html").read_text()
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html
    assert "<b>&</b>" not in html and "&lt;b&gt;&amp;&lt;/b&gt;" in html
    assert "/models/&lt;tiny &amp; digits&gt;" in html
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) >= len(FIGURES) + 20  # plots + at-risk thumbnails
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html
    for title in (f[1] for f in FIGURES):
        assert title.replace("&", "&amp;") in html
    for word in ("What was audited", "Headline results", "How to read the numbers", "TPR@1%FPR"):
        assert word in html


def test_summary_md_and_table(report, audit):
    out, _ = report
    results = audit[0]
    md = (out / "summary.md").read_text()
    assert "## Protocol `paper`" in md and "| SimA |" in md
    table = summary_table(results)
    d = results["protocols"]["calibrated"]["per_attack"]["pia"]["diff_filtered_unfiltered"]
    assert f"{d['auc']:+.3f} (95% CI {d['auc_ci'][0]:+.3f} to {d['auc_ci'][1]:+.3f})" in table
    assert "Protocol 'paper'" in table and "Protocol 'calibrated'" in table
    u = results["protocols"]["paper"]["per_attack"]["sima"]["unfiltered"]["auc"]
    f = results["protocols"]["paper"]["per_attack"]["sima"]["filtered"]["auc"]
    assert f"{u:.3f} → {f:.3f}" in table
    assert summary_table({}) == "no protocol summaries in the results"


def test_missing_sections_skip_their_plots(audit, report, tmp_path):
    results, samples, images = audit
    tmp_path = tmp_path / "r"
    shutil.copytree(report[0], tmp_path)  # a full report first: stale plots must go
    slim = {k: v for k, v in results.items()
            if k not in ("strata", "hf_filter", "frequency", "latent_usage", "k_sweep", "roc", "at_risk", "findings")}
    paths = write_report(tmp_path, slim, samples, None)
    assert "auc_vs_t.png" in paths and "distortion.png" in paths
    for gone in ("strata.png", "latent_usage.png", "frequency.png", "auc_vs_k.png", "roc.png", "at_risk.png"):
        assert gone not in paths and not (tmp_path / gone).exists()
    html = (tmp_path / "report.html").read_text()
    assert "Headline results" in html and "Most exposed" not in html
    # Nothing at all but the bare minimum still gives a readable folder.
    paths = write_report(tmp_path / "bare", {"model": {"path": "m"}}, None)
    assert {"results.json", "metrics.csv", "report.html", "summary.md"} <= set(paths)


def test_bad_inputs(audit, tmp_path):
    results, samples, images = audit
    with pytest.raises(InputError, match="thumbnails but samples has"):
        write_report(tmp_path, results, samples, images[:-1])
    with pytest.raises(InputError, match="results must be a dict"):
        write_report(tmp_path, [1, 2], samples)
    bad = dict(samples, distortion=samples["distortion"][:-1])
    with pytest.raises(InputError, match="differ in length"):
        write_report(tmp_path, results, bad)


def test_sentences():
    assert phrase_difference(0.012, [0.004, 0.020]) == "+0.012 (95% CI +0.004 to +0.020): the filter helps"
    assert phrase_difference(-0.03, [-0.05, -0.01]).endswith("the filter hurts")
    assert phrase_difference(0.003, [-0.002, 0.008]).endswith("CI includes 0, no detectable change")
    assert phrase_difference(0.003, [float("nan"), 0.1]).endswith("cannot judge")
    assert phrase_change(0.894, 0.905, [0.008, 0.014]) == "AUC 0.894 → 0.905 (+0.011, 95% CI +0.008 to +0.014)"
    assert ci_direction(None) is None and ci_direction([0.0, 0.1]) == 0


def test_rewrite_from_folder_round_trips(report, tmp_path):
    from diffaudit.report import rewrite_report
    from diffaudit.report.writer import read_samples_csv

    out, _ = report
    samples = read_samples_csv(out / "samples.csv")
    assert samples["member"].dtype == bool and samples["id"].dtype.kind == "i"
    paths = rewrite_report(out, tmp_path / "again")
    assert (tmp_path / "again" / "metrics.csv").read_text() == (out / "metrics.csv").read_text()
    assert (tmp_path / "again" / "samples.csv").read_text() == (out / "samples.csv").read_text()
    assert "strata.png" in paths and "at_risk.png" not in paths  # no thumbnails without images
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{oops")
    with pytest.raises(InputError, match="results.json: not valid JSON"):
        rewrite_report(tmp_path / "bad")
