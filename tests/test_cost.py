"""The cost estimate printed before an audit, against the denoiser rows and Jacobian products counted."""
import numpy as np
import torch

from diffaudit import geometry
from diffaudit.audit import run_audit
from diffaudit.audit.cost import cost_line, distortion_products, estimate_cost
from diffaudit.audit.plan import AuditConfig, attacks_for

from test_audit import _samples, _tiny_config, _tiny_model


def test_estimate_matches_the_denoiser_rows_counted(tmp_path):
    model, samples = _tiny_model(), _samples()
    rows = {"n": 0}
    eps = model.eps

    def counted(fn):
        def call(z_t, *a, **kw):
            rows["n"] += z_t.shape[0]
            return fn(z_t, *a, **kw)
        return call

    model.eps = counted(eps)
    # GSA is left out: its vmap(grad(...)) calls eps_with_grad once per vmapped batch, not per row.
    cfg = _tiny_config(attacks=[a for a in attacks_for(False) if a != "gsa"], distortion_samples=8)
    lines = []
    r = run_audit(model, samples, cfg, out_dir=tmp_path, progress=False, write_report=False, log=lines.append)
    est = r.results["cost_estimate"]
    per = rows["n"] / len(samples)
    # Shared calls (ε̂(z, 0) of PIA and PIA-N) are not counted: at most one per attack beyond the estimate.
    assert est["per_sample"]["denoiser_calls"] <= per <= est["per_sample"]["denoiser_calls"] + len(cfg.attacks)
    assert est["total"]["denoiser_calls"] == est["per_sample"]["denoiser_calls"] * len(samples)
    assert est["distortion_samples"] == 8 and lines == [cost_line(est)] and "× 8 samples" in lines[0]


def test_distortion_budget_is_what_geometry_spends_at_most():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(48, 16, generator=g, dtype=torch.float64)
    decode = lambda z: torch.tanh(z.reshape(z.shape[0], -1) @ W.T)  # noqa: E731
    z = torch.randn(3, 16, generator=g, dtype=torch.float64)
    for algo, kw in (("gkl", {}), ("block_krylov", {"svd_block_size": 2, "svd_power_iters": 3}),
                     ("subspace", {"svd_oversample": 2})):
        cfg = AuditConfig(svd_algorithm=algo, svd_rank=4, **kw)
        stats = {}
        geometry.singular_values(decode, z, rank=4, oversample=cfg.svd_oversample, power_iters=cfg.svd_power_iters,
                                 algorithm=algo, block_size=cfg.svd_block_size, method="jvp", stats=stats)
        used = stats["products"].numpy()
        assert (used <= distortion_products(cfg)).all(), (algo, used)
        if algo != "gkl":  # fixed budgets are spent in full
            np.testing.assert_array_equal(used, distortion_products(cfg))
    assert estimate_cost(AuditConfig(), 1000)["total"]["jacobian_products_distortion_max"] == 400 * 1000
