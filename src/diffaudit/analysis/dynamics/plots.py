"""Plots of a dynamics report (matplotlib, Agg backend): reads results, computes nothing heavy.

Curves are averaged over the prompts of each group (memorized / not / unlabelled) with thin
per-prompt lines; x-axis = DDIM step (0 = first, noisiest).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

GROUPS = ((True, "memorized", "tab:red"), (False, "not memorized", "tab:blue"), (None, "unlabelled", "tab:gray"))


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], float)


def _curves(ax, results, get, style="-", label_suffix=""):
    for flag, name, color in GROUPS:
        grp = [r for r in results if r.get("memorized") is flag]
        if not grp:
            continue
        ys = np.stack([_arr(get(r)) for r in grp])
        for y in ys:
            ax.plot(y, style, color=color, alpha=0.15, lw=0.7)
        with warnings.catch_warnings():  # an all-NaN step (e.g. undefined ratio) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(ys, 0)
        ax.plot(mean, style, color=color, lw=2, label=f"{name}{label_suffix} (n={len(grp)})")


def plot_all(results: dict, summary: dict, out_dir) -> list[Path]:
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rs = list(results.values())
    files = []

    def save(fig, name):
        p = out / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)

    # 1. decomposition coefficients vs the schedule
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    theory = ("1−σ", "σ") if rs[0].get("schedule") == "flow" else ("√ᾱ_t", "√(1−ᾱ_t)")
    for ax, run in zip(axes, ("guided", "unguided")):
        _curves(ax, rs, lambda r: r[run]["w0_mean"], "-", " w0")
        _curves(ax, rs, lambda r: r[run]["wT_mean"], "--", " wT")
        ax.plot(_arr(rs[0][run]["w0_theory"]), "k-", lw=1, label=theory[0])
        ax.plot(_arr(rs[0][run]["wT_theory"]), "k--", lw=1, label=theory[1])
        ax.set_title(f"decomposition, {run}")
        ax.set_xlabel("step")
    axes[0].set_ylabel("coefficient (mean over seeds)")
    axes[1].legend(fontsize=7)
    save(fig, "decomposition.png")

    # 2. alignment vs step, guided vs unguided
    keys = (("cos_x0_g", "cos(x̂0 used for the step, z_x)"), ("cos_guidance", "cos(ε̂c−ε̂u, ε*_x−ε̂u)"),
            ("cos_eps_c_x", "cos(ε̂c, z_x)"), ("k_g", "scale k of x̂0 on z_x"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    for ax, (k, title) in zip(axes, keys):
        _curves(ax, rs, lambda r: r["guided"]["alignment"][k], "-", " guided")
        _curves(ax, rs, lambda r: r["unguided"]["alignment"][k], ":", " w=1")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[-1].legend(fontsize=6)
    save(fig, "alignment.png")

    # 3. diversity vs step (normalised by the schedule)
    fig, ax = plt.subplots(figsize=(5, 4))
    _curves(ax, rs, lambda r: r["guided"]["diversity_norm"], "-", " guided")
    _curves(ax, rs, lambda r: r["unguided"]["diversity_norm"], ":", " w=1")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(xlabel="step", ylabel="pairwise distance / schedule's", title="trajectory collapse")
    ax.legend(fontsize=7)
    save(fig, "diversity.png")

    # 4. Wen et al.'s ‖ε̂c − ε̂u‖ per step
    fig, ax = plt.subplots(figsize=(5, 4))
    _curves(ax, rs, lambda r: r["guided"]["wen_curve"])
    ax.set(xlabel="step", ylabel="‖ε̂c − ε̂u‖ (mean over seeds)", title="Wen et al. detector")
    ax.legend(fontsize=7)
    save(fig, "wen.png")

    # 5. deviation score vs severity
    sev = [r for r in rs if r["guided"]["severity"] is not None]
    if sev:
        fig, ax = plt.subplots(figsize=(5, 4))
        for flag, name, color in GROUPS:
            g = [r for r in sev if r.get("memorized") is flag]
            if g:
                ax.scatter([r["guided"]["severity"]["mean"] for r in g], [r["guided"]["D0"] for r in g],
                           color=color, label=name, s=18)
        c = summary["severity_correlation"].get("D0_guided", {})
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        ax.set(xlabel="severity (similarity to the training image)", ylabel="deviation score D0",
               title=f"Pearson r={fmt(c.get('pearson'))}, Spearman ρ={fmt(c.get('spearman'))}")
        ax.legend(fontsize=7)
        save(fig, "deviation_vs_severity.png")

    # 6. training-loss view
    lossy = [r for r in rs if "loss" in r]
    if lossy:
        fig, ax = plt.subplots(figsize=(5, 4))
        t = _arr(lossy[0]["loss"]["t"])
        for flag, name, color in GROUPS:
            g = [r for r in lossy if r.get("memorized") is flag]
            if g:
                ax.plot(t, np.mean([_arr(r["loss"]["loss_c"]) for r in g], 0), "-", color=color, label=f"{name}, no guidance")
                ax.plot(t, np.mean([_arr(r["loss"]["loss_g"]) for r in g], 0), "--", color=color, label=f"{name}, guided")
        ax.set(xlabel="t", ylabel="‖ε − ε̂‖²/d", yscale="log", title="denoising loss of (prompt, image) pairs")
        ax.legend(fontsize=7)
        save(fig, "loss.png")

    # 7. mitigation: delayed guidance
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key in zip(axes, ("D0", "severity", "diversity_final")):
        for g, color in (("memorized", "tab:red"), ("not_memorized", "tab:blue"), ("all", "k")):
            rows = [row for row in summary["mitigation"].get(g, []) if row["n"] and row[key] is not None]
            if rows:
                ax.plot([row["delay"] for row in rows], [row[key] for row in rows], "o-", color=color, label=g)
        ax.set(xlabel="guidance delayed for m steps", title=key)
    axes[0].legend(fontsize=7)
    save(fig, "mitigation.png")
    return files
