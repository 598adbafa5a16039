"""The attack registry: an attack registered here, in this file alone, runs through the whole
audit (grid from its spec, statistics, metrics.csv, results.json, report.html)."""
import csv
import json

import pytest
import torch

from diffaudit import attacks
from diffaudit.attacks import ATTACKS, AttackSpec, display_name, register_attack
from diffaudit.errors import InputError


def toy_residual(model, z, t, cond=None):
    """z − ε̂(z, t): a made-up attack vector, shaped like z."""
    tt = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
    with torch.no_grad():
        return z - model.eps(z, tt, cond)


@pytest.fixture
def toy():
    spec = register_attack("toy_residual", toy_residual, 3, display_name="ToyResidual", first_t=5,
                           reference="this test file", description="z − ε̂(z, t)")
    yield spec
    ATTACKS.pop("toy_residual")


def test_spec_facts_and_validation(toy):
    assert display_name("toy_residual") == "ToyResidual" and display_name("unknown") == "unknown"
    assert display_name("sima") == "SimA" and display_name("SECMI") == "SecMI"
    assert not toy.decoded_variant and toy.needs == ("cond",) and toy.t_margin(10) == 0
    assert ATTACKS["secmi"].t_margin(10) == 10 and ATTACKS["loss"].needs_noise
    assert [a for a, s in ATTACKS.items() if s.decoded_variant] == ["loss", "pia", "pian"]
    with pytest.raises(InputError, match="already registered"):
        register_attack("toy_residual", toy_residual, 3)
    assert register_attack(AttackSpec("toy_residual", toy_residual, 2), overwrite=True).p == 2
    for bad, match in [(dict(p=0), "p must"), (dict(needs=("telepathy",)), "unknown needs"),
                       (dict(first_t=-1), "first_t"), (dict(name="a b"), "identifier"), (dict(colour=1), "unknown field")]:
        kw = {"name": "bad", "fn": toy_residual, "p": 2, **bad}
        with pytest.raises(InputError, match=match):
            register_attack(kw.pop("name"), kw.pop("fn"), kw.pop("p"), **kw)
    assert "bad" not in ATTACKS


def test_registered_attack_runs_through_the_audit(toy, tmp_path):
    from sklearn.datasets import load_digits

    from diffaudit.audit import SampleSet, run_audit
    from diffaudit.audit.plan import from_dict
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import save_tiny_model_folder

    model = LatentDiffusion.from_pretrained(save_tiny_model_folder(tmp_path / "model", image_size=8, image_channels=1))
    x = torch.from_numpy(load_digits().images[:24, None]).float() / 8 - 1
    samples = SampleSet.from_tensors(x[:12], x[12:])
    cfg = from_dict(dict(attacks=["sima", "toy_residual"], t_max=40, k=40, k_sweep=[0, 40], n_random=2, n_probes=2,
                         svd_rank=2, svd_block_size=2, svd_power_iters=1, bootstrap=20, strata_random=2,
                         hf_filter=False, chunk_size=12, batch_size=12))
    assert cfg.grid("toy_residual") == [10, 20, 30]  # multiples of the stride from first_t = 5 on
    out = tmp_path / "report"
    res = run_audit(model, samples, cfg, out_dir=out, progress=False)

    # The stored statistic is the public one: Σ|v|³ of the toy vector, for a sample checked directly.
    t = res.results["protocols"]["paper"]["per_attack"]["toy_residual"]["t"]["unfiltered"]["auc"]
    with torch.no_grad():
        z = model.encode(samples.load([0])[0])
        direct = float(attacks.statistic(toy_residual(model, z, t).double(), 3))
    assert -res.samples[f"score__toy_residual__t{t}"][0] == pytest.approx(direct, rel=1e-5)

    results = json.loads((out / "results.json").read_text())
    assert "toy_residual" in results["protocols"]["calibrated"]["per_attack"]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["attack"] for r in rows} == {"sima", "toy_residual"}
    assert sorted({int(r["t"]) for r in rows if r["attack"] == "toy_residual"}) == [10, 20, 30]
    html = (out / "report.html").read_text()
    assert "ToyResidual" in html and "Two membership attacks" in html and "SimA, ToyResidual" in html
