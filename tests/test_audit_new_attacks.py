"""PIA-N, PFAMI, CLiD and GSA through `run_audit` on a tiny class-conditional latent model
(docs/attacks.md, "In the audit"): what is stored per output kind, the rows results.json and the
report hold for each, which findings each gets, and the stored numbers against the attack
functions called directly on the same latents, conditions, images and keyed draws."""
import csv
import json

import numpy as np
import pytest
import torch

from diffaudit import attacks
from diffaudit.audit import SampleSet, run_audit
from diffaudit.audit.plan import MaskId, from_dict, mask_bank
from diffaudit.audit.protocol import calibration_split
from diffaudit.audit.run import build_masks, gather
from diffaudit.audit.store import ChunkStore
from diffaudit.errors import ConfigError
from diffaudit.metrics import bootstrap_columns, interval, membership_metrics
from diffaudit.models import LatentDiffusion
from diffaudit.models.tiny import tiny_autoencoder_kl, tiny_scheduler, tiny_unet2d

ATTACKS = ["sima", "pian", "pfami", "clid", "gsa"]
# Reduced grids: PFAMI at t ∈ {0, 50, 100}, GSA at 10 timesteps 9 … 99; CLiD at its own 440/450/460.
CONFIG = dict(attacks=ATTACKS, timesteps={"sima": [0, 20], "pian": [20], "pfami": [100], "gsa": [99]}, k=40,
              k_sweep=(0, 40), n_random=2, n_probes=2, svd_rank=2, svd_block_size=2, svd_power_iters=1,
              bootstrap=20, hf_timesteps=(20,), strata_random=2, chunk_size=32, batch_size=16,
              owner_curve_repeats=2)
N = 40  # members and held-out each: a calibration fold of 20 + 20 for GSA's classifier


def class_model(T: int = 1000):
    return LatentDiffusion(tiny_unet2d(in_channels=4, sample_size=8, block_out_channels=(8, 16), num_class_embeds=11),
                           tiny_scheduler(num_train_timesteps=T), vae=tiny_autoencoder_kl(attention=False),
                           null_label=10)


def data(labels: bool = True):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 * N, 3, 16, 16, generator=g) * 2 - 1
    y = torch.randint(0, 10, (2 * N,), generator=g)
    if not labels:
        return x, y, SampleSet.from_tensors(x[:N], x[N:])
    return x, y, SampleSet.from_tensors(x[:N], x[N:], member_cond=y[:N], heldout_cond=y[N:])


def stored(out, samples, config):
    stores = [ChunkStore(out / "cache" / k, json.loads((out / "cache" / k / "manifest.json").read_text()))
              for k in ("geometry", "attacks")]
    return gather(samples, config, *stores)


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("new_attacks")
    model, (x, y, samples), config = class_model(), data(), from_dict(dict(CONFIG))
    res = run_audit(model, samples, config, out_dir=out, progress=False)
    return model, x, y, samples, config, out, res.results, stored(out, samples, config)


def test_arrays_stored_per_output_kind(audit):
    model, x, y, samples, config, out, results, arrays = audit
    M = len(mask_bank(config))
    assert arrays["stats__sima"].shape == (2 * N, 2, M) and arrays["stats__pian"].shape == (2 * N, 1, M)
    assert arrays["stats__clid"].shape == (2 * N, 1, M)         # signed: every mask
    assert arrays["stats__pfami"].shape == (2 * N, 1, 1)        # scalar: mask "none" only
    n_params = len(list(model.denoiser.parameters()))
    assert arrays["gsa__features"].shape == (2 * N, n_params)   # one gradient norm per parameter tensor
    assert "stats__gsa" not in arrays and not any(k.startswith("hf__") and k != "hf__pian" for k in arrays)
    assert config.grid("clid") == [450] and from_dict({"attacks": ["pfami", "gsa"]}).grid("pfami") == [450]
    assert from_dict({"attacks": ["gsa"]}).grid("gsa") == [999]
    assert results["timesteps"]["pfami"] == [100] and results["warnings"][-1].startswith("TPR@1%FPR")


