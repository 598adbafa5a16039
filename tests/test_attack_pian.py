"""PIA-N vs a float64 re-derivation of the SimA authors' ``PIAN`` attacker (github
mx-ethan-rao/SimA, DDPM/components.py) on a tiny UNet; the sweep's shared ε̂(z, 0)."""
import math

import numpy as np
import pytest
import torch

from diffaudit.attacks import ATTACKS, attack_sweep, pia, statistic
from diffaudit.attacks.pian import normalized_eps0, pian
from diffaudit.errors import InputError, NonFiniteError
from diffaudit.models.tiny import tiny_unet2d

T = 1000


def table():
    """DDPM linear β in [1e-4, 2e-2], ᾱ stored in float32 as diffusers (and the reference) do."""
    return torch.cumprod(1 - torch.linspace(1e-4, 2e-2, T, dtype=torch.float64), 0).float()


class TinyUNet64:
    """A tiny diffusers UNet run in float64, with the model contract (eps, alphas_cumprod)."""

    def __init__(self):
        self.unet = tiny_unet2d(in_channels=4, sample_size=8).double()
        self.alphas_cumprod = table()
        self.rows = 0

    @torch.no_grad()
    def eps(self, x, t, cond=None):
        self.rows += x.shape[0]
        return self.unet(x, t).sample


def reference_pian(eps_getter, x0, noise_level, interval, attack_num, lp=4):
    """The authors' PIAN, re-derived: ε = ε̂(x0, 0) divided by its mean |·| over all non-batch dims
    and times √(2/π), reused at every step = interval·k (k = 1 … attack_num); there the model is
    queried at √ᾱ x0 + √(1−ᾱ) ε and the distance is Σ|ε − ε̂|^lp per sample → [attack_num, B].
    (The reference computes √ᾱ in float32; here the same float32 table is read in float64.)"""
    eps = eps_getter(x0, 0)
    eps = eps / eps.abs().mean(list(range(1, eps.ndim)), keepdim=True) * (2 / math.pi) ** 0.5
    out = []
    for step in range(interval, interval * attack_num + interval, interval):
        a = float(noise_level[step])
        back = eps_getter(math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, step)
        out.append((eps - back).abs().pow(lp).flatten(1).sum(-1))
    return torch.stack(out)


def test_pian_equals_the_authors_pian_logic():
    m = TinyUNet64()
    z = torch.randn(5, 4, 8, 8, dtype=torch.float64)
    noise_level = m.alphas_cumprod.double()

    def getter(x, step):
        return m.eps(x, torch.full((x.shape[0],), step, dtype=torch.long))

    want = reference_pian(getter, z, noise_level, interval=20, attack_num=5)
    got = torch.stack([statistic(pian(m, z, t), 4) for t in range(20, 120, 20)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert ATTACKS["pian"].p == 4
    # the normalised ε differs from PIA's raw ε̂(z, 0): the statistics are not PIA's
    assert not torch.allclose(statistic(pia(m, z, 40), 4), got[1])


def test_normalisation_is_per_sample_over_all_dims():
    e = torch.randn(3, 2, 4, 4, dtype=torch.float64) * torch.tensor([0.1, 1.0, 7.0], dtype=torch.float64).view(3, 1, 1, 1)
    n = normalized_eps0(e)
    torch.testing.assert_close(n.abs().mean((1, 2, 3)), torch.full((3,), math.sqrt(2 / math.pi), dtype=torch.float64))
    torch.testing.assert_close(n / e, (math.sqrt(2 / math.pi) / e.abs().mean((1, 2, 3))).view(3, 1, 1, 1).expand_as(e))
    # a sample's normalisation does not depend on the others in the batch
    torch.testing.assert_close(normalized_eps0(e[1:2]), n[1:2], rtol=0, atol=0)


def test_pian_accepts_a_shared_eps0_and_per_sample_t():
    m = TinyUNet64()
    z = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    e0 = m.eps(z, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(pian(m, z, 30, eps0=e0), pian(m, z, 30), rtol=0, atol=0)
    tt = torch.tensor([10, 30, 50])
    per = pian(m, z, tt)
    for i, t in enumerate(tt.tolist()):
        torch.testing.assert_close(per[i], pian(m, z[i:i + 1], t)[0], rtol=1e-12, atol=1e-13)


def test_sweep_matches_single_calls_and_shares_eps0():
    m = TinyUNet64()
    z = torch.randn(4, 4, 8, 8, dtype=torch.float64)
    ts = [5, 25, 70]
    got = {(a, t): v for a, t, v in attack_sweep(m, z, ts, attacks=("pia", "pian"), max_batch=7)}
    for t in ts:
        torch.testing.assert_close(got["pian", t], pian(m, z, t), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["pia", t], pia(m, z, t), rtol=1e-10, atol=1e-12)
    m.rows = 0
    list(attack_sweep(m, z, ts, attacks=("pia", "pian")))
    assert m.rows == 4 * (1 + 2 * len(ts))  # one ε̂(z, 0) for both attacks


def test_pian_errors():
    m = TinyUNet64()
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="eps0"):
        pian(m, z, 10, eps0=torch.zeros(1, 4, 8, 8))
    with pytest.raises(NonFiniteError, match="PIA-N"):
        pian(m, z, 10, eps0=torch.zeros_like(z))
    with pytest.raises(InputError, match="t must lie"):
        pian(m, z, T)


def test_registered_spec():
    spec = ATTACKS["pian"]
    assert spec.fn is pian and spec.display_name == "PIA-N" and spec.job is not None
    assert spec.predicted_x0 is not None and spec.calls_per_t == 1
    # the decoded-image variant's x̂₀ = z + √(1−ᾱ)/√ᾱ · v, as for PIA
    m = TinyUNet64()
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    v = pian(m, z, 40)
    a = float(m.alphas_cumprod[40])
    np.testing.assert_allclose(spec.predicted_x0(m.alphas_cumprod, z, v, 40).numpy(),
                               (z + math.sqrt(1 - a) / math.sqrt(a) * v).numpy(), rtol=1e-12)


def test_pian_runs_through_the_audit(tmp_path):
    import json

    from sklearn.datasets import load_digits

    from diffaudit.audit import SampleSet, run_audit
    from diffaudit.audit.plan import from_dict
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import save_tiny_model_folder

    model = LatentDiffusion.from_pretrained(save_tiny_model_folder(tmp_path / "model", image_size=8, image_channels=1))
    x = torch.from_numpy(load_digits().images[:24, None]).float() / 8 - 1
    samples = SampleSet.from_tensors(x[:12], x[12:])
    cfg = from_dict(dict(attacks=["pia", "pian"], t_max=40, k=40, k_sweep=[0, 40], n_random=2, n_probes=2,
                         svd_rank=2, svd_block_size=2, svd_power_iters=1, bootstrap=20, strata_random=2,
                         hf_timesteps=[20], chunk_size=12, batch_size=12))
    res = run_audit(model, samples, cfg, out_dir=tmp_path / "report", progress=False)
    t = res.results["protocols"]["paper"]["per_attack"]["pian"]["t"]["unfiltered"]["auc"]
    with torch.no_grad():
        z = model.encode(samples.load([3])[0])
        direct = float(statistic(pian(model, z, t).double(), 4))
    assert -res.samples[f"score__pian__t{t}"][3] == pytest.approx(direct, rel=1e-5)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "pian" in results["protocols"]["calibrated"]["per_attack"]
    assert "PIA-N" in (tmp_path / "report" / "report.html").read_text()
