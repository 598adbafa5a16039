"""Degenerate geometry and small samples: the report says "not applicable" / "not enough samples"
instead of judging (docs/verdicts.md), through the API and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffaudit import cli
from diffaudit.audit import SampleSet, run_audit
from diffaudit.audit.plan import from_dict
from diffaudit.models import LatentDiffusion
from diffaudit.models.tiny import save_tiny_model_folder

SMALL = dict(timesteps={"sima": [0, 20], "loss": [20], "pia": [20], "secmi": [0]}, k=40, k_sweep=[0, 40],
             n_random=2, n_probes=2, svd_rank=2, svd_block_size=2, svd_power_iters=1, bootstrap=20,
             hf_timesteps=[20], strata_random=2, chunk_size=32, batch_size=32)
FILTER_IDS = ("filter_gain", "filter_vs_random", "filter_vs_channel", "reverse")


def _status(results, prefix):
    return {f["id"]: f["status"] for f in results["findings"] if f["id"].startswith(prefix)}


def test_pixel_model_filter_and_strata_findings_are_not_applicable(tmp_path):
    folder = save_tiny_model_folder(tmp_path / "px", kind="pixel", image_size=8, image_channels=1)
    model = LatentDiffusion.from_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=g) * 2 - 1
    res = run_audit(model, SampleSet.from_tensors(x[:48], x[48:]), from_dict(SMALL), out_dir=tmp_path / "out",
                    progress=False, write_report=False)
    r = res.results
    for fid in FILTER_IDS:
        st = _status(r, fid + "/")
        assert st and set(st.values()) == {"not_applicable"}, st
    assert all("identity" in f["reason"] for f in r["findings"] if f["id"].split("/")[0] in FILTER_IDS)
    assert set(_status(r, "distortion_strata/").values()) == {"not_applicable"}
    assert "not meaningful" in r["latent_usage"]["note"] and r["latent_usage"]["degenerate"]
    assert all(f["shows"] is None for f in r["findings"] if f["status"] == "not_applicable")
    # The data owner's curve is the dataset test on the audit's own statistics (members vs held-out).
    from diffaudit.analysis.dataset_inference import detection_curve
    from diffaudit.audit.dataset_test import audit_features

    o = r["owner_detection"]
    assert o["sizes"][-1] == 48 and o["n_reference"] == 48 and all(0 <= p <= 1 for p in o["power"])
    arrays = {"member": res.samples["member"], **_stored(tmp_path / "out")}
    assert any(k.startswith("stats__") for k in arrays)  # the store was read (else the check is empty)
    F, _ = audit_features(arrays, from_dict(SMALL), masks=("none",))
    ref = detection_curve(F[arrays["member"]], F[~arrays["member"]], alpha=0.01, seed=0, repeats=20).to_dict()
    assert ref["power"] == o["power"] and ref["sizes"] == o["sizes"]


def _stored(out):
    """The attack statistics as the audit stored them (chunk files of the cache)."""
    import glob

    parts: dict = {}
    for f in sorted(glob.glob(str(out / "cache" / "attacks" / "chunk-*.npz"))):
        with np.load(f) as z:
            for k in z.files:
                if k.startswith("stats__") or k.startswith("hf__"):
                    parts.setdefault(k, []).append(z[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_few_samples_are_not_enough_and_say_how_many_are_needed(tmp_path, capsys):
    """Through the CLI: 8 members / 8 held-out give 4 + 4 on the evaluation fold: no verdict."""
    folder = save_tiny_model_folder(tmp_path / "m", kind="latent", image_size=8, image_channels=1)
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(data / f"img{i}.png")
    (tmp_path / "cfg.json").write_text(json.dumps({**SMALL, "chunk_size": 8, "batch_size": 8}))

    def run(args):
        try:
            cli.main([str(a) for a in args])
        except SystemExit as e:
            return e.code
        return 0

    assert run(["split", f"folder:{data}", "--members", 8, "--out", tmp_path / "splits"]) == 0
    code = run(["audit", "--model", folder, "--members", tmp_path / "splits" / "members.json",
                "--holdout", tmp_path / "splits" / "heldout.json", "--config", tmp_path / "cfg.json",
                "--out", tmp_path / "out", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    for fid in FILTER_IDS:
        for f in r["findings"]:
            if f["id"].startswith(fid + "/"):
                assert f["status"] == "not_enough_samples" and f["shows"] is None, f
                assert "≥ 20" in f["reason"] and "≥ 40 per class" in f["reason"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "not enough samples" in html and "+1.000 to +1.000" not in html
