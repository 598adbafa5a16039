"""Pearson r of distortion with per-image low/high-frequency energy, with bootstrap CIs (T3)."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr


def frequency_correlation(distortion, lf, hf, n_boot: int = 1000, seed: int = 0) -> dict:
    d, lf, hf = (np.asarray(a, dtype=np.float64) for a in (distortion, lf, hf))
    ok = np.isfinite(d) & np.isfinite(lf) & np.isfinite(hf)
    d, lf, hf = d[ok], lf[ok], hf[ok]
    if len(d) < 3 or d.std() == 0:
        return {}
    rng = np.random.default_rng([seed, 3])
    out = {"n": int(len(d))}
    for name, e in (("lf", lf), ("hf", hf)):
        if e.std() == 0:
            return {}
        out[f"r_{name}"] = float(pearsonr(d, e).statistic)
        boots = []
        for _ in range(n_boot):
            i = rng.integers(0, len(d), len(d))
            if d[i].std() > 0 and e[i].std() > 0:
                boots.append(np.corrcoef(d[i], e[i])[0, 1])
        out[f"r_{name}_ci"] = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    return out
