"""Per-sample influence masks and masked attack statistics (arXiv 2511.20592 §3.3, App. B).

Conventions, fixed so that every mask is deterministic:
- ``k`` is the percentage of dims *dropped*, 0 ≤ k < 100. Of d dims a mask drops
  ``floor(k·d/100)`` (k read as the decimal the user wrote, so k = 14.3 with d = 1000 drops
  exactly 143) and keeps the rest; at least one dim is always kept.
- Ranking: by influence, descending; equal influences rank by flat index (lower index first,
  i.e. counts as more influential). The influence mask keeps the first ``kept_count`` dims of
  this order, the reverse mask the last ``kept_count``.
- Random controls rank dims by i.i.d. U[0, 1) float64 scores drawn from the given generator(s)
  (one per sample ⇒ independent of batching, see :mod:`diffaudit.rng`), so
  ``masked_statistics(v, random_scores(shape, g), ks, p)`` is the random-drop control for many k.
Masks are boolean tensors shaped like the influence (True = kept).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import torch

from ._checks import check_batched
from .errors import InputError


def kept_count(k, d: int) -> int:
    """Number of dims kept out of d when dropping k% (see the module docstring)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) and not hasattr(k, "__float__"):
        raise InputError(f"k must be a number in [0, 100), got {k!r}")
    kf = float(k)
    if not (0 <= kf < 100):
        raise InputError(f"k must lie in [0, 100) (percent of dims dropped), got {k!r}")
    exact = Fraction(int(k)) if isinstance(k, int) else Fraction(repr(kf))
    return d - math.floor(exact * d / 100)


def _flat_scores(scores: torch.Tensor, what: str) -> torch.Tensor:
    check_batched(scores, what)
    flat = scores.reshape(scores.shape[0], -1)
    if not torch.isfinite(flat).all():
        bad = (~torch.isfinite(flat)).any(1).nonzero().flatten().tolist()
        raise InputError(f"{what} has NaN/Inf for sample(s) {bad[:10]}")
    return flat


def _ranking(scores: torch.Tensor, what: str = "infl") -> torch.Tensor:
    """[N, d] flat indices, most influential first, ties by lower index (stable sort)."""
    return torch.argsort(_flat_scores(scores, what), dim=1, descending=True, stable=True)


def _keep_first(order: torch.Tensor, n_keep: int, shape) -> torch.Tensor:
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order[:, :n_keep], True)
    return mask.reshape(shape)


def influence_mask(infl: torch.Tensor, k: float = 40) -> torch.Tensor:
    """Keep each sample's top (100 − k)% most influential dims (paper §3.3; default k = 40)."""
    order = _ranking(infl)
    return _keep_first(order, kept_count(k, order.shape[1]), infl.shape)


def reverse_mask(infl: torch.Tensor, k: float = 40) -> torch.Tensor:
    """Control: keep the *least* influential dims, as many as :func:`influence_mask` keeps."""
    order = _ranking(infl).flip(1)
    return _keep_first(order, kept_count(k, order.shape[1]), infl.shape)


def random_scores(shape: Sequence[int], generator) -> torch.Tensor:
    """U[0, 1) float64 scores of ``shape`` (batch-first).

    ``generator``: one ``torch.Generator`` (draws for the whole batch at once) or a sequence of
    one generator per sample (draws per sample: batch-independent).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise InputError(f"shape must be batch-first with at least 2 dims, got {shape}")
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, dtype=torch.float64)
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != shape[0]:
            raise InputError(f"got {len(generator)} generators for {shape[0]} samples")
        return torch.stack([torch.rand(shape[1:], generator=g, dtype=torch.float64) for g in generator])
    raise InputError("generator must be a torch.Generator or a list of them, one per sample")


def random_mask(shape: Sequence[int], k: float, generator) -> torch.Tensor:
    """Control: drop k% of each sample's dims uniformly at random (seeded by ``generator``)."""
    return influence_mask(random_scores(shape, generator), k)


def channel_matched_mask(infl_mask: torch.Tensor, generator) -> torch.Tensor:
    """Control: per sample and latent channel (dim 1), drop as many dims as ``infl_mask`` drops
    there, chosen at random inside the channel (docs/verdicts.md: the channel-matched control). Dead channels stay dropped as often
    as the influence mask drops them, so only the within-channel ranking is randomised."""
    if not isinstance(infl_mask, torch.Tensor) or infl_mask.dim() < 3:
        raise InputError("infl_mask must be a [N, C, ...] mask tensor (batch, channel, spatial)")
    m = infl_mask.bool().reshape(infl_mask.shape[0], infl_mask.shape[1], -1)
    dropped = (~m).sum(-1, keepdim=True)                                     # [N, C, 1]
    u = random_scores(infl_mask.shape, generator).reshape(m.shape).to(m.device)
    rank = u.argsort(dim=-1, stable=True).argsort(dim=-1)  # 0 = smallest score in the channel
    return (rank >= dropped).reshape(infl_mask.shape)


def masked_statistics(vector: torch.Tensor, infl: torch.Tensor, ks: Sequence[float], p: float,
                      power: bool = True, reverse: bool = False) -> torch.Tensor:
    """‖v ⊙ mask_k‖_p (or its p-th power) for every k in ``ks`` at once → [N, len(ks)].

    One sort of ``infl`` per sample and one cumulative sum of |v|^p in ranking order (float64),
    read off at each kept count: no attack vector is recomputed. ``reverse=True`` gives the
    reverse control; pass :func:`random_scores` as ``infl`` for the random-drop control.
    """
    check_batched(vector, "vector")
    if not isinstance(infl, torch.Tensor) or infl.shape != vector.shape:
        raise InputError(f"infl must be shaped like the vector {tuple(vector.shape)}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p > 0):
        raise InputError(f"p must be a positive number, got {p!r}")
    ks = list(ks)
    if not ks:
        raise InputError("ks is empty")
    order = _ranking(infl).to(vector.device)
    if reverse:
        order = order.flip(1)
    d = order.shape[1]
    keep = torch.tensor([kept_count(k, d) - 1 for k in ks], device=vector.device)
    a = vector.detach().abs().reshape(vector.shape[0], -1).to(torch.float64).gather(1, order)
    if math.isinf(p):
        out = a.cummax(1).values[:, keep]
    else:
        out = a.pow(p).cumsum(1)[:, keep]
        if not power:
            out = out.pow(1.0 / p)
    return out.to(vector.dtype)
