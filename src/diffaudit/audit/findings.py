"""The paper's findings, each judged from this run's confidence intervals (never pre-written).

A finding "shows" when its CI excludes no effect in the paper's direction, "does not show" when
the CI excludes it the other way or includes zero. The sentence states the numbers either way.
"""
from __future__ import annotations

import numpy as np

from .protocol import bootstrap_columns, ci, metrics_matrix

NAMES = {"sima": "SimA", "loss": "Loss", "pia": "PIA", "secmi": "SecMI"}


def fmt_diff(d: float, lo: float, hi: float) -> str:
    return f"{d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})"


def _verdict(lo: float, hi: float) -> bool | None:
    if lo > 0:
        return True
    if hi < 0:
        return False
    return None  # CI includes 0: no detectable effect either way


def _word(v: bool | None, yes: str, no: str, none: str) -> str:
    return yes if v is True else (no if v is False else none)


def filter_findings(protocols: dict, k: int) -> list[dict]:
    out = []
    paper = protocols["paper"]["per_attack"]
    cal = protocols["calibrated"]["per_attack"]
    for a, rows in paper.items():
        d = rows["diff_filtered_unfiltered"]
        v = _verdict(*d["auc_ci"])
        dc = cal[a]["diff_filtered_unfiltered"]
        out.append({
            "id": f"filter_gain/{a}",
            "claim": f"Dropping the {k}% least influential latent dims raises {NAMES.get(a, a)}'s AUC (paper T1).",
            "shows": v,
            "sentence": (f"{NAMES.get(a, a)}: filtering changes AUC by {fmt_diff(d['auc'], *d['auc_ci'])} "
                         f"under the paper's protocol and by {fmt_diff(dc['auc'], *dc['auc_ci'])} under the calibrated one: "
                         + _word(v, "the filter helps.", "the filter hurts.", "no detectable change.")),
        })
        r = rows["diff_filtered_random"]
        v = _verdict(*r["auc_ci"])
        c = rows["diff_filtered_channel_matched"]
        vc = _verdict(*c["auc_ci"])
        out.append({
            "id": f"filter_vs_random/{a}",
            "claim": f"The influence filter beats dropping {k}% of the dims at random (paper §4.3).",
            "shows": v,
            "sentence": (f"{NAMES.get(a, a)}: filtered minus random drop {fmt_diff(r['auc'], *r['auc_ci'])}, "
                         f"minus channel-matched random drop {fmt_diff(c['auc'], *c['auc_ci'])}: "
                         + _word(v, "the filter beats random dropping", "random dropping does better",
                                 "no detectable difference from random dropping")
                         + _word(vc, ", and the per-dim ranking matters beyond which channels are dropped.",
                                 ", but a channel-matched random drop does better: the gain comes from the channels dropped.",
                                 "; against the channel-matched control the difference is not detectable.")),
        })
        rv = rows["reverse"]
        un = rows["unfiltered"]
        dr = rows["diff_reverse_unfiltered"]
        v = _verdict(*dr["auc_ci"])
        shows = {True: False, False: True, None: None}[v]  # the paper's direction is "lower"
        out.append({
            "id": f"reverse/{a}",
            "claim": "Keeping only the least influential dims (reverse) lowers AUC (paper App. B).",
            "shows": shows,
            "sentence": (f"{NAMES.get(a, a)}: reverse mask AUC {rv['auc']:.3f} (CI {rv['auc_ci'][0]:.3f}–{rv['auc_ci'][1]:.3f}) "
                         f"vs unfiltered {un['auc']:.3f} (CI {un['auc_ci'][0]:.3f}–{un['auc_ci'][1]:.3f}), paired difference "
                         f"{fmt_diff(dr['auc'], *dr['auc_ci'])}: "
                         + _word(shows, "reverse is lower.", "reverse is higher.", "no detectable difference.")),
        })
    return out


