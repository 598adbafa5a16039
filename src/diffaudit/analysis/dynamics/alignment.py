"""Overestimation and alignment of the noise predictions with the training image (Kim et al.
2025, Sec. 3.2 "training loss and overestimation", Sec. 3.3 "noise predictions").

All measures are per step and per seed along a recorded trajectory (z_t, p̂_c, p̂_u: the native
predictions, ε̂ for VP families, v̂ for flow ones) and a reference clean latent z_x (the paired
training image). The path (`paths.py`) gives z = a·x₀ + b·ε: (a, b) = (√ᾱ_t, √(1−ᾱ_t)) for VP,
(1−σ, σ) for flow. Definitions, fixed up front:

* paper's Sec. 3.3 measure: cos(ε̂_c, z_x), cos(ε̂_u, z_x), cos(ε̂_c, z_T), cos(ε̂_u, z_T), on ε̂
  (for flow ε̂ = x_σ + (1−σ)·v̂, which is x_σ itself at σ = 1: the first step's ε̂ carries no
  prediction there).
* predicted clean latents x̂_0,k for k ∈ {c, u, g}, with p̂_g = p̂_u + w(p̂_c − p̂_u):
  (z_t − b ε̂_k)/a (VP), x_σ − σ v̂_k (flow); `cos_x0_k` = cos(x̂_0,k − μ, z_x − μ) (μ: an
  optional centre, e.g. the data mean, since the theory's unconditional estimate tends to μ;
  default 0).
* the direction towards z_x in prediction space is p*_x, the prediction that maps z_t to z_x
  in one step: ε*_x = (z_t − √ᾱ_t z_x)/√(1−ᾱ_t) (VP), v*_x = (x_σ − z_x)/σ (flow). The guidance
  direction p̂_c − p̂_u is compared with the correction the unconditional prediction needs:
  `cos_guidance` = cos(p̂_c − p̂_u, p*_x − p̂_u) = cos(x̂_0,c − x̂_0,u, z_x − x̂_0,u)
  (both sides are the same vectors scaled by −b/a (VP) or −1/σ (flow), so the spaces agree);
  `guidance_norm` = ‖p̂_c − p̂_u‖.
* overestimation scale k_k = ⟨x̂_0,k − μ, z_x − μ⟩ / ‖z_x − μ‖² (k ≈ 1: right amount of z_x;
  the theory predicts k_g ≈ w for a memorized pair: μ + w(z_x − μ), for either path since x̂₀
  is affine in the prediction); and the relative norm ‖x̂_0,k‖ / ‖z_x‖.
"""
from __future__ import annotations

import torch

from ...errors import InputError


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(*x.shape[:2], -1).double()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def alignment_curves(traj, z_x: torch.Tensor, center: torch.Tensor | None = None) -> dict:
    """Per-step, per-seed alignment measures ([S, N] float64 tensors; see the module doc).

    z_x: one reference latent, or one per seed ([N, *shape], e.g. each trajectory's own end).
    """
    S, n = traj.pred_c.shape[:2]
    d = traj.latents[0, 0].numel()
    if z_x.numel() not in (d, n * d):
        raise InputError(f"z_x has {z_x.numel()} values; want {d} (one latent) or {n}x{d} (one per seed)")
    path = traj.path
    zx = z_x.reshape(1, -1, d).double().cpu()
    mu = torch.zeros_like(zx) if center is None else center.reshape(1, 1, -1).double().cpu()
    zt, pc, pu = _flat(traj.latents[:-1]), _flat(traj.pred_c), _flat(traj.pred_u)
    zT = _flat(traj.latents[:1])
    a, b = path.coefficients(traj.levels_in.double().reshape(S, 1, 1))
    w = traj.guidance.double().reshape(S, 1, 1)
    pg = pu + w * (pc - pu)
    preds = (("c", pc), ("u", pu), ("g", pg))
    x0 = {k: path.x0(zt, p, a, b) for k, p in preds}
    ec, eu = path.eps(zt, pc, a, b), path.eps(zt, pu, a, b)
    p_star = path.toward(zt, zx, a, b)
    ref = (zx - mu).expand_as(zt)
    ref_sq = (zx - mu).pow(2).sum(-1)
    out = {
        "cos_eps_c_x": _cos(ec, zx.expand_as(ec)),
        "cos_eps_u_x": _cos(eu, zx.expand_as(eu)),
        "cos_eps_c_T": _cos(ec, zT.expand_as(ec)),
        "cos_eps_u_T": _cos(eu, zT.expand_as(eu)),
        "cos_guidance": _cos(pc - pu, p_star - pu),
        "guidance_norm": (pc - pu).norm(dim=-1),
    }
    for k, v in x0.items():
        out[f"cos_x0_{k}"] = _cos(v - mu, ref)
        out[f"k_{k}"] = ((v - mu) * ref).sum(-1) / ref_sq
        out[f"norm_x0_{k}"] = v.norm(dim=-1) / zx.norm(dim=-1)
    return out


def denoising_losses(model, z_x: torch.Tensor, cond, uncond, timesteps, guidance: float, noise: torch.Tensor) -> dict:
    """Training-loss view (Kim et al. Sec. 3.2): for one (prompt, training image) pair and each
    t, the denoising loss ‖p − p̂‖²/d of the family's training target p at z_t = a z_x + b ε
    (VP: p = ε at level ᾱ_t; flow: p = v = ε − z_x at σ = t/T, the rectified-flow loss) with
    p̂ = p̂_c (no guidance), p̂_u, and the guided p̂_u + w(p̂_c − p̂_u); averaged over the draws.

    z_x: [*shape] or [1, *shape]; cond / uncond: one row each; noise: [R, *shape] draws (the
    same draws at every t, so the per-t differences are paired). Returns [len(t)] tensors and
    the guided x̂_0 scale k on z_x (k = ⟨x̂_0,g, z_x⟩/‖z_x‖²).
    """
    from .paths import path_of
    from .sampler import _device_of, _rows

    path = path_of(model)
    r = noise.shape[0]
    dev = _device_of(model, noise)
    zx = z_x.reshape(1, *noise.shape[1:]).to(device=dev, dtype=torch.float32)
    eps = noise.to(device=dev, dtype=torch.float32)
    target = path.target(zx, eps)
    c, u = _rows(cond, r, "cond"), _rows(uncond, r, "uncond")
    both = torch.cat([u, c]) if isinstance(c, torch.Tensor) else {k: torch.cat([u[k], c[k]]) for k in c}
    res = {"t": [], "loss_c": [], "loss_u": [], "loss_g": [], "k_g": [], "k_c": []}
    with torch.no_grad():
        for t in timesteps:
            level = path.loss_level(model, t)
            a, b = path.coefficients(level)
            zt = a * zx + b * eps
            p = path.predict(model, torch.cat([zt, zt]), t, level, both)
            p_u, p_c = p[:r], p[r:]
            p_g = p_u + guidance * (p_c - p_u)
            res["t"].append(int(t))
            for k, v in (("c", p_c), ("u", p_u), ("g", p_g)):
                res[f"loss_{k}"].append(float((target - v).pow(2).flatten(1).mean(1).mean()))
            for k, v in (("c", p_c), ("g", p_g)):
                x0 = path.x0(zt, v, a, b)
                res[f"k_{k}"].append(float(((x0 * zx).flatten(1).sum(1) / zx.pow(2).sum()).mean()))
    return {k: torch.tensor(v) for k, v in res.items()}
