"""The paper's findings, each judged by a test whose error rate is known (docs/verdicts.md).

Every verdict is a two-sided test on samples whose labels chose nothing: the calibrated
protocol's evaluation fold (t chosen on the calibration fold, every control with the same
selection as the treatment). All verdicts of one report form one family, Holm-adjusted at
``ALPHA`` = 5% family-wise: a finding "shows" the paper's claim when its adjusted p is below 5%
and the estimate points the paper's way (so each false "shows" has probability ≤ 2.5%), "shows
the opposite" when it points the other way, and is "inconclusive" otherwise. Below
``MIN_PER_CLASS`` members or held-out samples in a compared group a finding is "not enough
samples" (with the number needed); with a degenerate decoder (identity, constant influence or
distortion) the filter and strata findings are "not applicable".
"""
from __future__ import annotations

import math

import numpy as np

from ..metrics import auc_contrast, holm, independent_difference
from ..attacks import display_name as attack_name

ALPHA = 0.05
MIN_PER_CLASS = 20
STATUS_LABELS = {"shows": "shows", "opposite": "shows the opposite", "inconclusive": "inconclusive",
                 "not_enough_samples": "not enough samples", "not_applicable": "not applicable"}


def fmt_diff(d: float, lo: float, hi: float) -> str:
    return f"{d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})"


def _finding(fid: str, claim: str, base: str, test: dict | None = None, direction: int = 1,
             status: str | None = None, reason: str = "") -> dict:
    """A finding before the family's adjustment: `test` has estimate, ci, p_two_sided."""
    f = {"id": fid, "claim": claim, "base": base, "direction": direction, "status": status, "reason": reason}
    if test is not None:
        f.update(estimate=test["estimate"], ci=list(test["ci"]), p_value=test["p_two_sided"])
    return f


def _too_few(n_eval: dict, fraction: float) -> str | None:
    m, h = n_eval.get("members", 0), n_eval.get("heldout", 0)
    if min(m, h) >= MIN_PER_CLASS:
        return None
    need = math.ceil(MIN_PER_CLASS / max(1e-9, 1 - fraction))
    return (f"the evaluation fold has {m} members and {h} held-out samples; a verdict needs ≥ {MIN_PER_CLASS} "
            f"of each (≥ {need} per class in all at calibration_fraction {fraction:g})")


def filter_findings(cal: dict, paper: dict, k: int, fraction: float, not_applicable: str | None = None) -> list[dict]:
    """Filter vs unfiltered, vs random and channel-matched drops, and the reverse mask, per attack."""
    specs = (
        ("filter_gain", "diff_filtered_unfiltered", "filtered", "unfiltered", 1,
         f"Dropping the {k}% least influential latent dims raises the attack's AUC (arXiv 2511.20592 §4.2, Table 1)."),
        ("filter_vs_random", "diff_filtered_random", "filtered", "random", 1,
         f"The influence filter beats dropping {k}% of the dims at random (arXiv 2511.20592 §4.3)."),
        ("filter_vs_channel", "diff_filtered_channel_matched", "filtered", "channel_matched", 1,
         "The per-dim influence ranking matters beyond which channels it drops (a random drop matched per "
         "channel does worse)."),
        ("reverse", "diff_reverse_unfiltered", "reverse", "unfiltered", -1,
         "Keeping only the least influential dims (reverse) lowers AUC (arXiv 2511.20592 App. B)."),
    )
    out = []
    for a, rows in cal.items():
        name = attack_name(a)
        few = _too_few(rows["n_eval"], fraction)
        for fid, key, treat, ctrl, direction, claim in specs:
            d, tr, co = rows[key], rows[treat], rows[ctrl]
            pd = (paper.get(a) or {}).get(key, {}).get("auc")
            base = (f"{name}: {treat.replace('_', '-')} AUC {tr['auc']:.3f} (t={tr['t']}) vs {ctrl.replace('_', '-')} "
                    f"{co['auc']:.3f} (t={co['t']}) on the evaluation fold, difference {fmt_diff(d['auc'], *d['auc_ci'])}"
                    + (f"; paper protocol (optimistic, not judged) {pd:+.3f}" if pd is not None else ""))
            if not_applicable:
                out.append(_finding(f"{fid}/{a}", claim, base, status="not_applicable", reason=not_applicable))
            elif few:
                out.append(_finding(f"{fid}/{a}", claim, base, status="not_enough_samples", reason=few))
            else:
                test = {"estimate": d["auc"], "ci": d["auc_ci"], "p_two_sided": d["p_two_sided"]}
                out.append(_finding(f"{fid}/{a}", claim, base, test, direction))
    return out


