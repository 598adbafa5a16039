"""Null simulations of the report's verdicts: thousands of synthetic audits, no model.

Each synthetic audit draws fresh samples: per-sample statistics over (t, mask) with a strong
correlation over t (AR(1), ρ = 0.9) and across masks, random influence, distortion and band
energies, and membership labels independent of all of it. The verdict code the report runs
(`diffaudit.audit.verdicts.audit_findings`, fed by the calibrated protocol) must then say
"shows" for each finding at most at its stated rate — one-sided 2.5% before the Holm adjustment,
less after it — within a binomial CI. A planted effect must still be found (power printed).
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict

import numpy as np
import pytest
from scipy.stats import binomtest

from diffaudit.analysis.frequency import energy_correlation
from diffaudit.audit.assemble import bank_columns
from diffaudit.audit.plan import AuditConfig, mask_bank
from diffaudit.audit.protocol import calibration_split, summarise_attack
from diffaudit.audit.verdicts import audit_findings

N_NULL = int(os.environ.get("DIFFAUDIT_NULL_AUDITS", "2000"))
CFG = AuditConfig(attacks=("sima",), t_max=100, t_stride=10, k=40, k_sweep=(40,), n_random=4,
                  hf_timesteps=(20, 40, 60), bootstrap=2, seed=0)


def synthetic_arrays(rng: np.random.Generator, n: int = 480, effect: dict | None = None) -> dict:
    """One audit's gathered arrays. `effect` plants membership signal per mask kind (log-stat shift
    of members, scaled per column), per distortion quartile ("strata") and in the HF variant."""
    effect = effect or {}
    bank = mask_bank(CFG)
    T, M = len(CFG.grid("sima")), len(bank)
    member = np.zeros(n, bool)
    member[rng.permutation(n)[: n // 2]] = True
    # log-statistics: sample level + AR(1) over t + column noise (masks of one vector correlate).
    a = rng.normal(size=(n, 1, 1))
    b = np.empty((n, T, 1))
    b[:, 0] = rng.normal(size=(n, 1))
    for t in range(1, T):
        b[:, t] = 0.9 * b[:, t - 1] + np.sqrt(1 - 0.81) * rng.normal(size=(n, 1))
    L = a + b + 0.5 * rng.normal(size=(n, T, M))
    dist = rng.normal(size=n)
    q = np.searchsorted(np.quantile(dist, [0.25, 0.5, 0.75]), dist)
    shift = np.array([effect.get(m.kind, 0.0) for m in bank])
    strength = 1.0 + effect.get("strata", 0.0) * (q - 1.5)  # signal grows with distortion quartile
    L -= (member * strength)[:, None, None] * shift[None, None, :]
    H = rng.normal(size=(n, len(CFG.hf_timesteps), 2)) + rng.normal(size=(n, 1, 1))
    H[:, :, 0] -= member[:, None] * effect.get("hf_plain", 0.0)
    lf = rng.normal(size=n)
    hf = rng.normal(size=n) + effect.get("frequency", 0.0) * dist
    return {"member": member, "stats__sima": np.exp(L).astype(np.float32), "influence": rng.normal(size=(n, 64)),
            "distortion": dist, "lf": lf, "hf": hf, "hf__sima": np.exp(H)}


def one_audit(seed: int, effect=None) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    arrays = synthetic_arrays(rng, effect=effect)
    member = arrays["member"]
    cal = calibration_split(member, CFG.calibration_fraction, seed)
    cols = bank_columns(mask_bank(CFG), CFG.k)
    rows = summarise_attack(arrays["stats__sima"], member, CFG.grid("sima"), cols, 2, seed, "calibrated", cal)
    protocols = {"calibrated": {"per_attack": {"sima": rows}}}
    freq = energy_correlation(arrays["distortion"], arrays["lf"], arrays["hf"], n_boot=100, seed=seed)
    return {f["id"]: f["status"] for f in audit_findings(arrays, CFG, protocols, cal, freq, kind="latent")}


def rates(n: int, effect=None, start: int = 0) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    for s in range(start, start + n):
        for fid, status in one_audit(s, effect).items():
            out[fid][status] += 1
    return out


@pytest.mark.parametrize("start", [0, N_NULL // 2])
def test_every_verdict_keeps_its_false_positive_rate_under_the_null(start):
    """N_NULL audits in two halves (each under a minute), each half judged on its own."""
    got = rates(N_NULL // 2, start=start)
    assert set(got) == {"filter_gain/sima", "filter_vs_random/sima", "filter_vs_channel/sima", "reverse/sima",
                        "distortion_strata/sima", "frequency", "hf_filter/sima"}
    report = {}
    for fid, c in got.items():
        n = sum(c.values())
        assert c["not_enough_samples"] + c["not_applicable"] <= 0.05 * n, (fid, c)
        for status in ("shows", "opposite"):  # each direction is one-sided 2.5% before Holm
            ci = binomtest(c[status], n).proportion_ci(0.95)
            report[(fid, status)] = (c[status] / n, ci.low, ci.high)
            assert ci.low <= 0.025, (fid, status, c)
    print("null false-'shows' rates:", {k: round(v[0], 4) for k, v in report.items()})


def test_unadjusted_tests_are_calibrated_not_just_conservative():
    """Holm makes the verdicts conservative; the raw DeLong p-values themselves should be close to
    uniform under the null (else the rate test above would pass for a broken, over-cautious test)."""
    from diffaudit.audit import findings as F

    ps = defaultdict(list)
    for s in range(400):
        rng = np.random.default_rng(10_000 + s)
        arrays = synthetic_arrays(rng)
        cal = calibration_split(arrays["member"], 0.5, s)
        cols = bank_columns(mask_bank(CFG), CFG.k)
        rows = summarise_attack(arrays["stats__sima"], arrays["member"], CFG.grid("sima"), cols, 2, s, "calibrated", cal)
        fs = F.filter_findings({"sima": rows}, {}, CFG.k, 0.5)
        for f in fs:
            ps[f["id"]].append(f["p_value"])
    for fid, p in ps.items():
        p = np.asarray(p)
        rate = float((p < 0.05).mean())
        ci = binomtest(int((p < 0.05).sum()), p.size).proportion_ci(0.95)
        assert ci.low <= 0.05 <= ci.high + 0.02, (fid, rate)


@pytest.mark.parametrize("effect,expect", [
    ({"influence": 1.2, "none": 0.5, "random": 0.5, "channel": 0.5, "reverse": 0.0},
     ["filter_gain/sima", "filter_vs_random/sima", "filter_vs_channel/sima", "reverse/sima"]),
    ({"influence": 1.0, "none": 1.0, "random": 1.0, "channel": 1.0, "reverse": 1.0, "strata": 0.9},
     ["distortion_strata/sima"]),
    ({"hf_plain": 0.8}, ["hf_filter/sima"]),
    ({"frequency": 0.5}, ["frequency"]),
])
def test_planted_effects_are_found(effect, expect):
    got = rates(60, effect, start=50_000)
    power = {fid: got[fid]["shows"] / sum(got[fid].values()) for fid in expect}
    print("power on the planted effect:", power)
    for fid in expect:
        assert power[fid] >= 0.8, (fid, got[fid])
