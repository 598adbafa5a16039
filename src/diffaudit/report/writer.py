"""`write_report`: the report folder — results.json, tidy CSVs, PNG plots, report.html, summary.md.

It reads the results dict (docs/results-schema.md) and computes nothing heavy; a section that
is missing (no strata, no images, no hf_filter, ...) only drops its plot or table.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError
from . import plots, plots_samples
from .html import render_html
from .._io import atomic_write_bytes
from .sentences import FINDINGS_NOTE, verdict_label
from .tables import (
    METRICS_COLUMNS, default_k, difference_rows, k_sweep_rows, markdown_table, metrics_rows,
    samples_columns, strata_rows, write_csv,
)

__all__ = ["write_report", "rewrite_report", "read_samples_csv", "json_safe", "FIGURES"]


def json_safe(x):
    """Plain JSON: numpy scalars/arrays → Python, NaN/Inf → null (strict JSON has no NaN)."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def _k_text(results) -> str:
    k = default_k(results)
    return f"{k}%" if k is not None else "k%"


# (file, title, caption(results) -> str, draw(results, samples, images, path) -> bool)
FIGURES = [
    ("roc.png", "ROC curves, unfiltered vs influence-filtered",
     lambda r: "How many members an attack finds (true positive rate) against how many held-out images it wrongly "
               "flags (false positive rate), over all thresholds, at the attack's best t. Log-log axes enlarge the "
               "low false-positive corner where an attacker is confident; the dashed line marks 1% FPR, the dotted "
               f"diagonal is guessing. 'Filtered' drops the {_k_text(r)} least influential latent dims before the norm.",
     lambda r, s, i, p: plots.plot_roc(r, p)),
    ("auc_vs_t.png", "AUC against the diffusion timestep",
     lambda r: "Each attack queried at every timestep t of its grid, on all samples. Lines: unfiltered, influence "
               "filter, reverse mask; dashed lines with shaded bands: random and channel-matched random drops "
               "(mean ± std over mask draws at fixed samples: how much the draw matters, not sampling uncertainty). The "
               "dotted line is chance (0.5). Curves over all samples are descriptive; the verdicts are in the findings.",
     lambda r, s, i, p: plots.plot_auc_vs_t(r, p)),
    ("auc_vs_k.png", "AUC against the share of dims dropped",
     lambda r: "At the attack's best t: the influence filter drops the k% least influential dims; reverse drops "
               "the most influential; the bands are random drops of the same number of dims (anywhere, or matched "
               "per latent channel), mean ± std over mask draws at fixed samples. Descriptive: whether the filter "
               "helps is judged in the findings, on held-out samples with CIs over the samples.",
     lambda r, s, i, p: plots.plot_auc_vs_k(r, p)),
    ("strata.png", "AUC by decoder-distortion quartile (paper Fig. 3)",
     lambda r: "Samples split into four quartiles of local distortion (thresholds over members and held-out "
               "together); the attack is scored within each quartile. The grey band is random subsets of the same "
               "sizes (mean ± std over subsets). The paper finds darker (higher-distortion) lines on top; the "
               "finding tests the highest against the lowest quartile on the evaluation fold.",
     lambda r, s, i, p: plots.plot_strata(r, p)),
    ("latent_usage.png", "How much of the latent space the decoder uses",
     lambda r: "Left: mean influence of each latent channel on the decoded image (½ log of the Jacobian's diagonal, "
               "in nats; error bars: std over samples and positions). Right: the mean influence of each latent "
               "position. A channel far below the others is unused: dropping it cannot help an attack. "
               + ((r.get("latent_usage") or {}).get("note") or ""),
     lambda r, s, i, p: plots_samples.plot_latent_usage(r, p)),
    ("distortion.png", "Decoder distortion, members vs held-out (paper Fig. 2)",
     lambda r: "Distribution of each image's local distortion (sum of the log singular values of the decoder "
               "Jacobian) for members and held-out images; with thumbnails of the most and least distorted images.",
     lambda r, s, i, p: plots_samples.plot_distortion(s, i, p)),
    ("frequency.png", "Distortion against image frequency content (paper T3)",
     lambda r: "Each point is an image: its local distortion against the summed Fourier amplitude inside (low "
               "frequencies) and outside (high frequencies) a centred radius. r is Pearson's correlation with a "
               "bootstrap 95% CI.",
     lambda r, s, i, p: plots_samples.plot_frequency(r, s, i, p)),
    ("at_risk.png", "Most exposed images",
     lambda r: "Top row: members with the highest membership scores (the attacker's surest hits). Bottom row: "
               "held-out images with the highest scores (false alarms). Score = −attack statistic; dist = local "
               "distortion.",
     lambda r, s, i, p: plots_samples.plot_at_risk(r, s, i, p)),
]


def _check_inputs(results, samples, images):
    if not isinstance(results, Mapping):
        raise InputError(f"results must be a dict (see docs/results-schema.md), got {type(results).__name__}")
    if samples is not None and not isinstance(samples, Mapping):
        raise InputError(f"samples must be a dict of per-sample columns, got {type(samples).__name__}")
    _, n = samples_columns(samples)
    if images is not None:
        images = np.asarray(images)
        if images.ndim not in (3, 4):
            raise InputError(f"images must be [N, H, W, C] or [N, H, W] thumbnails, got shape {images.shape}")
        if samples and n and len(images) != n:
            raise InputError(f"images has {len(images)} thumbnails but samples has {n} rows")
        if images.ndim == 3:
            images = images[..., None]
    return images


