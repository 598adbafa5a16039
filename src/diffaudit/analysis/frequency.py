"""Frequency analyses: distortion vs low/high-frequency energy (paper §4.4, T3) and the
high-frequency-filter attack statistic (arXiv 2511.20592 App. F, Eqs. 9–17).

Radius rule (§4.4): the paper sums "the center elements" of the centred spectrum within radius
5, 10, 40 for 32², 64², 256² images, "approximately 2.5% of the spectra". All three are
`side · 5/32`, i.e. the disc radius r with r² ≈ 2.44% of H·W. `default_radius(h, w)` returns
round(√(h·w) · 5/32) (half up, at least 1): 32 → 5, 64 → 10, 256 → 40, 16 → 3, 28 → 4.
"Inside" means distance to the DC bin ≤ r, in integer frequency units.

High-frequency filter (Eqs. 15–16): F(x) = IFFT(FFT(x) ⊙ β(r)), β(r) = s where r > r_t, else 1.
So the band *above* the radius (high frequencies) is multiplied by the scale s, and the low band
(r ≤ r_t, DC included) is kept: with s < 1 the filter smooths high frequencies (Lian et al.).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from ..errors import InputError

__all__ = [
    "default_radius",
    "frequency_radius_grid",
    "band_energy",
    "energy_correlation",
    "distortion_frequency_correlation",
    "highfreq_filter",
    "hf_filtered_statistic",
]


def default_radius(h: int, w: int | None = None) -> int:
    """The paper's low/high split radius for an h×w image: round(√(h·w)·5/32), at least 1."""
    w = h if w is None else w
    if h < 1 or w < 1:
        raise InputError(f"image size must be positive, got {h}x{w}")
    return max(1, int(math.floor(math.sqrt(h * w) * 5 / 32 + 0.5)))


def frequency_radius_grid(h: int, w: int, centred: bool = True) -> np.ndarray:
    """Distance of each FFT bin to DC in integer frequency units: [h, w].

    centred=True is the fftshift layout (DC at [h//2, w//2]); False is numpy/torch's native one.
    """
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    if centred:
        fy, fx = np.fft.fftshift(fy), np.fft.fftshift(fx)
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def _images_nchw(images, layout: str) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    a = np.asarray(images)
    if a.ndim == 3:  # [N, H, W] greyscale
        a = a[:, None]
    elif a.ndim == 4:
        if layout == "NHWC":
            a = a.transpose(0, 3, 1, 2)
        elif layout != "NCHW":
            raise InputError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    else:
        raise InputError(f"images must be [N,H,W], [N,C,H,W] or [N,H,W,C], got shape {a.shape}")
    if a.shape[0] == 0:
        raise InputError("images is an empty batch")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError("images contain NaN/Inf")
    return a


def band_energy(images, radius: int | None = None, layout: str = "NCHW") -> tuple[np.ndarray, np.ndarray]:
    """Low- and high-frequency amplitude energy per image (§4.4): (low [N], high [N]).

    |FFT| of each channel (2-D, centred with fftshift), summed over bins within `radius` of DC
    (low) and beyond it (high), then summed over channels. `radius` None → default_radius(H, W).
    Accepts numpy or torch, [N,H,W], [N,C,H,W] or, with layout="NHWC", [N,H,W,C] (e.g. uint8
    thumbnails). Amplitudes are of the pixel values as given (no rescaling).
    """
    x = _images_nchw(images, layout)
    h, w = x.shape[-2:]
    r = default_radius(h, w) if radius is None else int(radius)
    if r < 0:
        raise InputError(f"radius must be >= 0, got {radius}")
    amp = np.abs(np.fft.fftshift(np.fft.fft2(x, axes=(-2, -1)), axes=(-2, -1)))
    inside = frequency_radius_grid(h, w, centred=True) <= r
    low = amp[..., inside].sum(axis=(1, 2))
    high = amp[..., ~inside].sum(axis=(1, 2))
    return low, high


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (vectorised for bootstrap resamples)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / den


