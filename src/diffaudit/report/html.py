"""The self-contained `report.html`: every image a base64 data URI, every user string escaped.

Written for a reader who has not seen the code: what was audited, the headline table, one
sentence per finding (computed by the pipeline, rendered here), what each number means, and
the plots with captions.
"""
from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .plots_samples import sample_index, to_display
from .sentences import FINDINGS_NOTE, attack_name, fmt, fmt_signed, format_ci, verdict_label
from .tables import HEADLINE_COLUMNS, default_k, headline_notes, headline_rows

__all__ = ["render_html", "GLOSSARY", "e"]


def e(x) -> str:
    """HTML-escape any value (quotes included)."""
    return escape("" if x is None else str(x), quote=True)


GLOSSARY = [
    ("Member / held-out", "Members are the images the diffusion model was trained on; held-out images come from "
     "the same source but were not trained on. The audit asks how well an attacker can tell them apart."),
    ("AUC", "Area under the ROC curve: the chance that a random member gets a higher membership score than a random "
     "held-out image. 0.5 = guessing, 1.0 = perfect separation."),
    ("ASR", "Attack success rate: the best balanced accuracy ½(TPR + 1 − FPR) over all thresholds."),
    ("TPR@1%FPR", "Share of members found when at most 1% of held-out images may be wrongly flagged. The number "
     "that matters for a confident attacker; TPR@0.1%FPR is the same at 0.1%."),
    ("t", "The diffusion timestep at which the model is queried (0 = almost no noise)."),
    ("{attacks}", "{count} membership attack{s}. Each queries the noise predictor and takes a norm of what "
     "comes back; a small norm means the model fits the image well, i.e. probably a member."),
    ("Influence filter (k)", "Before taking the norm, drop the k% of latent dimensions with the least influence on "
     "the decoded image (per sample, from the decoder's Jacobian). The paper finds this raises every attack's AUC."),
    ("Random / channel-matched / reverse", "Controls: drop k% of the dims at random; drop as many dims from each "
     "latent channel as the filter does, but at random within the channel; keep only the least influential dims."),
    ("Local distortion", "How much the decoder stretches a small neighbourhood of the latent: the sum of the log "
     "singular values of its Jacobian. The paper finds high-distortion images leak more."),
    ("Protocols", "'paper': the best t for each metric, chosen looking at the answers (optimistic, as published). "
     "'calibrated': t chosen on one half of the samples, metrics measured on the other half (an honest estimate)."),
    ("95% CI", "Bootstrap confidence interval. A difference whose CI includes 0 is not detectable in this run."),
]


def glossary_entries(results: Mapping) -> list[tuple[str, str]]:
    """GLOSSARY with the attacks entry naming the attacks of this run (its config, else the registry)."""
    from ..attacks import ATTACKS

    names = [attack_name(a) for a in ((results.get("config") or {}).get("attacks") or ATTACKS)]
    words = ["No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten"]
    count = words[len(names)] if len(names) < len(words) else str(len(names))
    return [(", ".join(names), v.format(count=count, s="" if len(names) == 1 else "s")) if k == "{attacks}" else (k, v)
            for k, v in GLOSSARY]


def data_uri_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _thumb_uri(img, size: int = 64) -> str | None:
    from PIL import Image

    a, cmap = to_display(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(a))  # [H,W] → "L", [H,W,3] → "RGB"
    scale = max(1, size // max(im.size))
    im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1150px;margin:24px auto;padding:0 18px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:1.8em}