def _summary_md(results: Mapping, written: list[str]) -> str:
    model = (results.get("model") or {}).get("path", "?")
    split = results.get("split") or {}
    n_m = (split.get("members") or {}).get("n", "?")
    n_h = (split.get("heldout") or {}).get("n", "?")
    lines = [f"# diffaudit report: {model}", "",
             f"Membership inference on {n_m} members vs {n_h} held-out images (seed {results.get('seed', '?')}). "
             "AUC 0.5 = chance; filtered = influence-filtered attack vector.", ""]
    conv = results.get("data_conversions") or {}  # what the images went through on the way to the model
    lines += [f"Data conversions: {', '.join(f'{k}: {v}' for k, v in conv.items())}.", ""] if conv else []
    for pname, proto in (results.get("protocols") or {}).items():
        t = markdown_table(results, pname)
        if t:
            lines += [f"## Protocol `{pname}`", "", proto.get("description", ""), "", t, ""]
    f = results.get("findings") or []
    if f:
        lines += ["## Findings", "", FINDINGS_NOTE, ""] + [f"- **{verdict_label(x)}**: {x.get('sentence', '')}" for x in f] + [""]
    w = results.get("warnings") or []
    if w:
        lines += ["## Warnings", ""] + [f"- {x}" for x in w] + [""]
    lines += ["Files: " + ", ".join(f"`{x}`" for x in written + ["summary.md"]), ""]
    return "\n".join(lines)


def write_report(out_dir, results: Mapping, samples: Mapping | None, images=None) -> dict[str, Path]:
    """Write the report folder and return {file name: path} of what was written.

    results: the audit's JSON-able dict; samples: per-sample columns (numpy arrays of length N);
    images: uint8 thumbnails [N, H, W, C] (or [N, H, W]) in the order of `samples`, or None.
    """
    images = _check_inputs(results, samples, images)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out}: cannot create the report folder ({err.strerror})") from None
    paths: dict[str, Path] = {}

    def put(name: str, path: Path):
        paths[name] = path

    p = out / "results.json"
    atomic_write_bytes(p, (json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n").encode("utf-8"))
    put("results.json", p)
    put("metrics.csv", write_csv(out / "metrics.csv", METRICS_COLUMNS, metrics_rows(results)))
    diffs = difference_rows(results)
    if diffs:
        put("differences.csv", write_csv(out / "differences.csv", list(diffs[0]), diffs))
    for name, rows in (("k_sweep.csv", k_sweep_rows(results)), ("strata.csv", strata_rows(results))):
        if rows:
            put(name, write_csv(out / name, list(rows[0]), rows))
    cols, n = samples_columns(samples)
    if cols:
        rows = ({c: samples[c][i] for c in cols} for i in range(n))
        put("samples.csv", write_csv(out / "samples.csv", cols, rows))

    figures = []
    for fname, title, caption, draw in FIGURES:
        path = out / fname
        if draw(results, samples, images, path):
            put(fname, path)
            figures.append((title, path, caption(results)))
        elif path.exists():
            path.unlink()  # a stale plot from an earlier report in this folder would mislead

    listed = list(paths) + ["report.html"]
    atomic_write_bytes(out / "summary.md", _summary_md(results, listed).encode("utf-8"))
    put("summary.md", out / "summary.md")
    html = render_html(results, figures, samples=samples, images=images, files=listed + ["summary.md"])
    atomic_write_bytes(out / "report.html", html.encode("utf-8"))
    put("report.html", out / "report.html")
    return paths


def _column(values: list[str]) -> np.ndarray:
    """A samples.csv column back to numpy: bool, int, float or str, whichever parses."""
    if all(v in ("true", "false") for v in values):
        return np.array([v == "true" for v in values])
    for kind in (int, float):
        try:
            return np.array([kind(v) if v != "" else np.nan for v in values])
        except ValueError:
            continue
    return np.array(values, dtype=object)


def read_samples_csv(path) -> dict:
    """samples.csv (as written by write_report) → {column: numpy array}."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if not rows:
        raise InputError(f"{path}: empty file, expected a header row")
    header, body = rows[0], rows[1:]
    if any(len(r) != len(header) for r in body):
        raise InputError(f"{path}: rows have differing numbers of columns")
    return {c: _column([r[j] for r in body]) for j, c in enumerate(header)}


def rewrite_report(report_dir, out_dir=None) -> dict[str, Path]:
    """Render a report again from a folder's results.json and samples.csv (no thumbnails)."""
    src = Path(report_dir)
    rpath = src / "results.json"
    try:
        results = json.loads(rpath.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"{rpath}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{rpath}: not valid JSON ({err.msg}, line {err.lineno})") from None
    spath = src / "samples.csv"
    samples = read_samples_csv(spath) if spath.exists() else None
    return write_report(src if out_dir is None else out_dir, results, samples, images=None)