def energy_correlation(distortion, low, high, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson r of distortion with given per-image low / high energies (arXiv 2511.20592 Table 3).

    Point estimates from scipy.stats.pearsonr; CIs are percentile bootstrap over the images, the
    SAME resamples for LF, HF and their difference r_HF − r_LF (so the difference is paired; its
    bootstrap standard error ``diff_se`` is what the frequency verdict tests). Returns {"r_lf",
    "r_lf_ci", "r_hf", "r_hf_ci", "diff", "diff_ci", "diff_se", "n", "n_boot", "level"}, plus
    "note" when a correlation is undefined (constant input).
    """
    arrays = []
    for name, v in (("distortion", distortion), ("low", low), ("high", high)):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1:
            raise InputError(f"{name} must be 1-D (one value per image), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise InputError(f"{name} contains NaN/Inf")
        arrays.append(a)
    d, lo, hi = arrays
    if not (d.size == lo.size == hi.size):
        raise InputError(f"distortion has {d.size} values but the energies have {lo.size} and {hi.size}")
    if d.size < 3:
        raise InputError(f"a correlation needs at least 3 images, got {d.size}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    nan2 = [float("nan"), float("nan")]
    out = {"r_lf": float("nan"), "r_lf_ci": nan2, "r_hf": float("nan"), "r_hf_ci": nan2, "diff": float("nan"),
           "diff_ci": nan2, "diff_se": float("nan"), "n": int(d.size), "n_boot": int(n_boot), "level": float(level)}
    if np.ptp(d) == 0 or np.ptp(lo) == 0 or np.ptp(hi) == 0:
        out["note"] = "a correlation is undefined because distortion or an energy band is constant"
        return out
    out["r_lf"] = float(stats.pearsonr(d, lo).statistic)
    out["r_hf"] = float(stats.pearsonr(d, hi).statistic)
    out["diff"] = out["r_hf"] - out["r_lf"]
    if n_boot >= 2:
        idx = np.random.default_rng(seed).integers(0, d.size, size=(int(n_boot), d.size))  # paired resamples
        r_lf, r_hf = _pearson_rows(d[idx], lo[idx]), _pearson_rows(d[idx], hi[idx])
        ok = np.isfinite(r_lf) & np.isfinite(r_hf)  # a resample of identical points has no r
        a = (1 - level) / 2
        for key, r in (("r_lf_ci", r_lf[ok]), ("r_hf_ci", r_hf[ok]), ("diff_ci", (r_hf - r_lf)[ok])):
            out[key] = [float(x) for x in np.quantile(r, [a, 1 - a])] if r.size else nan2
        out["diff_se"] = float((r_hf - r_lf)[ok].std(ddof=1)) if ok.sum() > 1 else float("nan")
    return out


def distortion_frequency_correlation(
    distortion,
    images,
    n_boot: int = 1000,
    seed: int = 0,
    radius: int | None = None,
    layout: str = "NCHW",
    level: float = 0.95,
) -> dict:
    """`energy_correlation` with the energies measured on `images` by `band_energy` (§4.4, T3).

    Returns {"radius", "r_lf", "r_lf_ci", "r_hf", "r_hf_ci", "n", "n_boot", "level"} (+ "note").
    """
    d = np.asarray(distortion, dtype=np.float64)
    low, high = band_energy(images, radius=radius, layout=layout)
    if d.ndim == 1 and low.size != d.size:
        raise InputError(f"distortion has {d.size} values but images has {low.size} images")
    x = _images_nchw(images, layout)
    rad = default_radius(*x.shape[-2:]) if radius is None else int(radius)
    return {"radius": rad, **energy_correlation(d, low, high, n_boot=n_boot, seed=seed, level=level)}


def highfreq_filter(x: torch.Tensor, radius: int | None = None, scale: float = 0.0) -> torch.Tensor:
    """F(x) = IFFT(FFT(x) ⊙ β(r)) over the last two dims (App. F, Eqs. 15–16).

    β = `scale` at frequencies farther than `radius` from DC, 1 at or inside it: the high band is
    scaled, the low band kept. Real in, real out; differentiable; any leading dims.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or not x.is_floating_point():
        raise InputError(f"x must be a floating tensor [..., H, W], got {x.dtype} {tuple(x.shape)}")
    h, w = x.shape[-2:]
    r = default_radius(h, w) if radius is None else radius
    if r < 0:
        raise InputError(f"radius must be >= 0, got {radius}")
    # Native (unshifted) layout: no fftshift round trip needed.
    dist = torch.as_tensor(frequency_radius_grid(h, w, centred=False), dtype=x.dtype, device=x.device)
    beta = torch.where(dist > r, torch.as_tensor(float(scale), dtype=x.dtype, device=x.device), torch.ones_like(dist))
    return torch.fft.ifft2(torch.fft.fft2(x) * beta).real


def hf_filtered_statistic(
    x0_pred: torch.Tensor,
    x0_target: torch.Tensor,
    radius: int | None = None,
    scale: float = 0.0,
    p: float = 2,
    power: bool = False,
) -> torch.Tensor:
    """Per-sample ‖F(x̂₀) − F(x₀^target)‖_p on decoded images [N, C, H, W] (App. F, Eq. 17) → [N].

    F is linear, so this is ‖F(x̂₀ − x₀^target)‖_p: one FFT pair per image instead of two. The
    difference is taken in the inputs' dtype, the filter and the sum in float64 (the result is
    float64). ``power=True`` returns Σ|·|^p, like :func:`diffaudit.attacks.statistic`. Lower =
    more likely a member, like every attack statistic.
    """
    for name, v in (("x0_pred", x0_pred), ("x0_target", x0_target)):
        if not isinstance(v, torch.Tensor) or v.dim() != 4:
            raise InputError(f"{name} must be a [N, C, H, W] tensor, got {getattr(v, 'shape', type(v).__name__)}")
    if x0_pred.shape != x0_target.shape:
        raise InputError(f"x0_pred {tuple(x0_pred.shape)} and x0_target {tuple(x0_target.shape)} differ in shape")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise InputError(f"p must be > 0, got {p}")
    f = highfreq_filter((x0_pred - x0_target).double(), radius=radius, scale=scale).flatten(1).abs()
    if math.isinf(p):
        return f.amax(1)
    out = f.pow(p).sum(1)
    return out if power else out.pow(1.0 / p)
