"""From attack vector to one number per sample: the ℓp statistic, plain or under 0/1 masks.

:func:`statistic` reduces a vector under one optional mask; :func:`statistic_bank` is its batched
form over a bank of masks [N, M, d] (the audit reduces every attack vector with its whole mask
bank in one call), computed in float64.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_batched
from ..errors import InputError

__all__ = ["statistic", "statistic_bank"]


def _check_p(p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p > 0):
        raise InputError(f"p must be a positive number, got {p!r}")


def _check_signed(signed: bool, p) -> None:
    if signed and p != 1:
        raise InputError(f"a signed statistic is the plain sum Σ v: p must be 1, got {p!r}")


def statistic(vector: torch.Tensor, p: float, mask: torch.Tensor | None = None, power: bool = True,
              signed: bool = False) -> torch.Tensor:
    """ℓp norm of each sample's vector over all non-batch dims, after an optional 0/1 mask → [N].

    ``power=True`` returns Σ|v|^p (same ranking as the norm, and what the reference code scores
    for p = 2); ``p = inf`` gives max |v|. ``signed=True`` (p = 1) sums v itself, for an attack
    whose per-dim terms carry a sign (the "signed" output of docs/attacks.md: CLiD).
    """
    check_batched(vector, "vector")
    _check_p(p)
    _check_signed(signed, p)
    v = vector if signed else vector.abs()
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise InputError("mask must be a tensor")
        try:
            ok = torch.broadcast_shapes(mask.shape, v.shape) == v.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise InputError(f"mask of shape {tuple(mask.shape)} does not fit vector of shape {tuple(v.shape)}")
        v = torch.where(mask.to(device=v.device).bool(), v, torch.zeros((), dtype=v.dtype, device=v.device))
    flat = v.reshape(v.shape[0], -1)
    if math.isinf(p):
        return flat.amax(1)
    out = flat.pow(p).sum(1)
    return out if power else out.pow(1.0 / p)


def statistic_bank(vector: torch.Tensor, p: float, masks: torch.Tensor, power: bool = True,
                   signed: bool = False) -> torch.Tensor:
    """:func:`statistic` under every mask of a bank at once → float64 [N, M].

    ``masks``: 0/1 values [N, M, d] with d = the vector's dims per sample (flattened), e.g. from
    :func:`diffaudit.audit.run.build_masks`; pass them as float64 to skip a conversion per call.
    Column m equals ``statistic(vector.double(), p, masks[:, m].reshape(vector.shape), power, signed)``
    up to the order of the float64 summation.
    """
    check_batched(vector, "vector")
    _check_p(p)
    _check_signed(signed, p)
    n = vector.shape[0]
    a = vector.detach().reshape(n, -1).double()
    a = a if signed else a.abs()
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3 or masks.shape[0] != n or masks.shape[2] != a.shape[1]:
        got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise InputError(f"masks must be [N={n}, M, d={a.shape[1]}], got {got}")
    m = masks.to(device=a.device, dtype=torch.float64)
    if math.isinf(p):
        zero = torch.zeros((), dtype=a.dtype, device=a.device)  # |v| ≥ 0: a dropped dim never wins
        return torch.where(m.bool(), a.unsqueeze(1), zero).amax(2)
    out = torch.einsum("bd,bmd->bm", a ** p, m)
    return out if power else out.pow(1.0 / p)
