"""Tidy tables from the results dict (docs/results-schema.md): CSV rows and the terminal summary.

metrics.csv has one row per protocol × attack × mask × k × t with named columns. Rows of the
"all" protocol come from `results["metrics"]` (every t); rows of the "paper" and "calibrated"
protocols come from their per-attack summaries. Under the paper protocol each metric may pick
its own t, so every row also carries `t_<metric>`: the t at which that metric was measured
(`t` itself is the AUC's).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import InputError
from .sentences import attack_name, fmt, fmt_signed, format_ci, verdict_label

__all__ = [
    "METRICS", "METRIC_LABELS", "MASK_LABELS", "METRICS_COLUMNS", "metrics_rows", "difference_rows",
    "k_sweep_rows", "strata_rows", "samples_columns", "write_csv", "summary_table", "headline_rows",
    "headline_notes",
]

METRICS = ("auc", "asr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr")
METRIC_LABELS = {"auc": "AUC", "asr": "ASR", "tpr_at_1pct_fpr": "TPR@1%FPR", "tpr_at_0_1pct_fpr": "TPR@0.1%FPR"}
# Keys of a protocol summary → the mask kinds used in results["metrics"].
_PROTOCOL_MASKS = {"unfiltered": "none", "filtered": "influence", "reverse": "reverse",
                   "random": "random", "channel_matched": "channel"}
MASK_LABELS = {"none": "unfiltered", "influence": "influence filter", "reverse": "reverse (keep least influential)",
               "random": "random drop", "channel": "channel-matched random"}
METRICS_COLUMNS = (
    ["protocol", "attack", "mask", "k", "t", "draws"]
    + [c for m in METRICS for c in (m, f"{m}_ci_lo", f"{m}_ci_hi", f"{m}_std")]
    + [f"t_{m}" for m in METRICS]
    + ["n_members", "n_heldout"]
)


def _num(x):
    """A JSON number or None; NaN stays NaN so CSV shows it as 'nan'."""
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def default_k(results: Mapping) -> int | None:
    k = (results.get("config") or {}).get("k")
    if k is not None:
        return int(k)
    ks = [r.get("k") for r in results.get("metrics", []) if r.get("mask") == "influence"]
    return int(max(set(ks), key=ks.count)) if ks else None


def metrics_rows(results: Mapping) -> list[dict]:
    """All metric rows, both sources, as dicts with METRICS_COLUMNS keys."""
    rows = []
    for r in results.get("metrics", []) or []:
        row = {c: None for c in METRICS_COLUMNS}
        row.update(protocol=r.get("protocol", "all"), attack=r.get("attack"), mask=r.get("mask"),
                   k=r.get("k"), t=r.get("t"), draws=r.get("draws"))
        for m in METRICS:
            row[m] = _num(r.get(m))
            row[f"{m}_std"] = _num(r.get(f"{m}_std"))
            ci = r.get(f"{m}_ci")
            if ci:
                row[f"{m}_ci_lo"], row[f"{m}_ci_hi"] = _num(ci[0]), _num(ci[1])
            row[f"t_{m}"] = r.get("t")
        rows.append(row)
    k = default_k(results)
    for pname, proto in (results.get("protocols") or {}).items():
        for attack, summ in (proto.get("per_attack") or {}).items():
            n_eval = summ.get("n_eval") or {}
            for key, mask in _PROTOCOL_MASKS.items():
                vals = summ.get(key)
                if not vals:
                    continue
                t_of = (summ.get("t") or {}).get(key) or {}
                t_default = vals.get("t")
                row = {c: None for c in METRICS_COLUMNS}
                row.update(protocol=pname, attack=attack, mask=mask, k=0 if mask == "none" else k,
                           n_members=n_eval.get("members"), n_heldout=n_eval.get("heldout"))
                for m in METRICS:
                    row[m] = _num(vals.get(m))
                    row[f"{m}_std"] = _num(vals.get(f"{m}_draw_std", vals.get(f"{m}_std")))
                    ci = vals.get(f"{m}_ci")
                    if ci:
                        row[f"{m}_ci_lo"], row[f"{m}_ci_hi"] = _num(ci[0]), _num(ci[1])
                    row[f"t_{m}"] = t_of.get(m, t_default)
                row["t"] = row["t_auc"]
                rows.append(row)
    return rows


def difference_rows(results: Mapping) -> list[dict]:
    """Paired differences the report states: protocol, attack, comparison, metric, estimate, CI."""
    rows = []
    for pname, proto in (results.get("protocols") or {}).items():
        for attack, summ in (proto.get("per_attack") or {}).items():
            for key, d in summ.items():
                if not key.startswith("diff_") or not isinstance(d, Mapping):
                    continue
                comparison = key[len("diff_"):].replace("filtered_", "filtered - ", 1)
                for m in METRICS:
                    if m in d:
                        ci = d.get(f"{m}_ci") or [None, None]
                        rows.append({"protocol": pname, "attack": attack, "comparison": comparison, "metric": m,
                                     "estimate": _num(d[m]), "ci_lo": _num(ci[0]), "ci_hi": _num(ci[1])})
    return rows


def k_sweep_rows(results: Mapping) -> list[dict]:
    rows = []
    for attack, s in (results.get("k_sweep") or {}).items():
        for i, k in enumerate(s.get("k", [])):
            row = {"attack": attack, "t": s.get("t"), "k": k}
            for col in ("influence", "reverse", "random_mean", "random_std", "channel_mean", "channel_std"):
                v = s.get(col)
                row[col] = _num(v[i]) if v is not None and i < len(v) else None
            rows.append(row)
    return rows


def strata_rows(results: Mapping) -> list[dict]:
    rows = []
    for attack, s in (results.get("strata") or {}).items():
        for i, t in enumerate(s.get("t", [])):
            for q, auc in enumerate(s["quartile_auc"][i]):
                rows.append({"attack": attack, "t": t, "stratum": q + 1, "auc": _num(auc),
                             "random_mean": _num(s["random_mean"][i]), "random_std": _num(s["random_std"][i])})
    return rows


def samples_columns(samples: Mapping | None) -> tuple[list[str], int]:
    """Column order for samples.csv (1-D columns only) and the row count; checks equal lengths."""
    if not samples:
        return [], 0
    first = ["id", "key", "member", "distortion", "caption", "label"]
    cols = [c for c in first if c in samples] + sorted(c for c in samples if c not in first)
    cols = [c for c in cols if np.ndim(samples[c]) == 1]
    lens = {c: len(samples[c]) for c in cols}
    if len(set(lens.values())) > 1:
        raise InputError(f"samples columns differ in length: {lens}")
    return cols, (next(iter(lens.values())) if lens else 0)


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def write_csv(path: Path, columns: list[str], rows: Iterable[Mapping]) -> Path:
    """Write atomically (a killed process leaves the old file or the whole new one)."""
    from .._io import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([_cell(r.get(c)) for c in columns])

    atomic_write(path, write)
    return path


def headline_rows(results: Mapping, protocol: str) -> list[dict]:
    """The Table-1-style rows of one protocol, as display strings (shared by terminal, Markdown, HTML)."""
    proto = (results.get("protocols") or {}).get(protocol) or {}
    out = []
    for attack, s in (proto.get("per_attack") or {}).items():
        un, fi = s.get("unfiltered") or {}, s.get("filtered") or {}
        t = s.get("t") or {}
        d = s.get("diff_filtered_unfiltered") or {}
        dr = s.get("diff_filtered_random") or {}
        t_u, t_f = (t.get("unfiltered") or {}).get("auc"), (t.get("filtered") or {}).get("auc")
        # The verdict is the report's filter_gain finding (calibrated, Holm-adjusted); the paper
        # protocol chose t with the labels it is scored on, so it is never judged.
        finding = next((f for f in results.get("findings") or [] if f.get("id") == f"filter_gain/{attack}"), None)
        verdict = "not judged (optimistic)" if protocol == "paper" else (verdict_label(finding) if finding else "n/a")
        if not fi:  # an unmasked attack (PFAMI, GSA): its unfiltered row only; headline_notes says why
            out.append({
                "attack": attack_name(attack) + " *", "t": str(t_u), "auc": f"{fmt(un.get('auc'))} (unmasked)",
                "diff": "n/a", "verdict": verdict if protocol == "paper" else "no filter finding (unmasked *)",
                "vs_random": "n/a", "asr": fmt(un.get("asr")), "tpr1": fmt(un.get("tpr_at_1pct_fpr")),
                "tpr01": fmt(un.get("tpr_at_0_1pct_fpr")),
            })
            continue
        out.append({
            "attack": attack_name(attack),
            "t": f"{t_u}/{t_f}" if t_u != t_f else str(t_u),
            "auc": f"{fmt(un.get('auc'))} → {fmt(fi.get('auc'))}",
            "diff": f"{fmt_signed(d.get('auc'))} ({format_ci(d.get('auc_ci'))})",
            "verdict": verdict,
            "vs_random": f"{fmt_signed(dr.get('auc'))} ({format_ci(dr.get('auc_ci'))})" if dr else "n/a",
            "asr": f"{fmt(un.get('asr'))} → {fmt(fi.get('asr'))}",
            "tpr1": f"{fmt(un.get('tpr_at_1pct_fpr'))} → {fmt(fi.get('tpr_at_1pct_fpr'))}",
            "tpr01": f"{fmt(un.get('tpr_at_0_1pct_fpr'))} → {fmt(fi.get('tpr_at_0_1pct_fpr'))}",
        })
    return out


def headline_notes(results: Mapping, protocol: str) -> list[str]:
    """Why a row of the protocol's table is unmasked (*), or an attack has no row there."""
    proto = (results.get("protocols") or {}).get(protocol) or {}
    notes = []
    for attack, s in (proto.get("per_attack") or {}).items():
        if s.get("unmasked"):
            how = f"{s['protocol_note']}; " if s.get("protocol_note") else ""
            notes.append(f"* {attack_name(attack)}: {how}reported unmasked: {s['unmasked']}.")
    for attack, why in (proto.get("omitted") or {}).items():
        notes.append(f"{attack_name(attack)} has no row here: {why}.")
    return notes


