"""PFAMI: probabilistic fluctuation around a sample (Fu et al. 2023, arXiv 2308.12143, the metric
variant PFAMI_Met).

A member sits at a local maximum of the model's likelihood: its denoising loss is lower than that
of slightly perturbed copies of it. The statistic is

    mean_t L(z) − mean_{λ, t} L(z̃_λ),  L(x) = mean_d (ε̂(√ᾱ_t x + √(1−ᾱ_t) ε, t) − ε)²,

over t ∈ {0, 50, …, 450} and 10 neighbours z̃_λ: centre crops keeping a fraction λ of each side,
λ = 0.95 → 0.70, resized back bilinearly. Smaller ⇒ more likely a member. Checked against the
SimA authors' attacker class ``PFAMI`` (github mx-ethan-rao/SimA, DDPM/components.py): the same
crops (side int(H·λ), offset (H − side)//2, bilinear, align_corners=False, λ from a float32
linspace), per-image mean squared error, a fresh noise draw for every (neighbour, t), and the
same sign. Here each draw is keyed by (seed, sample id, neighbour, t), so batching does not
change it.

For a latent model the perturbation is applied to the image and re-encoded, z̃_λ = E(crop_λ(x)),
as CopyMark does (github caradryanl/CopyMark, scripts/train_pfami.py), and the sample's own
latent is E(x) alike; x is the original image when given, else D(z). (The SimA authors'
latent-diffusion copy crops the latent itself: ``space="latent"``.) The statistic is scalar-only:
it is a signed difference between the losses of different inputs, and a crop moves content
between dims, so a per-dim mask has nothing to select (docs/attacks.md).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .._checks import check_batched
from ..diffusion import check_timesteps
from ..errors import InputError
from .base import register_attack
from .common import keyed_noise, model_eps, prepare
from .jobs import Emit, Request, Spawn

__all__ = ["pfami", "center_crop", "pfami_timesteps", "pfami_inputs", "DEFAULT_STRENGTHS"]

# The reference's torch.linspace(0.95, 0.70, 10) (float32): its values decide the crop sizes.
DEFAULT_STRENGTHS: tuple[float, ...] = tuple(torch.linspace(0.95, 0.70, 10).tolist())
DEFAULT_STEP = 50


def center_crop(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Centre crop to int(H·λ) × int(W·λ), resized back to H × W (bilinear, align_corners=False)."""
    check_batched(x, "images", min_dim=4)
    h, w = x.shape[-2:]
    th, tw = int(h * strength), int(w * strength)
    if th < 1 or tw < 1:
        raise InputError(f"crop strength {strength} leaves no pixel of a {h}×{w} image")
    top, left = (h - th) // 2, (w - tw) // 2
    crop = x[..., top:top + th, left:left + tw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def pfami_timesteps(t: int, step: int, T: int) -> list[int]:
    """{0, step, 2·step, …} up to t (inclusive)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise InputError(f"step must be a positive int, got {step!r}")
    last = int(check_timesteps(t, 1, T, "cpu", what="t for pfami"))
    return list(range(0, last + 1, step))


def _check_strengths(strengths) -> list[float]:
    try:
        out = [float(s) for s in strengths]
    except (TypeError, ValueError):
        raise InputError(f"strengths must be a sequence of numbers, got {strengths!r}") from None
    if not out or not all(0 < s <= 1 for s in out):
        raise InputError(f"strengths must be a non-empty sequence of numbers in (0, 1], got {strengths!r}")
    return out


@torch.no_grad()
def pfami_inputs(model, z: torch.Tensor, strengths: Sequence[float], perturb: Callable = center_crop,
                 images: torch.Tensor | None = None, space: str = "auto") -> list[torch.Tensor]:
    """The latents PFAMI scores: the sample itself, then one neighbour per strength (each shaped like z).

    ``space``: "image" works on the image x (``images``, else ``model.decode(z)``): the sample is
    ``model.encode(x)`` and the neighbours ``model.encode(perturb(x, λ))``, so that the identity
    perturbation changes nothing; "latent" uses z and ``perturb(z, λ)``; "auto" is "image" when
    the model has ``encode`` and ``decode``, else "latent".
    """
    if space not in ("auto", "image", "latent"):
        raise InputError(f"space must be 'auto', 'image' or 'latent', got {space!r}")
    has_codec = callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))
    if space == "auto":
        space = "image" if has_codec else "latent"
    if space == "latent":
        if images is not None:
            raise InputError("images are only used with space='image' (the perturbation is applied to z)")
        outs = [z] + [perturb(z, s) for s in strengths]
    else:
        if not has_codec:
            raise InputError("space='image' needs a model with encode(images) and decode(z)")
        if images is None:
            images = model.decode(z)
        check_batched(images, "images", min_dim=4)
        if images.shape[0] != z.shape[0]:
            raise InputError(f"images has {images.shape[0]} rows for {z.shape[0]} latents")
        outs = [model.encode(x).to(device=z.device, dtype=z.dtype)
                for x in [images] + [perturb(images, s) for s in strengths]]
    for o in outs:
        if not isinstance(o, torch.Tensor) or o.shape != z.shape:
            got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
            raise InputError(f"a PFAMI input has shape {got}, expected the latents' {tuple(z.shape)}")
    return outs


def _noise(z: torch.Tensor, sample_ids, seed: int, noise_fn: Callable | None) -> Callable:
    """noise(k, t) → a checked tensor shaped like z: ``noise_fn``, else draws keyed by
    (seed, sample id, "pfami/k=…/t=…")."""
    if noise_fn is None:
        noise_fn = keyed_noise(z, sample_ids, seed, "pfami", lambda k, t: f"pfami/k={k}/t={t}")

    def noise(k, t):
        e = noise_fn(k, t)
        if not isinstance(e, torch.Tensor) or e.shape != z.shape:
            raise InputError(f"noise_fn({k}, {t}) must return a tensor shaped like z {tuple(z.shape)}")
        return e.to(device=z.device, dtype=z.dtype)
    return noise


@torch.no_grad()
def pfami(model, z: torch.Tensor, t=450, cond=None, *, sample_ids: Sequence | None = None, seed: int = 0,
          images: torch.Tensor | None = None, noise_fn: Callable | None = None, step: int = DEFAULT_STEP,
          strengths: Sequence[float] = DEFAULT_STRENGTHS, perturb: Callable = center_crop,
          space: str = "auto", max_rows: int | None = None) -> torch.Tensor:
    """PFAMI statistic [N] (smaller ⇒ more likely a member) over t ∈ {0, step, …, t}.

    Noise: ``noise_fn(k, t)`` → a tensor shaped like z for neighbour k (0 = the sample itself,
    1… = the strengths in order), else keyed draws from ``sample_ids`` and ``seed``.
    ``max_rows``: rows per model call; at each t the sample's and its neighbours' noisy inputs
    share calls of up to that many rows (default N: one input set per call). Each row is its own
    computation, so this changes only the speed (larger calls: measured 25% less time per row
    at 256 rows than at 64 on a CPU).
    """
    s, _ = prepare(model, z, 0, cond)
    ts = pfami_timesteps(t, step, s.T)
    lams = _check_strengths(strengths)
    noise = _noise(z, sample_ids, seed, noise_fn)
    dims = tuple(range(1, z.dim()))
    n = z.shape[0]
    per_call = max(1, (max_rows or n) // n)  # input sets per call
    if per_call > 1 and cond is not None and not isinstance(cond, torch.Tensor):
        per_call = 1  # a condition that is not one batch-first tensor cannot be repeated per set

    inputs = pfami_inputs(model, z, lams, perturb, images, space)
    totals = [torch.zeros(n, dtype=z.dtype, device=z.device) for _ in inputs]
    for t_ in ts:
        for first in range(0, len(inputs), per_call):
            ks = range(first, min(first + per_call, len(inputs)))
            e = torch.cat([noise(k, t_) for k in ks])
            tt = torch.full((e.shape[0],), t_, dtype=torch.long, device=z.device)
            c = cond if cond is None or len(ks) == 1 else torch.cat([cond] * len(ks))
            x = torch.cat([inputs[k] for k in ks])
            loss = (model_eps(model, s.noisy(x, tt, e), tt, c) - e).pow(2).mean(dims)
            for j, k in enumerate(ks):
                totals[k] = totals[k] + loss[j * n:(j + 1) * n]
    means = [total / len(ts) for total in totals]
    return torch.stack([means[0] - m for m in means[1:]]).mean(0)


def pfami_job(ctx, ts):
    """Per grid t, the loss chains of the sample and its neighbours run side by side (one job
    each), so the sweep packs their rows into shared calls; the last chain to finish emits."""
    dims = tuple(range(1, ctx.z.dim()))

    def main(t):
        steps = pfami_timesteps(t, DEFAULT_STEP, ctx.sched.T)
        noise = _noise(ctx.z, ctx.sample_ids, ctx.seed, None)
        inputs = pfami_inputs(ctx.model, ctx.z, DEFAULT_STRENGTHS)
        means: list = [None] * len(inputs)

        def chain(k, x):
            total = torch.zeros(ctx.z.shape[0], dtype=ctx.z.dtype, device=ctx.z.device)
            for t_ in steps:
                e, tt = noise(k, t_), ctx.full(t_)
                total = total + ((yield Request(ctx.sched.noisy(x, tt, e), tt)) - e).pow(2).mean(dims)
            means[k] = total / len(steps)
            if all(m is not None for m in means):
                yield Emit("pfami", t, torch.stack([means[0] - m for m in means[1:]]).mean(0))

        for k, x in enumerate(inputs):
            yield Spawn(chain(k, x))
    return (main(t) for t in ts)


register_attack(
    "pfami", pfami, 1, display_name="PFAMI", job=pfami_job, first_t=0, needs=("cond", "perturbation"),
    output="scalar", grid=(450,), calls_per_t=110,
    reference="Fu et al. 2023, arXiv 2308.12143 (PFAMI_Met); checked against mx-ethan-rao/SimA DDPM/components.py PFAMI",
    description="mean loss at z minus mean loss of 10 centre-crop neighbours, t ∈ {0, 50, …, t}",
)
