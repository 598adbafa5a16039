"""½·log det(J_Dᵀ J_D) over all d latent dims by stochastic Lanczos quadrature (arXiv 2511.20592 Eq. 4 over all d).

log det G = tr log G ≈ mean over probes u of ‖u‖²·Σ_k τ_k² log θ_k, where θ_k, τ_k are the
eigenvalues and first eigenvector components of the s×s Lanczos tridiagonal of G = JᵀJ started
at u/‖u‖ (Ubaru, Chen & Saad 2017). G·u = Jᵀ(J u) costs one J·v and one Jᵀ·y; all probes of
all samples of a chunk run together, one Lanczos step at a time.
"""
from __future__ import annotations

import math

import torch

from ._linearize import Linearization

PROBES = ("rademacher", "gaussian")
SLQ_STEPS = 100  # default Lanczos steps: quadrature bias < 0.1 x the 16-probe trace std, measured (distortion)


def slq_logdet(lin: Linearization, U: torch.Tensor, steps: int) -> torch.Tensor:
    """Estimate log det(J_nᵀ J_n) for each sample n of `lin` from probes U [n, d, P] -> [n]."""
    n, d, P = U.shape
    steps = min(steps, d)
    dtype = U.dtype
    norms2 = U.square().sum(dim=1)  # [n, P]
    q = U / norms2.sqrt().unsqueeze(1)
    # Lanczos vectors, preallocated: [n, P, d, steps] (a list stacked every step costs O(steps²·d)).
    basis = U.new_zeros(n, P, d, steps)
    basis[..., 0] = q.transpose(1, 2)
    alphas, betas = [], []
    active = torch.ones(n, P, dtype=torch.bool, device=U.device)
    scale = torch.zeros(n, P, dtype=dtype, device=U.device)
    tol = math.sqrt(torch.finfo(dtype).eps)
    for j in range(steps):
        w = lin.rmatmul(lin.matmul(q))  # G q for every probe: [n, d, P]
        a = (q * w).sum(dim=1)
        # Full reorthogonalisation against every Lanczos vector so far (twice), which also
        # removes the a·q and b·q_prev terms of the three-term recurrence.
        Qm = basis[..., :j + 1]  # [n, P, d, j+1]
        wt = w.transpose(1, 2).unsqueeze(-1)  # [n, P, d, 1]
        for _ in range(2):
            wt = wt - Qm @ (Qm.transpose(-1, -2) @ wt)
        w = wt.squeeze(-1).transpose(1, 2)
        # A stopped probe (invariant subspace found) continues as a decoupled identity block:
        # eigenvalue 1, log 1 = 0, so it adds nothing.
        alphas.append(torch.where(active, a, torch.ones_like(a)))
        if j == steps - 1:
            break
        b = w.norm(dim=1)
        scale = torch.maximum(scale, a.abs())
        stop = b <= tol * scale
        betas.append(torch.where(active & ~stop, b, torch.zeros_like(b)))
        active = active & ~stop
        q = torch.where(active.unsqueeze(1), w / b.clamp_min(torch.finfo(dtype).tiny).unsqueeze(1),
                        torch.zeros_like(w))
        basis[..., j + 1] = q.transpose(1, 2)
    T = torch.diag_embed(torch.stack(alphas, dim=-1))
    if betas:
        off = torch.diag_embed(torch.stack(betas, dim=-1), offset=1)
        T = T + off + off.transpose(-1, -2)
    theta, vecs = torch.linalg.eigh(T)  # [n, P, s], [n, P, s, s]
    tau2 = vecs[..., 0, :].square()
    logs = torch.log(theta.clamp_min(torch.finfo(dtype).tiny))
    return (norms2 * (tau2 * logs).sum(dim=-1)).mean(dim=1)