HEADLINE_COLUMNS = [
    ("attack", "attack"), ("t", "t (unf/filt)"), ("auc", "AUC unfiltered → filtered"),
    ("diff", "difference (filtered − unfiltered)"), ("verdict", "verdict"),
    ("vs_random", "filtered − random drop"), ("asr", "ASR"), ("tpr1", "TPR@1%FPR"), ("tpr01", "TPR@0.1%FPR"),
]


def _text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def summary_table(results: Mapping) -> str:
    """Plain-text summary for the terminal: per protocol, each attack unfiltered → filtered."""
    blocks = []
    k = default_k(results)
    for pname, proto in (results.get("protocols") or {}).items():
        rows = headline_rows(results, pname)
        if not rows:
            continue
        title = f"Protocol '{pname}': {proto.get('description', '')}".rstrip(": ")
        keys = [c for c, _ in HEADLINE_COLUMNS if c != "vs_random"]
        header = [label for c, label in HEADLINE_COLUMNS if c != "vs_random"]
        body = [[r[c] for c in keys] for r in rows]
        blocks.append(title + "\n" + _text_table(header, body)
                      + "".join("\n" + n for n in headline_notes(results, pname)))
    if not blocks:
        return "no protocol summaries in the results"
    head = f"Membership-inference AUC, unfiltered → influence-filtered (drop {k}% least influential latent dims)" \
        if k is not None else "Membership-inference AUC, unfiltered → influence-filtered"
    return head + "\n\n" + "\n\n".join(blocks)


def markdown_table(results: Mapping, protocol: str) -> str:
    rows = headline_rows(results, protocol)
    if not rows:
        return ""
    keys = [c for c, _ in HEADLINE_COLUMNS]
    lines = ["| " + " | ".join(label for _, label in HEADLINE_COLUMNS) + " |",
             "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in keys) + " |" for r in rows]
    notes = headline_notes(results, protocol)
    return "\n".join(lines + ([""] + [n.replace("*", "\\*", 1) for n in notes] if notes else []))
