"""`diffaudit demo`: a reduced demo end to end (split, train, audit, report, resume), and the model
that ships for the default demo (digits, seed 0)."""
import hashlib
import json

import pytest

from diffaudit.audit.demo import bundled_model, install_bundled_model, run_demo
from diffaudit.audit.fingerprint import model_folder_hash
from diffaudit.audit.presets import audit_preset
from diffaudit.data import write_split
from diffaudit.errors import ConfigError, DataError
from diffaudit.train import get_preset


def test_reduced_demo_end_to_end_in_one_and_in_two_processes(tmp_path):
    """The whole demo at toy size; rerun, it reuses everything; with `processes=2` (torchrun's
    launcher, gloo) each process computes its share of the chunks and every stored array and
    verdict equals the single-process run's (one test: the second run reuses the first's model)."""
    import shutil

    import numpy as np

    cfg = audit_preset("tiny", chunk_size=8)
    kw = dict(out_dir=tmp_path / "r", n_members=12, vae_steps=3, unet_steps=3, config=cfg, progress=False,
              log=lambda m: None)
    res = run_demo(**kw)
    out = tmp_path / "r"
    for f in ("results.json", "metrics.csv", "samples.csv", "report.html", "summary.md", "roc.png"):
        assert (out / f).exists(), f
    r = json.loads((out / "results.json").read_text())
    assert r["split"]["members"]["n"] == 12 and r["model"]["latent_shape"] == [4, 8, 8]
    assert "bundled" not in r["model"]
    assert {f["id"].split("/")[0] for f in r["findings"]} >= {"filter_gain", "filter_vs_random", "reverse"}
    # Rerunning the same command reuses the split, the trained model and every cached chunk.
    again = run_demo(**kw)
    assert again.results["protocols"] == res.results["protocols"]
    assert again.results["timing"]["geometry_s"] == 0 and again.results["timing"]["attacks_s"] == 0

    for part in ("split", "model"):  # the same split and trained model: only the audit is shared out
        shutil.copytree(out / part, tmp_path / "two" / part)
    two = run_demo(**{**kw, "out_dir": tmp_path / "two"}, processes=2)
    assert two.results["timing"]["processes"] == 2 and res.results["timing"]["processes"] == 1
    for store in ("geometry", "attacks"):
        chunks = sorted((out / "cache" / store).glob("chunk-*.npz"))
        assert len(chunks) == 3  # 24 samples in chunks of 8: both ranks had work
        for f in chunks:
            a, b = np.load(f), np.load(tmp_path / "two" / "cache" / store / f.name)
            assert a.files == b.files
            for k in a.files:
                assert np.array_equal(a[k], b[k], equal_nan=True), (store, f.name, k)
    assert two.results["protocols"] == res.results["protocols"]
    assert two.results["findings"] == res.results["findings"]


# -- the model shipped for the default demo --

def _shipped():
    bundle = bundled_model("digits", 0)
    assert bundle is not None, "the default demo's model (src/diffaudit/audit/demo_models/digits-seed0) is missing"
    return bundle, json.loads((bundle / "bundle.json").read_text())


def _digits_split(seed):
    from diffaudit.data import make_split, open_source

    return make_split(open_source("digits", size=16, channels=1), 512, 512, seed)


def test_shipped_model_is_the_recorded_training_of_the_current_digits_preset():
    bundle, rec = _shipped()
    files = {str(p.relative_to(bundle)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(bundle.rglob("*")) if p.is_file() and p.parts[-2] in ("vae", "unet", "scheduler")}
    assert files == rec["files_sha256"] and len(files) == 5
    assert model_folder_hash(bundle) == rec["model_sha256"]
    assert sum((bundle / f).stat().st_size for f in files) <= 5 * 2**20
    # Trained with today's digits recipe: a change to the preset means re-making the model
    # (python benchmarks/make_demo_model.py --install).
    meta = json.loads((bundle / "diffaudit.json").read_text())
    assert meta["preset_config"] == json.loads(json.dumps(get_preset("digits").to_dict()))
    assert meta["seed"] == 0 and meta["steps"] == {"vae": 1000, "unet": 3000} and meta["torch_threads"] == 1
    m, h = _digits_split(0)  # the demo's split at seed 0 is the one it was trained on
    assert (m.digest(), h.digest()) == (rec["split"]["members_sha256"], rec["split"]["heldout_sha256"])
    assert meta["split"]["members"]["sha256"] == m.digest()


def test_installing_the_shipped_model_checks_split_and_folder(tmp_path):
    bundle, rec = _shipped()
    m, h = _digits_split(0)
    target = tmp_path / "model"
    install_bundled_model(bundle, target, m, h)
    assert model_folder_hash(target) == rec["model_sha256"]
    install_bundled_model(bundle, target, m, h)  # again: the folder is reused
    m1, h1 = _digits_split(1)
    write_split(m1, tmp_path / "s1" / "members.json")
    with pytest.raises(DataError, match="differs from the members split the bundled model digits-seed0"):
        install_bundled_model(bundle, target, m1, h)
    weights = target / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ConfigError, match="holds another model than the bundled digits-seed0"):
        install_bundled_model(bundle, target, m, h)


@pytest.mark.slow  # audits all 1024 samples (≈ 17 CPU-s with the tiny config)
def test_default_demo_audits_the_shipped_model(tmp_path):
    logs = []
    res = run_demo(out_dir=tmp_path / "r", config=audit_preset("tiny"), progress=False, log=logs.append)
    _, rec = _shipped()
    assert res.results["model"]["bundled"] == "digits-seed0" and res.results["model"]["sha256"] == rec["model_sha256"]
    assert res.results["split"]["members"]["n"] == 512 and not any("training" in line for line in logs)
    with pytest.raises(ConfigError, match="holds the bundled model"):  # --train needs its own folder
        run_demo(out_dir=tmp_path / "r", train=True, config=audit_preset("tiny"), progress=False, log=logs.append)
