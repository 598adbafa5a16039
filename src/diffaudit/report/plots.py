"""Metric plots (matplotlib, object API with the Agg canvas: no pyplot, no global state).

Each `plot_*` takes the results dict and a path, writes one PNG and returns True, or returns
False without writing when its section is missing. Captions live in `report.html`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .sentences import attack_name, fmt
from .tables import MASK_LABELS, default_k

__all__ = ["new_figure", "save_figure", "plot_roc", "plot_auc_vs_t", "plot_auc_vs_k", "plot_strata", "COLORS"]

COLORS = {"none": "#1f77b4", "influence": "#d62728", "reverse": "#9467bd", "random": "#7f7f7f",
          "channel": "#ff7f0e", "member": "#d62728", "heldout": "#1f77b4"}
QUARTILE_COLORS = ["#c6dbef", "#6baed6", "#2171b5", "#08306b"]


def new_figure(n_panels: int, width: float = 4.4, height: float = 3.6, max_cols: int = 2):
    """A figure with a grid of axes, one per panel (flattened list, extra axes hidden)."""
    cols = max(1, min(n_panels, max_cols))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save_figure(fig: Figure, path: Path, shared_legend: bool = False) -> bool:
    """Save as PNG; with shared_legend, one legend for all panels below them (never over a curve)."""
    fig.tight_layout()
    extra = {}
    if shared_legend:
        seen = {}
        for ax in fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        if seen:
            ncol = min(len(seen), 3)
            fig.legend(list(seen.values()), list(seen), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                       ncol=ncol, fontsize=9, frameon=False)
            extra = {"bbox_inches": "tight", "pad_inches": 0.15}
    fig.savefig(path, format="png", **extra)
    return True


def _band(ax, x, mean, std, color, label):
    x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
    ax.plot(x, mean, color=color, ls="--", lw=1.2, label=f"{label} (mean ± std)")
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, lw=0)


def plot_roc(results: Mapping, path: Path) -> bool:
    """ROC curves on log-log axes, unfiltered vs influence-filtered, one panel per attack."""
    roc = results.get("roc") or {}
    roc = {a: r for a, r in roc.items() if r.get("unfiltered")}
    if not roc:
        return False
    paper = ((results.get("protocols") or {}).get("paper") or {}).get("per_attack") or {}
    fig, axes = new_figure(len(roc))
    for ax, (attack, r) in zip(axes, roc.items()):
        summ = paper.get(attack) or {}
        lo = 1.0
        for name, color in (("unfiltered", COLORS["none"]), ("filtered", COLORS["influence"])):
            c = r.get(name)
            if not c:
                continue
            fpr, tpr = np.asarray(c["fpr"], float), np.asarray(c["tpr"], float)
            pos = np.r_[fpr[fpr > 0], tpr[tpr > 0]]  # both axes share the lower limit
            lo = min(lo, pos.min() if pos.size else 1.0)
            t = r.get("t") if name == "unfiltered" else r.get("t_filtered", r.get("t"))
            auc = (summ.get(name) or {}).get("auc")
            ax.plot(fpr, tpr, color=color, lw=1.6, drawstyle="steps-post",
                    label=f"{name} (t={t}" + (f", AUC {fmt(auc)})" if auc is not None else ")"))
        grid = np.logspace(np.log10(max(lo, 1e-5)), 0, 100)
        ax.plot(grid, grid, color="k", ls=":", lw=1, label="chance")
        ax.axvline(0.01, color="#999", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(max(lo, 1e-5) / 1.5, 1.05)
        ax.set_ylim(max(lo, 1e-5) / 1.5, 1.05)
        ax.set_xlabel("false positive rate (held-out called member)")
        ax.set_ylabel("true positive rate (members found)")
        ax.set_title(f"{attack_name(attack)}: ROC (log-log)")
        ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _curves_by_mask(rows, attack: str, k) -> dict:
    """{mask: (t[], mean[], std[] or None)} for one attack at the report's k (protocol 'all')."""
    out = {}
    for mask in ("none", "influence", "reverse", "random", "channel"):
        sel = [r for r in rows if r.get("attack") == attack and r.get("mask") == mask
               and r.get("protocol", "all") == "all" and (mask == "none" or k is None or r.get("k") == k)]
        if not sel:
            continue
        sel.sort(key=lambda r: r["t"])
        std = [r.get("auc_std") for r in sel]
        out[mask] = ([r["t"] for r in sel], [r["auc"] for r in sel],
                     None if any(s is None for s in std) else std)
    return out