def strata_finding(scores: np.ndarray, member: np.ndarray, evaluation: np.ndarray, distortion: np.ndarray,
                   attack: str, t: int, fraction: float, n_quantiles: int = 4, not_applicable: str | None = None) -> dict:
    """AUC in the highest- minus the lowest-distortion quantile, on the evaluation fold.

    `scores` [N] at the attack's calibrated t (higher = member). Quantile thresholds come from
    all samples' distortion (no labels), the attack and t from the calibration fold.
    """
    claim = "Samples in the highest-distortion quartile are more exposed (higher AUC) than the lowest (arXiv 2511.20592 Fig. 3)."
    fid = f"distortion_strata/{attack}"
    d = np.asarray(distortion, dtype=np.float64)
    if not_applicable or np.ptp(d) <= 1e-6 * (1 + np.abs(d).max()):
        return _finding(fid, claim, f"{attack_name(attack)}: no distortion strata",
                        status="not_applicable",
                        reason=not_applicable or "the decoder's distortion is the same for every sample (a linear decoder)")
    thr = np.quantile(d, np.arange(1, n_quantiles) / n_quantiles)
    q = np.searchsorted(thr, d, side="left")
    groups, counts = [], []
    for stratum in (0, n_quantiles - 1):
        sel = evaluation & (q == stratum)
        counts.append((int((sel & member).sum()), int((sel & ~member).sum())))
        groups.append(sel)
    base = f"{attack_name(attack)} at t={t}: "
    if min(min(c) for c in counts) < MIN_PER_CLASS:
        return _finding(fid, claim, base + f"lowest / highest quartile hold {counts[0]} / {counts[1]} (members, held-out) "
                        "on the evaluation fold", status="not_enough_samples",
                        reason=f"each compared quartile needs ≥ {MIN_PER_CLASS} members and held-out samples on the "
                        f"evaluation fold (≈ {math.ceil(4 * MIN_PER_CLASS / max(1e-9, 1 - fraction))} per class in all)")
    lo, hi = (auc_contrast(scores[g], member[g], [1.0]) for g in groups)
    test = independent_difference(hi, lo)
    base += (f"AUC {hi['estimate']:.3f} in the highest-distortion quartile vs {lo['estimate']:.3f} in the lowest "
             f"(evaluation fold, {counts[1][0]}+{counts[1][1]} and {counts[0][0]}+{counts[0][1]} samples), difference "
             f"{fmt_diff(test['estimate'], *test['ci'])}")
    return _finding(fid, claim, base, test, 1)


