"""Multiple verdicts in one report: Holm's step-down adjustment (Holm, Scand. J. Stat. 1979).

Holm controls the family-wise error rate — the chance that ANY verdict of the family is a false
claim — at α without assumptions on how the tests depend on each other (the report's findings
share samples and are correlated).
"""
from __future__ import annotations

import numpy as np


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (same order as the input; NaN entries are left out and stay NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out