def plot_auc_vs_t(results: Mapping, path: Path) -> bool:
    """AUC against the timestep t for every mask, one panel per attack (all samples)."""
    rows = results.get("metrics") or []
    attacks = list(dict.fromkeys(r.get("attack") for r in rows if "auc" in r))
    if not attacks:
        return False
    k = default_k(results)
    fig, axes = new_figure(len(attacks), height=3.6)
    for ax, attack in zip(axes, attacks):
        for mask, (t, mean, std) in _curves_by_mask(rows, attack, k).items():
            label = MASK_LABELS[mask] + (f" (k={k}%)" if mask in ("influence", "reverse") and k is not None else "")
            if std is not None:
                _band(ax, t, mean, std, COLORS[mask], label)
            else:
                ax.plot(t, mean, color=COLORS[mask], lw=1.6, marker="o", ms=2.5, label=label)
        ax.axhline(0.5, color="k", ls=":", lw=0.8)
        ax.set_xlabel("diffusion timestep t")
        ax.set_ylabel("AUC (0.5 = chance)")
        ax.set_title(f"{attack_name(attack)}: AUC vs t")
    return save_figure(fig, path, shared_legend=True)


def plot_auc_vs_k(results: Mapping, path: Path) -> bool:
    """AUC against the share k of dropped dims: influence filter, reverse, random and channel bands."""
    sweep = results.get("k_sweep") or {}
    sweep = {a: s for a, s in sweep.items() if s.get("k")}
    if not sweep:
        return False
    fig, axes = new_figure(len(sweep))
    for ax, (attack, s) in zip(axes, sweep.items()):
        k = s["k"]
        ax.plot(k, s["influence"], color=COLORS["influence"], marker="o", ms=3, lw=1.8,
                label="influence filter (drop least influential)")
        if s.get("reverse"):
            ax.plot(k, s["reverse"], color=COLORS["reverse"], marker="s", ms=3, lw=1.2,
                    label="reverse (drop most influential)")
        if s.get("random_mean"):
            _band(ax, k, s["random_mean"], s.get("random_std") or np.zeros(len(k)), COLORS["random"], "random drop")
        if s.get("channel_mean"):
            _band(ax, k, s["channel_mean"], s.get("channel_std") or np.zeros(len(k)), COLORS["channel"],
                  "channel-matched random")
        ax.set_xlabel("k: % of latent dims dropped")
        ax.set_ylabel("AUC")
        ax.set_title(f"{attack_name(attack)}: AUC vs k (t={s.get('t')})")
    return save_figure(fig, path, shared_legend=True)


def plot_strata(results: Mapping, path: Path) -> bool:
    """Paper Fig. 3: AUC per distortion quartile against t, with the random-subset band."""
    strata = {a: s for a, s in (results.get("strata") or {}).items() if s.get("t")}
    if not strata:
        return False
    fig, axes = new_figure(len(strata))
    for ax, (attack, s) in zip(axes, strata.items()):
        t = np.asarray(s["t"], float)
        q = np.asarray(s["quartile_auc"], float)  # [T, n_q]
        n_q = q.shape[1]
        colors = QUARTILE_COLORS if n_q == 4 else [None] * n_q
        for j in range(n_q):
            lo, hi = 100 * j / n_q, 100 * (j + 1) / n_q
            ax.plot(t, q[:, j], color=colors[j], marker="o", ms=2.5, lw=1.6,
                    label=f"distortion {lo:.0f}–{hi:.0f}%")
        _band(ax, t, s["random_mean"], s["random_std"], COLORS["random"], "random subsets")
        ax.axhline(0.5, color="k", ls=":", lw=0.8)
        ax.set_xlabel("diffusion timestep t")
        ax.set_ylabel("AUC within the stratum")
        ax.set_title(f"{attack_name(attack)}: AUC by distortion quartile")
    return save_figure(fig, path, shared_legend=True)