def strata_finding(strata: dict, attack: str) -> dict | None:
    s = strata.get(attack)
    if not s:
        return None
    q = np.asarray(s["quartile_auc"], dtype=float)  # [T, 4]
    band_mean = np.asarray(s["random_mean"], dtype=float)
    band_std = np.asarray(s["random_std"], dtype=float)
    ok = np.isfinite(q).all(1)
    if not ok.any():
        return None
    # Judge at the t where the top quartile stands out most from the random band, and say how far.
    # "Shows": > 2 std above the band there (and above the lowest quartile). "Does not show" needs
    # the same strength the other way: the top quartile > 2 std *below* the band at every t. A
    # reversed order inside the band is noise, not evidence against the paper.
    z = np.where(ok, (q[:, -1] - band_mean) / np.maximum(band_std, 1e-9), -np.inf)
    ti = int(np.argmax(z))
    rising = bool(q[ti, -1] > q[ti, 0])
    v = True if (z[ti] > 2 and rising) else (False if z[ti] < -2 else None)
    t = s["t"][ti]
    return {
        "id": f"distortion_strata/{attack}",
        "claim": "Samples in the highest-distortion quartile are more exposed (higher AUC) than the lowest (paper Fig. 3).",
        "shows": v,
        "sentence": (f"{NAMES.get(attack, attack)} at t={t}: AUC by distortion quartile "
                     + " / ".join(f"{x:.3f}" for x in q[ti])
                     + f" (lowest → highest); random subsets of the same size {band_mean[ti]:.3f} ± {band_std[ti]:.3f}; "
                     f"the highest quartile is {z[ti]:+.1f} std from the band: "
                     + _word(v, "high-distortion samples leak more.",
                             "high-distortion samples leak less here (more than 2 std below random subsets at every t).",
                             "no clear effect (not 2 std above random subsets at any t).")),
    }


def frequency_finding(freq: dict) -> dict | None:
    if not freq or "r_hf" not in freq:
        return None
    lo_h, hi_h = freq["r_hf_ci"]
    lo_l, hi_l = freq["r_lf_ci"]
    v = True if lo_h > hi_l else (False if hi_h < lo_l else None)
    return {
        "id": "frequency",
        "claim": "Local distortion tracks high-frequency energy more than low-frequency energy (paper §4.4, T3; dataset-dependent).",
        "shows": v,
        "sentence": (f"Pearson r of distortion with high-frequency energy {freq['r_hf']:+.2f} (CI {lo_h:+.2f} to {hi_h:+.2f}), "
                     f"with low-frequency energy {freq['r_lf']:+.2f} (CI {lo_l:+.2f} to {hi_l:+.2f}): "
                     + _word(v, "distortion follows high frequencies.", "distortion follows low frequencies more.",
                             "the two correlations are not distinguishable.")),
    }


def hf_filter_results(arrays: dict, member: np.ndarray, hf_ts: list[int], n_boot: int, seed: int) -> dict:
    out = {}
    for key in [k for k in arrays if k.startswith("hf__")]:
        a = key[4:]
        H = arrays[key]  # [N, T_hf, 2] (plain, filtered) statistics; lower = member
        if not np.isfinite(H).all():
            continue
        auc_plain = metrics_matrix(-H[:, :, 0], member)["auc"]
        ti = int(np.argmax(auc_plain))
        C = -H[:, ti, :]
        pt = metrics_matrix(C, member)["auc"]
        bt = bootstrap_columns(C, member, n_boot, seed)["auc"]
        out[a] = {"t": hf_ts[ti], "auc_plain": float(pt[0]), "auc_filtered": float(pt[1]),
                  "diff": float(pt[1] - pt[0]), "diff_ci": ci(bt[:, 1] - bt[:, 0])}
    return out


def hf_findings(hf: dict) -> list[dict]:
    out = []
    for a, r in hf.items():
        lo, hi = r["diff_ci"]
        v = True if hi < 0 else (False if lo > 0 else None)
        out.append({
            "id": f"hf_filter/{a}",
            "claim": "Attacking through a high-frequency filter of the decoded images lowers AUC (paper App. F, T7).",
            "shows": v,
            "sentence": (f"{NAMES.get(a, a)} at t={r['t']}: decoded-image AUC {r['auc_plain']:.3f} plain vs "
                         f"{r['auc_filtered']:.3f} with the high band removed, {fmt_diff(r['diff'], lo, hi)}: "
                         + _word(v, "the filter lowers AUC.", "the filter raises AUC here.", "no detectable change.")),
        })
    return out
