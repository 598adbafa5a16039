"""`distortion_samples`: distortion on a membership-stratified subset, strata on that subset alone."""
import numpy as np
import pytest

from diffaudit.audit import run_audit
from diffaudit.audit.findings import strata_finding
from diffaudit.audit.plan import from_dict
from diffaudit.audit.protocol import calibration_split
from diffaudit.audit.samples import stratified_subset
from diffaudit.audit.verdicts import audit_findings
from diffaudit.errors import ConfigError

from test_audit import _samples, _tiny_config, _tiny_model
from test_verdicts_null import CFG, synthetic_arrays


def test_stratified_subset_is_proportional_keyed_and_order_free():
    keys = [f"s{i}" for i in range(300)]
    member = np.arange(300) < 100
    keep = stratified_subset(keys, member, 60, 0, "distortion-subset")
    assert keep.sum() == 60 and (keep & member).sum() == 20  # 100 : 200 members to held-out
    perm = np.random.default_rng(1).permutation(300)
    again = stratified_subset([keys[i] for i in perm], member[perm], 60, 0, "distortion-subset")
    assert {keys[i] for i in perm[again]} == {keys[i] for i in np.flatnonzero(keep)}
    assert stratified_subset(keys, member, 60, 1, "distortion-subset").tolist() != keep.tolist()
    assert stratified_subset(keys, member, 0, 0, "x").all() and stratified_subset(keys, member, 300, 0, "x").all()
    # A lopsided split still leaves each class at least one sample.
    tiny = stratified_subset(keys, np.arange(300) < 1, 10, 0, "x")
    assert tiny.sum() == 10 and tiny[0]
    for bad in (-1, 2):
        with pytest.raises(ConfigError, match="distortion_samples"):
            from_dict({"distortion_samples": bad})


def test_strata_verdict_uses_the_subset_alone():
    rng = np.random.default_rng(5)
    arrays = synthetic_arrays(rng, n=640)
    member = arrays["member"]
    keep = stratified_subset([str(i) for i in range(640)], member, 440, 0, "distortion-subset")
    arrays["distortion"] = np.where(keep, arrays["distortion"], np.nan)
    cal = calibration_split(member, CFG.calibration_fraction, 0)
    from diffaudit.audit.assemble import bank_columns
    from diffaudit.audit.plan import mask_bank
    from diffaudit.audit.protocol import summarise_attack

    rows = summarise_attack(arrays["stats__sima"], member, CFG.grid("sima"), bank_columns(mask_bank(CFG), CFG.k), 2,
                            0, "calibrated", cal)
    findings = audit_findings(arrays, CFG, {"calibrated": {"per_attack": {"sima": rows}}}, cal, None, kind="latent")
    got = next(f for f in findings if f["id"] == "distortion_strata/sima")
    t = rows["t"]["unfiltered"]["auc"]
    scores = -arrays["stats__sima"][:, CFG.grid("sima").index(t), 0]
    direct = strata_finding(scores[keep], member[keep], cal[1][keep], arrays["distortion"][keep], "sima", t,
                            CFG.calibration_fraction)
    assert got["sentence"].startswith(direct["base"]) and got["p_value"] == direct["p_value"]
    assert "in the highest" in direct["base"]


def test_audit_with_a_distortion_subset(tmp_path):
    model, samples = _tiny_model(), _samples()
    cfg = _tiny_config()
    full = run_audit(model, samples, cfg, out_dir=tmp_path / "full", progress=False, write_report=False)
    sub = run_audit(model, samples, cfg.replace(distortion_samples=8), out_dir=tmp_path / "sub", progress=False)
    keep = stratified_subset(samples.keys, samples.member, 8, cfg.seed, "distortion-subset")
    d_full, d_sub = full.samples["distortion"], sub.samples["distortion"]
    assert np.isfinite(d_sub).sum() == 8 and np.isfinite(d_sub[keep]).all() and np.isnan(d_sub[~keep]).all()
    np.testing.assert_allclose(d_sub[keep], d_full[keep], rtol=1e-5)  # same keyed draws, fewer samples
    r = sub.results
    assert r["distortion_subset"]["n"] == 8 and r["distortion_subset"]["members"] == 4
    assert any("distortion was computed on 8 of 20" in w for w in r["warnings"])
    assert full.results["distortion_subset"] is None
    assert r["frequency"]["n"] == 8
    # The strata thresholds are the quartiles of the subset's distortion.
    assert r["strata"]["sima"]["thresholds"] == pytest.approx(np.quantile(d_sub[keep], [0.25, 0.5, 0.75]).tolist())
    # Attack statistics do not depend on the subset.
    assert r["protocols"]["paper"]["per_attack"]["sima"] == full.results["protocols"]["paper"]["per_attack"]["sima"]
    html = (tmp_path / "sub" / "report.html").read_text()
    assert "distortion was computed on 8 of 20 samples" in html


def test_a_subset_is_refused_by_a_full_geometry_store_and_leaves_the_attack_key_alone(tmp_path):
    model, samples = _tiny_model(), _samples()
    cfg = _tiny_config()
    run_audit(model, samples, cfg, out_dir=tmp_path, progress=False, write_report=False)
    assert cfg.hash() == cfg.replace(distortion_samples=8).hash()  # attacks do not depend on the subset
    from diffaudit.errors import DataError

    with pytest.raises(DataError, match="different run"):  # the geometry store does
        run_audit(model, samples, cfg.replace(distortion_samples=8), out_dir=tmp_path, progress=False,
                  write_report=False)
    r = run_audit(model, samples, cfg.replace(distortion_samples=8), out_dir=tmp_path, progress=False,
                  write_report=False, overwrite=True)
    assert r.results["distortion_subset"]["n"] == 8
