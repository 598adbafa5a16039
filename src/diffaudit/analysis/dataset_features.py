"""Per-image feature vectors for dataset inference, from an audit's gathered statistics.

CDI (arXiv 2411.12858) feeds its scorer every membership statistic it has for an image.
Here those are the audit's stored arrays (`diffaudit.audit.run.gather`):
  stats__{attack}  [N, T, M]  Σ|v|^p of the attack vector at each t of the attack's grid, under
                              each mask of the bank (lower = member)
  hf__{attack}     [N, T_hf, 2]  decoded-image variants of arXiv 2511.20592 App. F (plain,
                                high-frequency filtered)
One column per (attack, t, kept mask) and per (attack, hf t, variant). A column whose values are
all > 0 enters as its logarithm (the statistics are sums of powers: right-skewed, with a scale that
grows with t); any other column (an attack whose statistic is a difference) enters as is. The
choice looks at no label, so it cannot bias the test. Standardizing is the scorer's job.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError

__all__ = ["statistic_features"]


def statistic_features(arrays: dict, grids: dict[str, Sequence[int]], mask_names: Sequence[str],
                       keep_masks: Sequence[str] = ("none",), hf_timesteps: Sequence[int] = ()
                       ) -> tuple[np.ndarray, list[str]]:
    """Feature matrix [N, d] (float64) and its column names "attack/t{t}/{mask}" and
    "attack/hf-t{t}/{plain|filtered}".

    `grids`: each attack's timesteps (the audit config's `grid(attack)`), in the order the columns
    should come; `mask_names`: the mask bank's names in the stored column order; `keep_masks`:
    the masks to use (e.g. "none" and "influence@40"); `hf_timesteps`: the t of the hf__ arrays
    (their attacks are included when present).
    """
    mask_names = list(mask_names)
    cols, names = [], []
    for attack, grid in grids.items():
        key = f"stats__{attack}"
        if key not in arrays:
            raise InputError(f"no statistics for attack {attack!r} in the gathered arrays (have: "
                             f"{', '.join(sorted(k for k in arrays if k.startswith('stats__')))})")
        S = np.asarray(arrays[key])
        if S.ndim != 3 or S.shape[1:] != (len(grid), len(mask_names)):
            raise InputError(f"{key} has shape {S.shape}; expected [N, {len(grid)} timesteps, "
                             f"{len(mask_names)} masks]")
        for m in keep_masks:
            if m not in mask_names:
                raise InputError(f"mask {m!r} is not in the audit's mask bank ({', '.join(mask_names[:6])}, …)")
            j = mask_names.index(m)
            for ti, t in enumerate(grid):
                cols.append(S[:, ti, j])
                names.append(f"{attack}/t{t}/{m}")
        hkey = f"hf__{attack}"
        if hkey in arrays and len(hf_timesteps):
            H = np.asarray(arrays[hkey])
            if H.ndim != 3 or H.shape[1:] != (len(hf_timesteps), 2):
                raise InputError(f"{hkey} has shape {H.shape}; expected [N, {len(hf_timesteps)}, 2]")
            for ti, t in enumerate(hf_timesteps):
                for v, variant in enumerate(("plain", "filtered")):
                    cols.append(H[:, ti, v])
                    names.append(f"{attack}/hf-t{t}/{variant}")
    if not cols:
        raise InputError("no feature columns: no attacks given")
    F = np.stack(cols, axis=1).astype(np.float64)
    bad = np.argwhere(~np.isfinite(F))
    if len(bad):
        i, j = bad[0]
        raise InputError(f"statistic {names[j]} of sample {i} is NaN/Inf; it cannot be a feature")
    positive = (F > 0).all(axis=0)
    F[:, positive] = np.log(F[:, positive])
    return F, names
