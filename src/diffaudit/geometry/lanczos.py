"""Top singular values of J_D by Golub–Kahan–Lanczos, stopped per sample by Ritz residuals.

Golub–Kahan–Lanczos bidiagonalisation of J (Golub & Kahan 1965) builds, from a start vector
v₁, the Krylov space K_s(JᵀJ, v₁) with one J·v and one Jᵀ·u per step, and its Ritz values are
the singular values of J on that space. It is run here in its Lanczos-on-JᵀJ form, with blocks
of b columns and full reorthogonalisation (twice, Giraud et al. 2005) of the latent-space basis:

    Zᵢ = Jᵀ(J Vᵢ),   Vᵢ₊₁ = orth(Zᵢ ⟂ V₁ … Vᵢ),   H = sym(Vᵀ Z),   σ = √eig(H)

(same space and Ritz values in exact arithmetic). Only d-dimensional vectors are kept: no
output-sized basis, however large the image. For a Ritz pair (θ = σ², q) of H the residual
‖Z q − θ V q‖ = σ·‖Jᵀ(J Vq)/σ − σ Vq‖ comes free with the products; a sample stops once every
top-`rank` residual is ≤ tol·θ (the singular-triplet residual ≤ tol·σ). Stopped samples spend
no more products: samples converge at different speeds. Through JᵀJ a small σᵢ is accurate to
about eps·σ₁²/σᵢ, immaterial for the top singular values of a decoder (σ₁/σ₂₀ ≈ 2 measured).

Why residuals and not the change of Σ log σ between steps: measured on random-init
AutoencoderKL decoders, Σ log σ moved by < 3e-3 nats in a step while a top-20 value was still
missing (error 4e-2); the residuals rose again before that value appeared (benchmarks/README.md).
"""
from __future__ import annotations

import torch

from ._linearize import Linearization

# Rebuild the kept graph at the samples still running once they are fewer than this fraction
# of the graph's samples: until then one backward through the old graph (zero cotangents for
# the stopped samples) is cheaper than a new forward.
REBUILD_BELOW = 0.75


def _orth_against(B: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """X minus its projection on the orthonormal columns of B, twice."""
    for _ in range(2):
        X = X - B @ (B.transpose(1, 2) @ X)
    return X


def gkl_svdvals(lin: Linearization, W0: torch.Tensor, rank: int, max_steps: int, tol: float):
    """Top-`rank` Ritz singular values per sample of `lin` from start blocks W0 [n, d, b].

    Returns (σ [n, rank] descending, products [n]: J·v plus Jᵀ·u per sample). A sample stops
    at the first step where every top-`rank` residual is ≤ tol·σ², when its basis spans all d
    dims, or after `max_steps` steps.
    """
    n, d, b = W0.shape
    out = torch.zeros(n, rank, dtype=W0.dtype, device=W0.device)
    products = torch.zeros(n, dtype=torch.long)
    active = list(range(n))  # samples still running (indices into lin's samples)
    cur, pos = lin, list(range(n))  # the linearization in use and the active samples' rows in it
    W = torch.linalg.qr(W0, mode="reduced").Q
    V = Z = None
    for step in range(max_steps):
        Zi = cur.rmatmul(cur.matmul(W, rows=pos), rows=pos)  # [na, d, w]: JᵀJ W
        for i in active:
            products[i] += 2 * W.shape[2]
        V = W if V is None else torch.cat([V, W], dim=2)
        Z = Zi if Z is None else torch.cat([Z, Zi], dim=2)
        k = V.shape[2]
        H = V.transpose(1, 2) @ Z
        theta, Q = torch.linalg.eigh(0.5 * (H + H.transpose(1, 2)))  # ascending
        theta, Q = theta.flip(-1), Q.flip(-1)
        done = torch.zeros(len(active), dtype=torch.bool)
        if k >= rank:
            top, Qk = theta[:, :rank], Q[:, :, :rank]
            resid = (Z @ Qk - (V @ Qk) * top.unsqueeze(1)).norm(dim=1)  # [na, rank]
            done = (resid <= tol * top.abs()).all(dim=1).cpu()
        if k >= d or step == max_steps - 1:
            done[:] = True
        if done.any():
            for j in done.nonzero().flatten().tolist():
                out[active[j], :min(rank, k)] = theta[j, :rank].clamp_min(0).sqrt()
            keep = (~done).nonzero().flatten().tolist()
            if not keep:
                break
            active, pos = [active[j] for j in keep], [pos[j] for j in keep]
            V, Z, Zi = V[keep], Z[keep], Zi[keep]
            if len(pos) < REBUILD_BELOW * cur.n:
                cur.release()
                cur, pos = cur.restrict(pos), list(range(len(pos)))
        # Next block: the new directions of JᵀJ W, orthogonalised twice (a second QR pass too,
        # since where they are tiny, an invariant subspace, QR's directions are rounding noise).
        Wn = torch.linalg.qr(_orth_against(V, Zi), mode="reduced").Q
        Wn = torch.linalg.qr(_orth_against(V, Wn), mode="reduced").Q
        W = Wn[:, :, :min(b, d - k)]
    cur.release()
    return out, products
