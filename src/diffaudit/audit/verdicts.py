"""All verdicts of one audit, from the gathered arrays and the calibrated protocol (docs/verdicts.md).

Kept apart from the plots and tables so that null simulations can drive exactly the code the
report runs (tests/test_verdicts_null.py) on thousands of synthetic score matrices.
"""
from __future__ import annotations

import numpy as np

from .findings import filter_findings, frequency_finding, hf_finding, judge, strata_finding
from .plan import AuditConfig, is_masked


def degenerate_geometry(influence: np.ndarray, kind: str | None) -> str | None:
    """Why influence filtering cannot mean anything here, or None."""
    if kind == "pixel":
        return ("pixel-space model: the decoder is the identity, every latent dim has the same influence, so the "
                "filter would only rank estimator noise")
    infl = np.asarray(influence, dtype=np.float64).reshape(len(influence), -1)
    if infl.size and float(np.ptp(infl, axis=1).max()) <= 1e-6:
        return "the decoder's influence is the same for every latent dim of every sample (no ranking to filter by)"
    return None


def audit_findings(arrays: dict, config: AuditConfig, protocols: dict, calibration: tuple[np.ndarray, np.ndarray],
                   freq: dict | None = None, kind: str | None = None) -> list[dict]:
    """Every finding of the report, judged as one Holm family.

    The filter findings concern the masked attacks only (an unmasked one, PFAMI or GSA, has no
    filtered row: docs/attacks.md); the strata finding takes the best attack with a statistic
    per sample (not a feature attack, whose classifier scores only the evaluation fold).
    """
    member = arrays["member"].astype(bool)
    cal_rows = protocols["calibrated"]["per_attack"]
    paper_rows = (protocols.get("paper") or {}).get("per_attack") or {}
    frac = config.calibration_fraction
    na = degenerate_geometry(arrays["influence"], kind)
    masked = {a: r for a, r in cal_rows.items() if is_masked(a)}
    findings = filter_findings(masked, paper_rows, config.k, frac, not_applicable=na)
    # The strata finding uses the attack and t that are best on the calibration fold.
    with_stats = [a for a in cal_rows if f"stats__{a}" in arrays]
    if with_stats:
        best = max(with_stats, key=lambda a: cal_rows[a]["selection_auc"]["unfiltered"])
        t = cal_rows[best]["t"]["unfiltered"]["auc"]
        scores = -arrays[f"stats__{best}"][:, config.grid(best).index(t), 0]
        pixel = "pixel-space model: the decoder is the identity, so every sample has the same distortion (0)"
        d = arrays["distortion"]
        sub = np.isfinite(d)  # the distortion subset (config.distortion_samples): strata on it alone
        findings.append(strata_finding(scores[sub], member[sub], calibration[1][sub], d[sub], best, t, frac,
                                       not_applicable=pixel if kind == "pixel" else None))
    f = frequency_finding(freq) if freq is not None else None
    if f:
        findings.append(f)
    if config.hf_filter:
        for key in sorted(k for k in arrays if k.startswith("hf__")):
            H = arrays[key]
            if np.isfinite(H).all():
                findings.append(hf_finding(key[4:], H, member, *calibration, list(config.hf_timesteps), frac))
    return judge(findings)