def test_stored_statistics_equal_the_attack_functions(audit):
    model, x, y, samples, config, out, results, arrays = audit
    keys = samples.keys
    z = model.encode(x).float()
    cond = model.encode_cond(y)
    # CLiD: the per-dim vector, reduced by the signed sum, unmasked and under the influence filter.
    v = attacks.clid(model, z, 450, cond, sample_ids=keys, seed=config.seed).double()
    np.testing.assert_allclose(arrays["stats__clid"][:, 0, 0], attacks.statistic(v, 1, signed=True).numpy(),
                               rtol=1e-5, atol=1e-7)
    bank = mask_bank(config)
    j = [m.name for m in bank].index("influence@40")
    infl = torch.from_numpy(arrays["influence"]).reshape(z.shape)
    mask = build_masks(infl, keys, [MaskId("influence", 40)], config.seed)[:, 0].reshape(z.shape)
    np.testing.assert_allclose(arrays["stats__clid"][:, 0, j], attacks.statistic(v, 1, mask, signed=True).numpy(),
                               rtol=1e-5, atol=1e-7)
    assert (v < 0).any() and (v > 0).any()  # signed terms: an absolute value would change the sum
    # PFAMI from the original images (cropped, re-encoded), not from D(z).
    p = attacks.pfami(model, z, 100, cond, sample_ids=keys, seed=config.seed, images=x)
    np.testing.assert_allclose(arrays["stats__pfami"][:, 0, 0], p.numpy(), rtol=1e-5, atol=1e-7)
    from_decoded = attacks.pfami(model, z, 100, cond, sample_ids=keys, seed=config.seed)
    assert not np.allclose(arrays["stats__pfami"][:, 0, 0], from_decoded.numpy(), rtol=1e-5, atol=1e-7)
    # GSA1 features at its 10 timesteps up to 99, with the samples' labels.
    f = attacks.gsa(model, z, 99, cond, sample_ids=keys, seed=config.seed)
    np.testing.assert_allclose(arrays["gsa__features"], f.numpy(), rtol=1e-4, atol=1e-7)


