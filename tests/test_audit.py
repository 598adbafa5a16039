"""The audit pipeline: metric grid vs scikit-learn, config validation, the store, end to end."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from diffaudit.audit import AuditConfig, SampleSet, run_audit
from diffaudit.audit.plan import from_dict, load_config, mask_bank
from diffaudit.audit.presets import audit_preset
from diffaudit.audit.protocol import calibration_split, metrics_matrix
from diffaudit.audit.store import ChunkStore
from diffaudit.errors import ConfigError, DataError


def _brute(scores, y, target):
    """TPR at the largest threshold whose FPR <= target, and ASR, by looping over thresholds."""
    best_tpr, best_asr = 0.0, 0.5
    for thr in np.unique(scores):
        pred = scores >= thr
        tpr = (pred & y).sum() / y.sum()
        fpr = (pred & ~y).sum() / (~y).sum()
        best_asr = max(best_asr, 0.5 * (tpr + 1 - fpr))
        if fpr <= target:
            best_tpr = max(best_tpr, tpr)
    return best_tpr, best_asr


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_matrix_matches_sklearn_and_brute_force(ties):
    rng = np.random.default_rng(1)
    n = 300
    y = np.zeros(n, bool)
    y[:140] = True
    S = rng.normal(size=(n, 5)) + y[:, None] * np.linspace(0, 1.5, 5)
    if ties:
        S = np.round(S * 2) / 2  # heavy ties
    mm = metrics_matrix(S, y)
    for j in range(5):
        assert mm["auc"][j] == pytest.approx(roc_auc_score(y, S[:, j]), abs=1e-12)
        tpr1, asr = _brute(S[:, j], y, 0.01)
        tpr10, _ = _brute(S[:, j], y, 0.1)
        assert mm["asr"][j] == pytest.approx(asr, abs=1e-12)
        assert mm["tpr_at_1pct_fpr"][j] == pytest.approx(tpr1, abs=1e-12)
        fpr, tpr, _ = roc_curve(y, S[:, j], drop_intermediate=False)
        assert mm["tpr_at_1pct_fpr"][j] == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
        assert tpr10 >= tpr1


def test_config_rejects_unknown_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'k_sweep'"):
        from_dict({"k_swep": [0, 10]})
    with pytest.raises(ConfigError, match="k must be in"):
        from_dict({"k": 100})
    with pytest.raises(ConfigError, match="unknown attack"):
        from_dict({"attacks": ["sima", "nope"]})
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        load_config(p)
    p.write_text(json.dumps({"n_random": "ten"}))
    with pytest.raises(ConfigError, match="n_random"):
        load_config(p)
    a, b = AuditConfig(batch_size=8), AuditConfig(batch_size=64)
    assert a.hash() == b.hash()  # batch size does not change results
    assert AuditConfig(k=30).hash() != a.hash()
    assert AuditConfig().grid("sima")[:3] == [0, 10, 20] and AuditConfig().grid("loss")[0] == 10


def test_calibration_split_is_stratified():
    y = np.array([True] * 30 + [False] * 50)
    cal, ev = calibration_split(y, 0.5, 0)
    assert (cal ^ ev).all() and (y & cal).sum() == 15 and (~y & cal).sum() == 25


def test_store_resumes_and_detects_damage(tmp_path):
    st = ChunkStore(tmp_path / "s", {"config": "a"})
    ids = np.arange(4)
    st.save(0, {"id": ids, "x": np.ones(4)})
    assert st.done(0, ids) is not None and st.done(0, np.arange(5)) is None
    st.path(0).write_bytes(st.path(0).read_bytes()[:50])  # torn file
    assert st.done(0, ids) is None
    with pytest.raises(DataError, match="different run"):
        ChunkStore(tmp_path / "s", {"config": "b"})
    st2 = ChunkStore(tmp_path / "s", {"config": "b"}, overwrite=True)
    assert not list(st2.root.glob("chunk-*"))


# ---------------------------------------------------------------------------------------------
# End to end on a tiny latent model built from configs.

def _tiny_model():
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    from diffaudit.models import LatentDiffusion

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(8, 8), latent_channels=2,
                        norm_num_groups=4, sample_size=8, mid_block_add_attention=False)
    unet = UNet2DModel(sample_size=4, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2)
    return LatentDiffusion(unet=unet, scheduler=sched, vae=vae)


def _tiny_config(**kw):
    return audit_preset("tiny", **{"n_random": 3, "chunk_size": 6, "batch_size": 6, **kw})


def _samples():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(20, 1, 8, 8, generator=g) * 2 - 1
    return SampleSet.from_tensors(x[:10], x[10:])


def _strip(results):
    r = dict(results)
    for k in ("created", "timing"):
        r.pop(k, None)
    return r


def test_audit_end_to_end_resumes_and_ignores_batching(tmp_path):
    model, samples = _tiny_model(), _samples()
    cfg = _tiny_config()
    full = run_audit(model, samples, cfg, out_dir=tmp_path / "a", progress=False, write_report=False)
    r = full.results
    assert set(r["protocols"]["paper"]["per_attack"]) == {"sima", "loss", "pia", "secmi"}
    row = r["protocols"]["calibrated"]["per_attack"]["sima"]
    assert 0 <= row["filtered"]["auc"] <= 1 and len(row["filtered"]["auc_ci"]) == 2
    assert r["findings"] and all("sentence" in f for f in r["findings"])
    d = row["diff_reverse_unfiltered"]
    assert d["auc"] == pytest.approx(row["reverse"]["auc"] - row["unfiltered"]["auc"])
    assert d["auc_ci"][0] <= d["auc_ci"][1]
    # The stored statistics agree with a direct computation of the attack for one sample.
    from diffaudit import attacks

    tu = r["protocols"]["paper"]["per_attack"]["sima"]["t"]["unfiltered"]["auc"]
    with torch.no_grad():
        z = model.encode(samples.load([0])[0])
        direct = float(attacks.sima(model, z, tu).double().abs().pow(4).sum())
    assert -full.samples[f"score__sima__t{tu}"][0] == pytest.approx(direct, rel=1e-5)

    # Other batch size and chunking of work: same numbers (randomness keyed by sample).
    other = run_audit(model, samples, cfg.replace(batch_size=4), out_dir=tmp_path / "b", progress=False,
                      write_report=False)
    assert _strip(other.results)["protocols"] == _strip(r)["protocols"]

    # Kill-and-resume: drop one chunk, tear another; the rerun recomputes them and agrees.
    att = tmp_path / "a" / "cache" / "attacks"
    (att / "chunk-00001.npz").unlink()
    p = att / "chunk-00002.npz"
    p.write_bytes(p.read_bytes()[:100])
    again = run_audit(model, samples, cfg, out_dir=tmp_path / "a", progress=False, write_report=False)
    assert _strip(again.results)["protocols"] == _strip(r)["protocols"]
    assert _strip(again.results)["metrics"] == _strip(r)["metrics"]

    # A different config refuses to mix with the stored results.
    with pytest.raises(DataError, match="different run"):
        run_audit(model, samples, cfg.replace(k=30, k_sweep=(0, 30)), out_dir=tmp_path / "a", progress=False,
                  write_report=False)


def test_mask_bank_layout():
    bank = mask_bank(_tiny_config())
    names = [m.name for m in bank]
    assert names[0] == "none" and "influence@40" in names and "channel@40#2" in names
    assert len(names) == 1 + 2 + 2 * 3