def frequency_finding(freq: dict) -> dict | None:
    if not freq or "r_hf" not in freq or "diff_se" not in freq:
        return None
    claim = ("Local distortion tracks high-frequency energy more than low-frequency energy "
             "(arXiv 2511.20592 §4.4, Table 3; dataset-dependent).")
    base = (f"Pearson r of distortion with high-frequency energy {freq['r_hf']:+.2f} (CI {freq['r_hf_ci'][0]:+.2f} to "
            f"{freq['r_hf_ci'][1]:+.2f}), with low-frequency energy {freq['r_lf']:+.2f} (CI {freq['r_lf_ci'][0]:+.2f} to "
            f"{freq['r_lf_ci'][1]:+.2f}), paired difference {fmt_diff(freq['diff'], *freq['diff_ci'])}")
    if not (np.isfinite(freq["diff"]) and freq["diff_se"] > 0):
        return _finding("frequency", claim, base, status="not_applicable", reason=freq.get("note", "undefined correlation"))
    from scipy.stats import norm

    test = {"estimate": freq["diff"], "ci": freq["diff_ci"],
            "p_two_sided": float(2 * norm.sf(abs(freq["diff"]) / freq["diff_se"]))}
    return _finding("frequency", claim, base, test, 1)


def hf_finding(attack: str, H: np.ndarray, member: np.ndarray, cal: np.ndarray, ev: np.ndarray,
               hf_ts: list[int], fraction: float) -> dict:
    """App. F: the decoded-image statistic with the high band removed vs plain, each at its own
    calibrated t, compared on the evaluation fold (DeLong)."""
    from ..metrics import metrics_matrix

    claim = "Attacking through a high-frequency filter of the decoded images lowers AUC (arXiv 2511.20592 App. F, Table 7)."
    fid = f"hf_filter/{attack}"
    ti = [int(np.argmax(metrics_matrix(-H[:, :, j][cal], member[cal], ("auc",))["auc"])) for j in (0, 1)]
    C = np.stack([-H[:, ti[0], 0][ev], -H[:, ti[1], 1][ev]], axis=1)
    y = member[ev]
    m, h = int(y.sum()), int((~y).sum())
    base = f"{attack_name(attack)}: decoded-image AUC "
    if min(m, h) < MIN_PER_CLASS:
        return _finding(fid, claim, base + "not judged", status="not_enough_samples",
                        reason=_too_few({"members": m, "heldout": h}, fraction))
    test = auc_contrast(C, y, [-1.0, 1.0])
    plain, filt = (auc_contrast(C[:, [j]], y, [1.0])["estimate"] for j in (0, 1))
    base += (f"{plain:.3f} plain (t={hf_ts[ti[0]]}) vs {filt:.3f} with the high band removed (t={hf_ts[ti[1]]}) on the "
             f"evaluation fold, difference {fmt_diff(test['estimate'], *test['ci'])}")
    f = _finding(fid, claim, base, test, -1)
    f["detail"] = {"t": hf_ts[ti[0]], "t_filtered": hf_ts[ti[1]], "auc_plain": plain, "auc_filtered": filt,
                   "diff": test["estimate"], "diff_ci": test["ci"], "protocol": "calibrated (evaluation fold)"}
    return f


def judge(findings: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Holm-adjust the family's p-values and write each verdict and its sentence."""
    tested = [f for f in findings if f.get("p_value") is not None and f["status"] is None]
    adj = holm([f["p_value"] for f in tested])
    for f, p in zip(tested, adj):
        f["p_holm"] = float(p)
        if p < alpha:
            f["status"] = "shows" if np.sign(f["estimate"]) == f["direction"] else "opposite"
        else:
            f["status"] = "inconclusive"
    n = len(tested)
    for f in findings:
        f["shows"] = {"shows": True, "opposite": False}.get(f["status"])
        f["family_size"] = n
        if f["status"] in ("not_applicable", "not_enough_samples"):
            f["sentence"] = f"{f['base']}: {STATUS_LABELS[f['status']]} — {f['reason']}."
        else:
            words = {"shows": "shows the paper's effect", "opposite": "shows the opposite of the paper's effect",
                     "inconclusive": "no detectable effect"}[f["status"]]
            f["sentence"] = (f"{f['base']}; p = {f['p_value']:.3g}, Holm-adjusted {f['p_holm']:.3g} over {n} "
                             f"verdicts: {words}.")
        f.pop("base")
        if not f["reason"]:
            f.pop("reason")
    return findings