.lead{font-size:1.08em;background:#f4f7fb;border-left:4px solid #4c72b0;padding:10px 14px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.92em} th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f2f2f2} td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;font-weight:600;white-space:nowrap}
.shows{background:#d8f0d8;color:#165c16}.shows-the-opposite{background:#f8d7d7;color:#8a1c1c}.not-enough-samples,.not-applicable{background:#eee;color:#555}
.inconclusive{background:#eee;color:#555}
.wrap{overflow-x:auto} figure{margin:18px 0;padding:8px;border:1px solid #e4e4e4;border-radius:6px} figure img{max-width:100%}
figcaption{font-size:.92em;color:#333;margin-top:6px} .warn{background:#fff4e0;border-left:4px solid #f0a020;
padding:6px 12px} dt{font-weight:600;margin-top:6px} dd{margin-left:18px} .muted{color:#666;font-size:.9em}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:.82em}
"""


def _audited(results: Mapping) -> str:
    model = results.get("model") or {}
    split = results.get("split") or {}
    vers = results.get("versions") or {}
    timing = results.get("timing") or {}
    items = [("Model", model.get("path")), ("Kind", model.get("kind")),
             ("Latent shape", "×".join(str(x) for x in model["latent_shape"]) if model.get("latent_shape") else None),
             ("Model sha256", (model.get("sha256") or "")[:16] or None),
             ("Data conversions", ", ".join(f"{k}: {v}" for k, v in (results.get("data_conversions") or {}).items())
              or None)]
    for role, label in (("members", "Members"), ("heldout", "Held-out")):
        s = split.get(role) or {}
        if s:
            items.append((label, f"{s.get('n', '?')} images from {s.get('path', '?')}"
                          + (f" (sha256 {str(s['sha256'])[:12]}…)" if s.get("sha256") else "")))
    items += [("Seed", results.get("seed")), ("Created", results.get("created")),
              ("diffaudit", results.get("diffaudit_version")),
              ("Software", ", ".join(f"{k} {v}" for k, v in vers.items()) if vers else None),
              ("Run time", f"{timing['total_s']:.0f} s" if isinstance(timing.get("total_s"), (int, float)) else None)]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in items if v not in (None, ""))
    return f"<table>{rows}</table>"


def _lead(results: Mapping) -> str:
    """One plain sentence: the strongest attack and its AUC under both protocols."""
    paper = ((results.get("protocols") or {}).get("paper") or {}).get("per_attack") or {}
    cal = ((results.get("protocols") or {}).get("calibrated") or {}).get("per_attack") or {}
    best = None
    for a, s in paper.items():
        auc = (s.get("unfiltered") or {}).get("auc")
        if isinstance(auc, (int, float)) and (best is None or auc > best[1]):
            best = (a, auc)
    if best is None:
        return ""
    a, auc = best
    cal_un = (cal.get(a) or {}).get("unfiltered") or {}
    cal_auc, cal_ci = cal_un.get("auc"), cal_un.get("auc_ci")
    tail = f" ({fmt(cal_auc)} when t is chosen on a separate calibration fold)" if cal_auc is not None else ""
    ci = cal_ci or (paper[a].get("unfiltered") or {}).get("auc_ci")
    if ci and ci[0] is not None and ci[0] > 0.5:
        strength = "strongly" if auc >= 0.8 else ("clearly" if auc >= 0.65 else "measurably")
        verdict = f"The model {strength} reveals which images it was trained on (the AUC's 95% CI lies above 0.5)."
    elif ci:
        verdict = "This run cannot tell the attack from guessing: the AUC's 95% CI includes 0.5."
    else:
        verdict = ""
    return (f"<p class='lead'>The strongest attack, <b>{e(attack_name(a))}</b>, tells training images from held-out "
            f"images apart with AUC <b>{e(fmt(auc))}</b>{e(tail)}; 0.5 would be guessing. {e(verdict)}</p>")


_OTHER = {"asr": "ASR", "tpr1": "TPR@1%FPR", "tpr01": "TPR@0.1%FPR"}  # stacked in one cell to fit the page


def _cell(col: str, text: str) -> str:
    """Headline cell; an estimate with its CI goes on two lines so the table fits the page."""
    if col in ("diff", "vs_random") and " (" in text:
        est, ci = text.split(" (", 1)
        return f"<b>{e(est)}</b><br><span class='muted'>{e(ci.rstrip(')'))}</span>"
    return e(text)


def _headline(results: Mapping) -> str:
    out = []
    k = default_k(results)
    for pname, proto in (results.get("protocols") or {}).items():
        rows = headline_rows(results, pname)
        if not rows:
            continue
        main = [(c, label) for c, label in HEADLINE_COLUMNS if c not in _OTHER]
        head = "".join(f"<th>{e(label)}</th>" for _, label in main) + "<th>other metrics (unfiltered → filtered)</th>"
        body = "".join("<tr>" + "".join(f"<td class='num'>{_cell(c, r[c])}</td>" for c, _ in main)
                       + "<td class='num'>" + "<br>".join(f"{e(lab)} {e(r[c])}" for c, lab in _OTHER.items())
                       + "</td></tr>" for r in rows)
        notes = "".join(f"<p class='muted'>{e(n)}</p>" for n in headline_notes(results, pname))
        out.append(f"<h3>Protocol “{e(pname)}”</h3><p class='muted'>{e(proto.get('description', ''))}</p>"
                   f"<div class='wrap'><table><tr>{head}</tr>{body}</table></div>{notes}")
    if not out:
        return ""
    note = (f"Filtered = the attack's vector with the {k}% least influential latent dims dropped. " if k is not None
            else "") + "Differences are paired bootstrap estimates with 95% CIs; “t (unf/filt)” is the timestep used."
    return "<h2>Headline results</h2>" + f"<p class='muted'>{e(note)}</p>" + "".join(out)


def _transfer(results: Mapping) -> str:
    """What a deployed attacker gets: thresholds fitted on the calibration fold, applied to the rest."""
    cal = ((results.get("protocols") or {}).get("calibrated") or {}).get("per_attack") or {}
    rows = []
    for a, s in cal.items():
        for label, by_fpr in (s.get("threshold_transfer") or {}).items():
            for key, r in by_fpr.items():
                tag = "" if r.get("resolvable", True) else " (calibration fold too small for this FPR)"
                rows.append(f"<tr><td>{e(attack_name(a))}</td><td>{e(label)}</td><td class='num'>{e(fmt(r['target_fpr'], 3))}</td>"
                            f"<td class='num'>{e(fmt(r['fpr'], 3))} ({e(format_ci(r['fpr_ci'], 3, signed=False))})</td>"
                            f"<td class='num'>{e(fmt(r['tpr'], 3))} ({e(format_ci(r['tpr_ci'], 3, signed=False))}){e(tag)}</td></tr>")
    if not rows:
        return ""
    return ("<h3>A deployed attacker's threshold</h3><p class='muted'>In-sample TPR@FPR picks its threshold with the "
            "labels it is scored on. Here the threshold for each target FPR is fitted on the calibration fold's "
            "held-out scores and applied unchanged to the evaluation fold: the realized FPR and TPR, with exact "
            "binomial 95% CIs.</p><table><tr><th>attack</th><th>statistic</th><th>target FPR</th>"
            "<th>realized FPR</th><th>TPR</th></tr>" + "".join(rows) + "</table>")


def _owner(results: Mapping) -> str:
    """The data owner's question: how many training images make their use detectable."""
    o = results.get("owner_detection") or {}
    if not o.get("sizes"):
        return ""
    cells = "".join(f"<tr><td class='num'>{e(n)}</td><td class='num'>{e(fmt(p, 2))}</td>"
                    f"<td class='num'>{e(fmt(ci[0], 2))}–{e(fmt(ci[1], 2))}</td></tr>"
                    for n, p, ci in zip(o["sizes"], o["power"], o["power_ci95"]))
    need = o.get("n_needed")
    lead = (f"With this model, an owner of {need} training images would detect their use (p < {o['alpha']:g}) with "
            f"probability ≥ {o['target_power']:.0%}." if need else
            f"With this model, no tested number of training images (up to {o['sizes'][-1]}) reached "
            f"{o['target_power']:.0%} probability of detection at p < {o['alpha']:g}.")
    return ("<h3>Dataset inference: how many images an owner needs</h3><p>" + e(lead) + "</p><p class='muted'>"
            "The dataset test (docs/dataset-inference.md) on random subsets of n members as the suspect set against "
            f"the held-out images ({o['n_reference']}) as the reference, {o['repeats']} subsets per n; probability = "
            "share of subsets rejected, with a 95% Clopper–Pearson interval.</p><table><tr><th>n images</th>"
            "<th>probability of detection</th><th>95% CI</th></tr>" + cells + "</table>")


def _findings(results: Mapping) -> str:
    f = results.get("findings") or []
    if not f:
        return ""
    rows = []
    for x in f:
        label = verdict_label(x)
        rows.append(f"<tr><td><span class='badge {e(label.replace(' ', '-'))}'>{e(label)}</span></td>"
                    f"<td>{e(x.get('claim'))}</td><td>{e(x.get('sentence'))}</td></tr>")
    none = [f"{attack_name(a)}: {n['findings']}." for a, n in (results.get("attacks") or {}).items()
            if n.get("findings") and not n.get("skipped")]  # unmasked attacks: why they have no filter findings
    return ("<h2>The paper's findings in this run</h2><p class='muted'>" + e(FINDINGS_NOTE) + "</p>"
            "<table><tr><th>this run</th><th>the paper's claim</th><th>what this run measured</th></tr>"
            + "".join(rows) + "</table>" + "".join(f"<p class='muted'>{e(x)}</p>" for x in none))


def _at_risk(results: Mapping, samples, images) -> str:
    risk = results.get("at_risk") or {}
    parts = []
    for key, title, text in (
        ("members", "Training images most at risk", "Members with the highest membership score (score = − the "
         "attack statistic: higher means more member-like): an attacker would flag these first."),
        ("heldout_false_positives", "Held-out images most often taken for members",
         "Held-out images with the highest membership score: false alarms, often near-duplicates or very simple images."),
    ):
        lst = risk.get(key) or []
        if not lst:
            continue
        rows = []
        for rank, x in enumerate(lst, 1):
            i = sample_index(samples, x.get("id", x.get("key")))
            img = ""
            if images is not None and i is not None:
                uri = _thumb_uri(images[i])
                img = f"<img src='{e(uri)}' alt='{e(x.get('key'))}' width='48'>" if uri else ""
            label = x.get("caption", x.get("label"))
            if label is None and i is not None:  # fall back on the sample's own caption / label
                label = next((samples[c][i] for c in ("caption", "label") if c in samples), "")
            rows.append(f"<tr><td class='num'>{rank}</td><td>{img}</td><td>{e(x.get('key', x.get('id')))}</td>"
                        f"<td class='num'>{e(fmt(x.get('score')))}</td><td class='num'>{e(fmt(x.get('distortion'), 2))}</td>"
                        f"<td>{e(label)}</td></tr>")
        parts.append(f"<h3>{e(title)}</h3><p class='muted'>{e(text)}</p><table><tr><th>#</th><th>image</th><th>key</th>"
                     "<th>score</th><th>distortion</th><th>caption / label</th></tr>" + "".join(rows) + "</table>")
    return ("<h2>Individual images</h2>" + "".join(parts)) if parts else ""


def _extras(results: Mapping) -> str:
    out = []
    u = results.get("latent_usage") or {}
    if u.get("note") and not u.get("channel_mean_influence"):  # else the plot's caption carries it
        out.append(f"<p><b>Latent usage.</b> {e(u['note'])}</p>")
    hf = results.get("hf_filter") or {}
    if hf:
        rows = "".join(
            f"<tr><td>{e(attack_name(a))}</td><td class='num'>{e(r.get('t'))}</td><td class='num'>{e(fmt(r.get('auc_plain')))}</td>"
            f"<td class='num'>{e(fmt(r.get('auc_filtered')))}</td><td class='num'>"
            f"{e(fmt_signed(r.get('diff', (r.get('auc_filtered') or 0) - (r.get('auc_plain') or 0))))} "
            f"({e(format_ci(r.get('diff_ci')))})</td></tr>" for a, r in hf.items())
        out.append("<h3>High-frequency filter attack (paper App. F)</h3><p class='muted'>Attacks measured on "
                   "decoded images, plain vs with the high spatial frequencies scaled down before the norm, each at its "
                   "own t chosen on the calibration fold and measured on the evaluation fold (DeLong CI). The paper "
                   "finds this lowers AUC for latent diffusion models.</p><table><tr><th>attack</th><th>t</th>"
                   "<th>AUC plain</th><th>AUC high-freq filtered</th><th>difference (95% CI)</th></tr>" + rows + "</table>")
    notes = [f"{attack_name(a)}: {n}" for a, s in (results.get("strata") or {}).items() for n in s.get("notes", [])]
    if results.get("distortion_subset"):
        notes.insert(0, results["distortion_subset"]["note"])
    if notes:
        out.append("<p class='muted'>Distortion strata notes: " + "; ".join(e(n) for n in notes) + "</p>")
    return "".join(out)


def render_html(results: Mapping, figures: Sequence[tuple[str, Path, str]], samples=None, images=None,
                files: Sequence[str] = ()) -> str:
    """The whole page; `figures` = [(title, png path, caption)] in display order."""
    model = (results.get("model") or {}).get("path") or "a diffusion model"
    warn = results.get("warnings") or []
    figs = "".join(
        f"<figure><img src='{data_uri_png(p)}' alt='{e(title)}'><figcaption><b>{e(title)}.</b> {e(cap)}</figcaption></figure>"
        for title, p, cap in figures)
    glossary = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in glossary_entries(results))
    config = json.dumps(results.get("config") or {}, indent=2, sort_keys=True, default=str)
    return "".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>diffaudit report: {e(model)}</title><style>{CSS}</style></head><body>",
        f"<h1>Membership-inference audit</h1><p class='muted'>{e(model)}</p>",
        _lead(results),
        "<h2>What was audited</h2><p>diffaudit checks whether someone with query access to this diffusion model "
        "can tell which images it was trained on (membership inference), and whether the decoder's geometry explains "
        "which images leak.</p>",
        _audited(results),
        ("<h2>Warnings</h2>" + "".join(f"<p class='warn'>{e(w)}</p>" for w in warn)) if warn else "",
        _headline(results),
        _transfer(results),
        _owner(results),
        _findings(results),
        f"<h2>Plots</h2>{figs}" if figs else "",
        _extras(results),
        _at_risk(results, samples, images),
        f"<h2>How to read the numbers</h2><dl>{glossary}</dl>",
        ("<h2>Files</h2><ul>" + "".join(f"<li>{e(f)}</li>" for f in files) + "</ul>") if files else "",
        f"<details><summary>Configuration of this run</summary><pre>{e(config)}</pre></details>",
        "</body></html>",
    ])
