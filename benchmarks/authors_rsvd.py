"""The paper authors' distortion code path, re-implemented for timing (arXiv 2511.20592 App. A).

What the authors run for S_K (their public repository mx-ethan-rao/VAE2Diffusion, function
`topk_svals_randomized` in ldm_light/log_volume/cal_pullback_rand_svd.py, called per sample with
k = 20, oversample = 30, power = 2, use_jvp = True), step for step:

- the decoder as a map of the flattened latent of ONE sample to the flattened image;
- J·V: one `torch.autograd.functional.jvp` (reverse-over-reverse "double backward") per column;
- Jᵀ·Y: ONE forward with a graph, then per column the gradient of ⟨D(z), y_j⟩ with
  `retain_graph=True` for all but the last column;
- Algorithm 1: V = qr(N(0, I_{d×ℓ})), ℓ = k + p = 50; twice V = qr(Jᵀ(J V)); Q = qr(J V);
  σ = sort(svdvals(JᵀQ).clamp_min(1e-12))[:k]: 6ℓ = 300 products per sample.

Two departures, neither touching the cost: the start matrix is the one diffaudit draws for the
sample (so the batched Algorithm 1 can be checked against this one number for number) instead
of the global RNG, and the decoder runs under the MATH attention kernel (double backward through
attention needs it on CPU; the authors' Stable Diffusion scripts force it too).
"""
from __future__ import annotations

import torch
from torch.autograd.functional import jvp as ad_jvp
from torch.nn.attention import SDPBackend, sdpa_kernel


def _qr(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a, mode="reduced").Q


def authors_topk_svals(decode, z1: torch.Tensor, V0: torch.Tensor, k: int = 20, power: int = 2) -> torch.Tensor:
    """Top-k singular values of J_D at one latent z1 [1, *zshape] from the start matrix V0 [d, ℓ]."""
    zshape = z1.shape

    def decoder_mean(z_flat):  # R^d -> R^m for one sample
        return decode(z_flat.view(zshape)).reshape(-1)

    z_flat = z1.reshape(-1).detach().clone()

    def J_times(V):  # [d, r] -> [m, r]
        z0 = z_flat.detach().requires_grad_(True)
        return torch.stack([ad_jvp(decoder_mean, (z0,), (V[:, j],))[1].detach() for j in range(V.shape[1])], dim=1)

    def JT_times(Y):  # [m, r] -> [d, r]: one forward, r retained-graph backwards
        z0 = z_flat.detach().requires_grad_(True)
        mu = decoder_mean(z0)
        r = Y.shape[1]
        cols = []
        for j in range(r):
            (g,) = torch.autograd.grad(torch.dot(mu, Y[:, j]), z0, retain_graph=j < r - 1)
            cols.append(g.detach())
        return torch.stack(cols, dim=1)

    with sdpa_kernel(SDPBackend.MATH):
        V = _qr(V0)
        for _ in range(power):
            V = _qr(JT_times(J_times(V)))
        Q = _qr(J_times(V))
        s = torch.linalg.svdvals(JT_times(Q)).clamp_min(1e-12)
    return torch.sort(s, descending=True).values[:k]


def authors_products(d: int, k: int = 20, oversample: int = 30, power: int = 2) -> int:
    """Jacobian products per sample of the authors' path: (2·power + 2)·ℓ."""
    return (2 * power + 2) * min(k + oversample, d)
