"""`diffaudit dynamics`: every prompt of a prompts file through `analyze_prompt`, one result
file per prompt written atomically (a rerun skips the finished ones), then the summary:
detector separation (AUC, TPR@1%FPR: deviation score vs Wen et al.), correlation of the
deviation score with severity (Pearson/Spearman), the mitigation table, CSV and plots.

Report folder layout:
    OUT/config.json            the settings (a rerun with other settings is refused)
    OUT/prompts/<id>.json      per-prompt results (see analyze.py)
    OUT/summary.json           the aggregate below
    OUT/per_prompt.csv         one row per prompt
    OUT/plots/*.png            coefficient curves, alignment, diversity, Wen, loss, severity, mitigation
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from .analyze import DynamicsConfig, analyze_prompts
from .detector import separation
from .paths import path_of
from .prompts import PromptItem, load_image, read_prompts, resolve_image


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_config(out: Path, cfg: dict) -> None:
    path = out / "config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != cfg:
            diff = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            raise InputError(f"{out} holds results of other settings ({', '.join(diff)}); use another --out")
    else:
        _atomic_json(path, cfg)


def encode_images(model, items: list[PromptItem], images_dir) -> dict:
    """{id: (z_x [1, *latent], pixels [C, H, W])} for the prompts that name an image."""
    out = {}
    for it in items:
        p = resolve_image(it, images_dir)
        if p is None:
            continue
        x = load_image(p, model.image_shape)
        out[it.id] = (model.encode(x.unsqueeze(0)).float().cpu(), x)
    return out


def run_dynamics(model, prompts, out_dir, images_dir=None, config: DynamicsConfig | None = None,
                 embedder=None, progress: bool = True, plots: bool = True, prompt_batch: int = 1) -> dict:
    """Analyse every prompt (a prompts file path or a list of `PromptItem`) and write the report.

    Resumable: prompts whose result file exists are loaded, not recomputed. `prompt_batch`
    prompts (× seeds × 2 for guidance) share one denoiser batch.
    """
    if prompt_batch < 1:
        raise InputError(f"prompt_batch must be ≥ 1, got {prompt_batch}")
    path_of(model)  # a family the dynamics cannot sample is refused before anything is written
    cfg = (config or DynamicsConfig()).validate()
    items = read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
    if embedder is not None:
        cfg.similarity = "embedding"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ...audit.fingerprint import model_weights_hash

    # The weights key the folder: another model (or dtype) is refused, not mixed into this report.
    settings = {"config": cfg.to_dict(), "model": str(getattr(model, "source", "") or ""),
                "weights_sha256": model_weights_hash(model), "prompts": [[it.id, it.prompt, it.image] for it in items]}
    _check_config(out, settings)
    images = encode_images(model, items, images_dir)
    center = None
    if cfg.center == "mean" and len(images) >= 2:
        center = torch.cat([z for z, _ in images.values()]).mean(0)
    results, pending = {}, []
    for item in items:
        path = out / "prompts" / f"{item.id}.json"
        if path.is_file():  # finished in an earlier run
            results[item.id] = json.loads(path.read_text())
        else:
            pending.append(item)
    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc="dynamics: prompts")
    for k in range(0, len(pending), prompt_batch):
        chunk = pending[k : k + prompt_batch]
        zs = [images.get(it.id, (None, None)) for it in chunk]
        rs = analyze_prompts(model, [it.prompt for it in chunk], [z for z, _ in zs], cfg, [x for _, x in zs],
                             center, embedder)
        for item, r in zip(chunk, rs):
            r.update({"id": item.id, "prompt": item.prompt, "image": item.image, "memorized": item.memorized})
            _atomic_json(out / "prompts" / f"{item.id}.json", r)
            results[item.id] = r
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    results = {it.id: results[it.id] for it in items}
    summary = summarize(results, cfg)
    _atomic_json(out / "summary.json", summary)
    write_csv(out / "per_prompt.csv", results)
    if plots:
        from .plots import plot_all

        plot_all(results, summary, out / "plots")
    return summary


SCORES = {  # name -> how to read it from a prompt result (higher = more memorized)
    "D0_guided": lambda r: r["guided"]["D0"],
    "DT_guided": lambda r: r["guided"]["DT"],
    "D0_unguided": lambda r: r["unguided"]["D0"],
    "DT_unguided": lambda r: r["unguided"]["DT"],
    "wen_first1": lambda r: r["guided"]["wen"].get("first1"),
    "wen_first10": lambda r: r["guided"]["wen"].get("first10"),
    "wen_all": lambda r: r["guided"]["wen"]["all"],
}


def _corr(a, b) -> dict:
    from scipy.stats import pearsonr, spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"pearson": None, "spearman": None, "n": len(a)}
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0]), "n": len(a)}


def summarize(results: dict, cfg: DynamicsConfig) -> dict:
    """Detector separation, severity correlations and the mitigation table over all prompts."""
    rs = list(results.values())
    labelled = [r for r in rs if r.get("memorized") is not None]
    det = {}
    for name, get in SCORES.items():
        if any(get(r) is None for r in labelled):
            continue
        det[name] = separation([get(r) for r in labelled if r["memorized"]],
                               [get(r) for r in labelled if not r["memorized"]])
    sev = [r for r in rs if r["guided"]["severity"] is not None]
    corr = {name: _corr([get(r) for r in sev], [r["guided"]["severity"]["mean"] for r in sev])
            for name, get in SCORES.items() if all(get(r) is not None for r in sev)}
    groups = {"all": rs, "memorized": [r for r in rs if r.get("memorized") is True],
              "not_memorized": [r for r in rs if r.get("memorized") is False]}

    def mean(vals):
        v = [x for x in vals if x is not None and math.isfinite(x)]
        return float(np.mean(v)) if v else None

    mitig = {}
    for g, grp in groups.items():
        rows = []
        for m in [0] + [d for d in cfg.delays if d > 0]:
            runs = [r["guided"] if m == 0 else r["delayed"][str(m)] for r in grp]
            rows.append({"delay": m, "D0": mean([x["D0"] for x in runs]), "DT": mean([x["DT"] for x in runs]),
                         "severity": mean([x["severity"]["mean"] for x in runs if x["severity"]]),
                         "diversity_final": mean([x["diversity_final"] for x in runs]),
                         "n": len(runs)})
        mitig[g] = rows
    early = {}
    for g, grp in groups.items():
        early[g] = {f"{run}/{k}": mean([r[run]["alignment_early"][k] for r in grp])
                    for run in ("guided", "unguided") for k in ("cos_x0_g", "cos_guidance", "cos_eps_c_x", "k_g")}
    return {"n_prompts": len(rs), "n_labelled": len(labelled), "config": cfg.to_dict(),
            "detectors": det, "severity_correlation": corr, "mitigation": mitig,
            "alignment_early": early,
            "note": "higher score = more memorized; detectors need 'memorized' labels in the prompts file; "
                    f"severity = cosine similarity ({cfg.similarity}) of each generation to the training image"}


def write_csv(path: Path, results: dict) -> None:
    cols = ["id", "memorized", "prompt", *SCORES, "severity_mean", "severity_max", "pairwise_similarity",
            "diversity_norm_last", "align_early_cos_x0_g_guided", "align_early_cos_x0_g_unguided",
            "align_early_cos_guidance", "k_g_early"]
    rows = []
    for r in results.values():
        g, u = r["guided"], r["unguided"]
        sev = g["severity"] or {}
        row = {"id": r["id"], "memorized": r.get("memorized"), "prompt": r["prompt"],
               **{k: f(r) for k, f in SCORES.items()},
               "severity_mean": sev.get("mean"), "severity_max": sev.get("max"),
               "pairwise_similarity": sev.get("pairwise"), "diversity_norm_last": g["diversity_norm_last"],
               "align_early_cos_x0_g_guided": g["alignment_early"]["cos_x0_g"],
               "align_early_cos_x0_g_unguided": u["alignment_early"]["cos_x0_g"],
               "align_early_cos_guidance": g["alignment_early"]["cos_guidance"], "k_g_early": g["alignment_early"]["k_g"]}
        for m, d in r["delayed"].items():
            row.update({f"D0_delay{m}": d["D0"], f"severity_delay{m}": (d["severity"] or {}).get("mean"),
                        f"diversity_final_delay{m}": d["diversity_final"]})
        rows.append(row)
    extra = sorted({k for row in rows for k in row} - set(cols))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols + extra)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
