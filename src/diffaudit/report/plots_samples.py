"""Per-sample plots: latent usage, distortion violins with thumbnails (Fig. 2), frequency scatter,
most-at-risk thumbnails. Same conventions as `plots.py`: write one PNG, True; or False if the
section or the data it needs is missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .plots import COLORS, new_figure, save_figure
from .sentences import fmt, fmt_signed, format_ci

__all__ = ["plot_latent_usage", "plot_distortion", "plot_frequency", "plot_at_risk", "sample_index", "to_display"]

MAX_CHANNEL_MAPS = 8


def to_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An [H, W, C] thumbnail as something imshow draws right: ([H,W] + 'gray') or [H,W,3] in [0,1]."""
    a = np.asarray(img)
    if a.dtype != np.uint8:  # float images: [-1, 1] (diffaudit's range) or [0, 1]
        a = a.astype(np.float64)
        a = (a + 1) / 2 if a.min() < 0 else a
        a = np.clip(a, 0, 1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return a, "gray"
    return a[..., :3], None


def sample_index(samples: Mapping | None, ident) -> int | None:
    """Row of a sample in `samples` by its id (or key), None if absent."""
    if not samples:
        return None
    for col in ("id", "key"):
        if col in samples:
            hits = np.flatnonzero(np.asarray(samples[col]).astype(str) == str(ident))
            if hits.size:
                return int(hits[0])
    return None


def _thumb(ax, img, title: str, color: str | None = None):
    a, cmap = to_display(img)
    ax.imshow(a, cmap=cmap, vmin=0 if cmap else None, vmax=(255 if a.dtype == np.uint8 else 1) if cmap else None,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7, color=color or "black")
    if color:
        for sp in ax.spines.values():
            sp.set_edgecolor(color)
            sp.set_linewidth(2)


def plot_latent_usage(results: Mapping, path: Path) -> bool:
    """Per-channel mean influence (bars ± std) and the per-dim mean influence map of each channel."""
    u = results.get("latent_usage") or {}
    means = u.get("channel_mean_influence")
    if not means:
        return False
    stds = u.get("channel_std_influence") or [0.0] * len(means)
    maps = np.asarray(u.get("dim_mean_influence") or [], dtype=float)
    n_maps = min(len(maps), MAX_CHANNEL_MAPS) if maps.ndim == 3 else 0
    map_cols = min(n_maps, 2 if n_maps <= 4 else 4)
    map_rows = -(-n_maps // map_cols) if n_maps else 0
    fig = Figure(figsize=(5.0 + 2.3 * map_cols, max(3.8, 2.4 * map_rows + 0.6)), dpi=110)
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(1, 2 if n_maps else 1, width_ratios=[5.0, 2.3 * map_cols] if n_maps else None)
    ax = fig.add_subplot(outer[0, 0])
    ch = np.arange(len(means))
    # Points, not bars: influence is a log scale with no natural zero.
    ax.errorbar(ch, means, yerr=stds, fmt="o", color="#4c72b0", capsize=4, ms=7, lw=1.5)
    ax.set_xlim(-0.6, len(means) - 0.4)
    share = u.get("channel_active_share")
    ax.set_xticks(ch)
    ax.set_xticklabels([f"{i}\n{share[i]:.0%} active" if share else str(i) for i in ch], fontsize=8)
    ax.set_xlabel("latent channel")
    ax.set_ylabel("mean influence ½·log diag(JᵀJ) [nats]")
    title = "Influence per latent channel"
    if u.get("active_share") is not None:
        title += f"\n{u['active_share']:.0%} of dims active (within {u.get('active_nats', 3):g} nats of the max)"
    ax.set_title(title, fontsize=10)
    if not n_maps:
        return save_figure(fig, path)
    inner = outer[0, 1].subgridspec(map_rows, map_cols)
    vmin, vmax = np.nanmin(maps[:n_maps]), np.nanmax(maps[:n_maps])
    map_axes, im = [], None
    for c in range(n_maps):
        axm = fig.add_subplot(inner[c // map_cols, c % map_cols])
        im = axm.imshow(maps[c], vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
        axm.set_title(f"channel {c}", fontsize=9)
        axm.set_xticks([])
        axm.set_yticks([])
        map_axes.append(axm)
    fig.colorbar(im, ax=map_axes, shrink=0.85, label="mean influence per position [nats]")
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.15)  # tight_layout fights the colorbar
    return True


def plot_distortion(samples: Mapping | None, images, path: Path, n_thumbs: int = 5) -> bool:
    """Violins of local distortion, members vs held-out; with images, the most and least distorted."""
    if not samples or "distortion" not in samples or "member" not in samples:
        return False
    d = np.asarray(samples["distortion"], dtype=float)
    m = np.asarray(samples["member"], dtype=bool)
    ok = np.isfinite(d)
    if ok.sum() < 2:
        return False
    has_imgs = images is not None and len(images) == len(d)
    n_th = min(n_thumbs, int(ok.sum()) // 2) if has_imgs else 0
    fig = Figure(figsize=(4.2 + (1.5 * n_th if n_th else 0), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 1 + n_th, width_ratios=[2.6] + [1.0] * n_th)
    ax = fig.add_subplot(gs[:, 0])
    groups = [(d[m & ok], "members", COLORS["member"]), (d[~m & ok], "held-out", COLORS["heldout"])]
    groups = [(v, lab, col) for v, lab, col in groups if v.size]
    parts = ax.violinplot([v for v, _, _ in groups], showmedians=True)
    for body, (_, _, col) in zip(parts["bodies"], groups):
        body.set_facecolor(col)
        body.set_alpha(0.45)
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels([f"{lab}\n(n={v.size}, median {np.median(v):.2f})" for v, lab, _ in groups], fontsize=8)
    ax.set_ylabel("local distortion  Σ log σᵢ(J_D)")
    ax.set_title("Decoder distortion per sample", fontsize=10)
    if n_th:
        order = np.argsort(np.where(ok, d, np.nan))  # NaNs last
        order = order[: ok.sum()]
        for row, (idx, word) in enumerate(((order[::-1][:n_th], "most"), (order[:n_th], "least"))):
            for j, i in enumerate(idx):
                axt = fig.add_subplot(gs[row, 1 + j])
                who = "M" if m[i] else "H"
                _thumb(axt, images[i], f"{word}: {d[i]:.1f} ({who})",
                       COLORS["member"] if m[i] else COLORS["heldout"])
        fig.text(0.99, 0.01, "M = member, H = held-out; top row: most distorted, bottom: least",
                 ha="right", fontsize=7)
    return save_figure(fig, path)


def _energies(samples: Mapping, images, radius):
    for lf, hf in (("lf", "hf"), ("energy_lf", "energy_hf"), ("lf_energy", "hf_energy")):
        if lf in samples and hf in samples:
            return np.asarray(samples[lf], float), np.asarray(samples[hf], float)
    if images is None:
        return None
    from ..analysis.frequency import band_energy

    return band_energy(np.asarray(images), radius=radius, layout="NHWC")


def plot_frequency(results: Mapping, samples: Mapping | None, images, path: Path) -> bool:
    """Scatter of distortion against low- and high-frequency amplitude energy (paper T3)."""
    freq = results.get("frequency") or {}
    if not freq or not samples or "distortion" not in samples:
        return False
    e = _energies(samples, images, freq.get("radius"))
    if e is None:
        return False
    d = np.asarray(samples["distortion"], float)
    m = np.asarray(samples["member"], bool) if "member" in samples else np.zeros(len(d), bool)
    if len(e[0]) != len(d):
        return False
    fig, axes = new_figure(2, width=4.6, height=3.8)
    for ax, energy, band in zip(axes, e, ("lf", "hf")):
        for sel, lab, col in ((m, "members", COLORS["member"]), (~m, "held-out", COLORS["heldout"])):
            if sel.any():
                ax.scatter(energy[sel], d[sel], s=7, alpha=0.5, color=col, label=lab, lw=0)
        word = "low" if band == "lf" else "high"
        r, ci = freq.get(f"r_{band}"), freq.get(f"r_{band}_ci")
        ax.set_title(f"{word}-frequency energy: r = {fmt_signed(r, 2)}\n({format_ci(ci, 2)})", fontsize=9)
        side = "inside" if band == "lf" else "outside"
        radius = freq.get("radius")
        if radius is None and images is not None:
            from ..analysis.frequency import default_radius

            radius = default_radius(*np.asarray(images).shape[1:3])
        where = f"radius {radius}" if radius is not None else "the low-frequency radius"
        ax.set_xlabel(f"Σ|FFT| {side} {where} (amplitude)")
        ax.set_ylabel("local distortion")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_at_risk(results: Mapping, samples: Mapping | None, images, path: Path, n: int = 10) -> bool:
    """Thumbnails: members with the highest membership score, held-out most often taken for members."""
    risk = results.get("at_risk") or {}
    if images is None or not samples or not risk:
        return False
    rows = [(lab, [x for x in (risk.get(key) or [])[:n] if sample_index(samples, x.get("id", x.get("key"))) is not None])
            for key, lab in (("members", "member at risk"), ("heldout_false_positives", "held-out false positive"))]
    rows = [(lab, lst) for lab, lst in rows if lst]
    if not rows:
        return False
    cols = max(len(lst) for _, lst in rows)
    fig = Figure(figsize=(1.35 * cols + 0.4, 1.75 * len(rows) + 0.3), dpi=110)
    FigureCanvasAgg(fig)
    for r, (lab, lst) in enumerate(rows):
        for j, x in enumerate(lst):
            ax = fig.add_subplot(len(rows), cols, r * cols + j + 1)
            i = sample_index(samples, x.get("id", x.get("key")))
            col = COLORS["member"] if lab.startswith("member") else COLORS["heldout"]
            _thumb(ax, images[i], f"#{j + 1} score {fmt(x.get('score'), 2)}\ndist {fmt(x.get('distortion'), 1)}", col)
            if j == 0:
                ax.set_ylabel(lab.replace(" ", "\n", 1), fontsize=8)
    return save_figure(fig, path)
