"""Small validation helpers shared by the core modules."""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import InputError, NonFiniteError


def check_finite(x: torch.Tensor, what: str, ids: Sequence | None = None) -> torch.Tensor:
    """Raise NonFiniteError naming the offending samples (batch-first) if x has NaN/Inf."""
    if torch.isfinite(x).all():
        return x
    bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
    names = [ids[i] for i in bad] if ids is not None else bad
    shown = ", ".join(str(n) for n in names[:10]) + (" …" if len(names) > 10 else "")
    raise NonFiniteError(f"{what} produced NaN/Inf for {len(names)} sample(s): {shown}")


def check_batched(z: torch.Tensor, what: str = "z", min_dim: int = 2) -> torch.Tensor:
    """Require a batch-first floating tensor with at least `min_dim` dims."""
    if not isinstance(z, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() < min_dim:
        raise InputError(f"{what} must be batch-first with at least {min_dim} dims, got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise InputError(f"{what} must be floating point, got {z.dtype}")
    if z.shape[0] == 0:
        raise InputError(f"{what} is an empty batch")
    return z


def require_extra(module: str, extra: str):
    """Import an optional dependency or raise a message naming the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        from .errors import MissingExtraError

        raise MissingExtraError(
            f"{module} is needed for this feature: pip install 'diffaudit[{extra}]'"
        ) from e
