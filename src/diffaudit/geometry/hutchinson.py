"""Per-dimension influence: diag(J_Dᵀ J_D) by Hutchinson probes (arXiv 2511.20592 §3.3, App. D).

diag(JᵀJ) = E_v[(Jᵀv) ⊙ (Jᵀv)], v ~ N(0, I_m) in the decoder's output space; Jᵀv by reverse
mode, J never built. Unlike the paper's Algorithm 2 (a loop over samples and probes), every
sample of a chunk shares one forward pass and each probe is one backward pass on that graph.
"""
from __future__ import annotations

import math

import torch

from ._inputs import (GeneratorArg, check_latent, check_positive_int, draw, items_per_call,
                      per_sample_generators)
from ._linearize import Linearization, output_shape, resolve_vjp_mode


def jacobian_diag(decode, z: torch.Tensor, n_probes: int = 8, generator: GeneratorArg = None,
                  exact: bool = False, *, max_batch: int | None = None, vjp_mode: str = "auto") -> torch.Tensor:
    """diag(J_D(z)ᵀ J_D(z)) per sample, shaped like `z`.

    Hutchinson (paper Eq. 7, App. D): mean over `n_probes` Gaussian probes of (Jᵀv)², unbiased
    with relative standard deviation √(2/n_probes) per entry. `exact=True` computes the exact
    diagonal, ‖J e_i‖² for each input dim i (d forward-mode passes) or Σ_r (Jᵀe_r)² over output
    dims r (m reverse passes), whichever is fewer: for small decoders and tests.
    `max_batch` caps decoder inputs per call (default: sized to the output); `vjp_mode` is
    "loop" (one backward per probe on a shared forward; CPU default) or "fold" (probes folded
    into the batch; accelerator default).
    """
    z = check_latent(z)
    n_probes = check_positive_int(n_probes, "n_probes")
    gens = per_sample_generators(generator, z.shape[0])
    xshape = output_shape(decode, z)
    items = items_per_call(max_batch, math.prod(xshape))
    mode = resolve_vjp_mode(vjp_mode, z.device)
    if exact:
        return _exact_diag(decode, z, xshape, items, mode)
    chunk = items if mode == "loop" else max(1, items // n_probes)
    out = []
    for s in range(0, z.shape[0], chunk):
        zc = z[s:s + chunk]
        lin = Linearization(decode, zc, xshape, first_id=s, items=items, vjp_mode=mode)
        probes = draw(gens[s:s + chunk], (n_probes, *xshape), like=zc)
        g = lin.vjp(probes, keep=False)  # [n, P, *zshape]
        out.append(g.square().mean(dim=1))
    return torch.cat(out)


def _exact_diag(decode, z, xshape, items, mode):
    d, m = z[0].numel(), math.prod(xshape)
    out = []
    chunk = max(1, items // min(d, m))  # bounds the [n, min(d, m), ...] stack of columns
    for s in range(0, z.shape[0], chunk):
        zc = z[s:s + chunk]
        n = zc.shape[0]
        if d <= m:  # forward mode over the input basis: column i of J is J e_i
            lin = Linearization(decode, zc, xshape, first_id=s, items=items, method="jvp")
            basis = torch.eye(d, dtype=z.dtype, device=z.device).reshape(d, *zc.shape[1:])
            cols = lin.jvp(basis.unsqueeze(0).expand(n, *basis.shape))  # [n, d, *xshape]
            out.append(cols.reshape(n, d, m).square().sum(dim=2).reshape(zc.shape))
        else:  # reverse mode over the output basis: row r of J is (Jᵀ e_r)ᵀ
            lin = Linearization(decode, zc, xshape, first_id=s, items=items, vjp_mode=mode)
            basis = torch.eye(m, dtype=z.dtype, device=z.device).reshape(m, *xshape)
            rows = lin.vjp(basis.unsqueeze(0).expand(n, *basis.shape))  # [n, m, *zshape]
            lin.release()
            out.append(rows.square().sum(dim=1))
    return torch.cat(out)


def influence(decode, z: torch.Tensor, n_probes: int = 8, eps: float = 1e-12,
              generator: GeneratorArg = None, **kwargs) -> torch.Tensor:
    """Infl_i(z) = ½·log(diag(JᵀJ)_i + eps) per sample, shaped like `z` (arXiv 2511.20592 Eq. 8).

    Extra keywords (`exact`, `max_batch`, `vjp_mode`) go to `jacobian_diag`.
    """
    diag = jacobian_diag(decode, z, n_probes=n_probes, generator=generator, **kwargs)
    return 0.5 * torch.log(diag + eps)
