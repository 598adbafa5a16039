"""A reduced `diffaudit demo` end to end: split, train, audit, report, resume."""
import json

import pytest

from diffaudit.audit.demo import run_demo
from diffaudit.audit.plan import from_dict


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    cfg = from_dict(dict(timesteps={"sima": [0, 50], "loss": [50], "pia": [50], "secmi": [0]}, k_sweep=(0, 40),
                         n_random=2, n_probes=2, svd_rank=2, svd_block_size=2, svd_power_iters=1, bootstrap=20,
                         hf_timesteps=(50,), strata_random=2, chunk_size=8))
    kw = dict(out_dir=tmp_path / "r", n_members=12, vae_steps=3, unet_steps=3, config=cfg, progress=False,
              log=lambda m: None)
    res = run_demo(**kw)
    out = tmp_path / "r"
    for f in ("results.json", "metrics.csv", "samples.csv", "report.html", "summary.md", "roc.png"):
        assert (out / f).exists(), f
    r = json.loads((out / "results.json").read_text())
    assert r["split"]["members"]["n"] == 12 and r["model"]["latent_shape"] == [4, 8, 8]
    assert {f["id"].split("/")[0] for f in r["findings"]} >= {"filter_gain", "filter_vs_random", "reverse"}
    # Rerunning the same command reuses the split, the trained model and every cached chunk.
    again = run_demo(**kw)
    assert again.results["protocols"] == res.results["protocols"]
    assert again.results["timing"]["geometry_s"] == 0 and again.results["timing"]["attacks_s"] == 0