def test_rows_for_each_attack_and_the_protocols(audit):
    model, x, y, samples, config, out, results, arrays = audit
    paper, cal = (results["protocols"][p]["per_attack"] for p in ("paper", "calibrated"))
    assert list(paper) == ["sima", "pian", "pfami", "clid"] and list(cal) == ATTACKS
    for a in ("sima", "pian", "clid"):
        assert {"filtered", "reverse", "random", "channel_matched", "diff_filtered_unfiltered"} <= set(cal[a])
    for rows in (paper["pfami"], cal["pfami"], cal["gsa"]):
        assert "unfiltered" in rows and "filtered" not in rows and not any(k.startswith("diff_") for k in rows)
        assert "masks have nothing to select" in rows["unmasked"]
    assert "a difference of losses of different inputs" in cal["pfami"]["unmasked"]
    assert cal["gsa"]["protocol_note"] == "classifier trained on the calibration fold (no shadow model)"
    assert "gsa" in results["protocols"]["paper"]["omitted"]
    with open(out / "metrics.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    have = {(r["protocol"], r["attack"], r["mask"]) for r in csv_rows}
    for a in ("sima", "pian", "pfami", "clid"):
        assert {("paper", a, "none"), ("calibrated", a, "none"), ("all", a, "none")} <= have
    assert ("calibrated", "gsa", "none") in have and not any(a == "gsa" and p != "calibrated" for p, a, _ in have)
    assert not any(a in ("pfami", "gsa") and m != "none" for _, a, m in have)
    assert set(results["k_sweep"]) == {"sima", "pian", "clid"} and set(results["roc"]) == set(ATTACKS)
    notes = results["attacks"]
    assert notes["pfami"]["masked"] is False and "different inputs" in notes["pfami"]["unmasked_reason"]
    assert notes["clid"]["output"] == "signed" and notes["clid"]["masked"] is True
    assert "calibration fold" in notes["gsa"]["protocol"] and "no row" in notes["gsa"]["paper_protocol"]


def test_findings_only_for_masked_attacks(audit):
    model, x, y, samples, config, out, results, arrays = audit
    ids = [f["id"] for f in results["findings"]]
    for a in ("sima", "pian", "clid"):
        assert {f"{k}/{a}" for k in ("filter_gain", "filter_vs_random", "filter_vs_channel", "reverse")} <= set(ids)
    assert not any(i.endswith("/pfami") and not i.startswith("distortion_strata") for i in ids)
    assert not any(i.endswith("/gsa") for i in ids)
    for a in ("pfami", "gsa"):
        assert "masks have nothing to select" in results["attacks"][a]["findings"]
    html = (out / "report.html").read_text()
    summary = (out / "summary.md").read_text()
    for text in (html, summary):
        assert "PFAMI" in text and "GSA" in text and "CLiD" in text and "PIA-N" in text
        assert "a difference of losses of different inputs: masks have nothing to select" in text
        assert "classifier trained on the calibration fold (no shadow model)" in text
        assert "GSA has no row here" in text


def test_gsa_row_is_the_classifier_on_the_calibration_fold(audit):
    model, x, y, samples, config, out, results, arrays = audit
    member = arrays["member"].astype(bool)
    cal, ev = calibration_split(member, config.calibration_fraction, config.seed)
    F = arrays["gsa__features"]
    scores = attacks.gsa_scores(F[cal], member[cal], F[ev], seed=config.seed)
    y_ev = member[ev]
    by_hand = membership_metrics(scores[y_ev], scores[~y_ev])
    row = results["protocols"]["calibrated"]["per_attack"]["gsa"]
    boot = bootstrap_columns(scores[:, None], y_ev, config.bootstrap, config.seed + 101 * ATTACKS.index("gsa"))
    for m in ("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"):
        assert row["unfiltered"][m] == pytest.approx(by_hand[m], abs=1e-12)
        assert row["unfiltered"][m + "_ci"] == pytest.approx(interval(boot[m][:, 0]), abs=1e-12)
    assert row["n_eval"] == {"members": int(y_ev.sum()), "heldout": int((~y_ev).sum())} and row["t"]["unfiltered"]["auc"] == 99
    col = np.genfromtxt(out / "samples.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    got = col["score__gsa__evaluation_fold__t99"]
    assert np.isnan(got[cal]).all()
    np.testing.assert_allclose(got[ev], scores, rtol=1e-12)


def test_clid_is_skipped_with_a_warning_without_conditions(tmp_path):
    model, (_, _, samples) = class_model(), data(labels=False)
    config = from_dict(dict(CONFIG, attacks=["sima", "clid"], timesteps={"sima": [0]}))
    res = run_audit(model, samples, config, out_dir=tmp_path, progress=False).results
    warn = [w for w in res["warnings"] if w.startswith("clid was not run")]
    assert len(warn) == 1 and "conditional model" in warn[0]
    assert "skipped" in res["attacks"]["clid"] and "clid" not in res["protocols"]["calibrated"]["per_attack"]
    assert "stats__clid" not in stored(tmp_path, samples, config)
    assert "clid was not run" in (tmp_path / "report.html").read_text()
    with pytest.raises(ConfigError, match="no attack of the config can run here: clid"):
        run_audit(model, samples, from_dict(dict(CONFIG, attacks=["clid"], timesteps=None)), out_dir=tmp_path / "b",
                  progress=False)


def test_grid_checked_against_the_model_before_any_compute(tmp_path):
    model, (_, _, samples) = class_model(T=100), data()
    config = from_dict(dict(CONFIG, attacks=["sima", "gsa"], timesteps={"sima": [0]}))
    with pytest.raises(ConfigError, match=r"attack 'gsa': t=999 is outside the model's timesteps 0\.\.99"):
        run_audit(model, samples, config, out_dir=tmp_path, progress=False)
    assert not list((tmp_path / "cache" / "geometry").glob("chunk*"))
    with pytest.raises(ConfigError, match="must hold one t"):
        from_dict(dict(CONFIG, timesteps={"gsa": [99, 199]}))
