"""Overestimation and alignment of the noise predictions with the training image (Kim et al.
2025, Sec. 3.2 "training loss and overestimation", Sec. 3.3 "noise predictions").

All measures are per step and per seed along a recorded trajectory (z_t, ε̂_c, ε̂_u) and a
reference clean latent z_x (the paired training image). Definitions, fixed up front:

* paper's Sec. 3.3 measure: cos(ε̂_c, z_x), cos(ε̂_u, z_x), cos(ε̂_c, z_T), cos(ε̂_u, z_T).
* predicted clean latents x̂_0,k = (z_t − √(1−ᾱ_t) ε̂_k)/√ᾱ_t for k ∈ {c, u, g}, with
  ε̂_g = ε̂_u + w(ε̂_c − ε̂_u); `cos_x0_k` = cos(x̂_0,k − μ, z_x − μ) (μ: an optional centre,
  e.g. the data mean, since the theory's unconditional estimate tends to μ; default 0).
* the direction towards z_x in ε-space is ε*_x = (z_t − √ᾱ_t z_x)/√(1−ᾱ_t), the noise that
  maps z_t to z_x in one DDIM step. The guidance direction ε̂_c − ε̂_u is compared with the
  correction the unconditional prediction needs, ε*_x − ε̂_u:
  `cos_guidance` = cos(ε̂_c − ε̂_u, ε*_x − ε̂_u) = cos(x̂_0,c − x̂_0,u, z_x − x̂_0,u)
  (both sides are the same vectors scaled by −√(1−ᾱ)/√ᾱ, so the two spaces agree).
* overestimation scale k_k = ⟨x̂_0,k − μ, z_x − μ⟩ / ‖z_x − μ‖² (k ≈ 1: right amount of z_x;
  the theory predicts k_g ≈ w for a memorized pair: μ + w(z_x − μ)); and the relative norm
  ‖x̂_0,k‖ / ‖z_x‖.
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
    S, n = traj.eps_c.shape[:2]
    d = traj.latents[0, 0].numel()
    if z_x.numel() not in (d, n * d):
        raise InputError(f"z_x has {z_x.numel()} values; want {d} (one latent) or {n}x{d} (one per seed)")
    zx = z_x.reshape(1, -1, d).double().cpu()
    mu = torch.zeros_like(zx) if center is None else center.reshape(1, 1, -1).double().cpu()
    zt, ec, eu = _flat(traj.latents[:-1]), _flat(traj.eps_c), _flat(traj.eps_u)
    zT = _flat(traj.latents[:1])
    a = traj.alphas_in.double().reshape(S, 1, 1)
    w = traj.guidance.double().reshape(S, 1, 1)
    eg = eu + w * (ec - eu)
    x0 = {k: (zt - (1 - a).sqrt() * e) / a.sqrt() for k, e in (("c", ec), ("u", eu), ("g", eg))}
    eps_star = (zt - a.sqrt() * zx) / (1 - a).sqrt()
    ref = (zx - mu).expand_as(zt)
    ref_sq = (zx - mu).pow(2).sum(-1)
    out = {
        "cos_eps_c_x": _cos(ec, zx.expand_as(ec)),
        "cos_eps_u_x": _cos(eu, zx.expand_as(eu)),
        "cos_eps_c_T": _cos(ec, zT.expand_as(ec)),
        "cos_eps_u_T": _cos(eu, zT.expand_as(eu)),
        "cos_guidance": _cos(ec - eu, eps_star - eu),
        "guidance_norm": (ec - eu).norm(dim=-1),
    }
    for k, v in x0.items():
        out[f"cos_x0_{k}"] = _cos(v - mu, ref)
        out[f"k_{k}"] = ((v - mu) * ref).sum(-1) / ref_sq
        out[f"norm_x0_{k}"] = v.norm(dim=-1) / zx.norm(dim=-1)
    return out


def denoising_losses(model, z_x: torch.Tensor, cond, uncond, timesteps, guidance: float, noise: torch.Tensor) -> dict:
    """Training-loss view (Kim et al. Sec. 3.2): for one (prompt, training image) pair and each
    t, the denoising loss ‖ε − ε̂‖²/d at z_t = √ᾱ_t z_x + √(1−ᾱ_t) ε with ε̂ = ε̂_c (no
    guidance), ε̂_u, and the guided ε̂_u + w(ε̂_c − ε̂_u); averaged over the draws.

    z_x: [*shape] or [1, *shape]; cond / uncond: one row each; noise: [R, *shape] draws (the
    same draws at every t, so the per-t differences are paired). Returns [len(t)] tensors and
    the guided x̂_0 scale k on z_x (k = ⟨x̂_0,g, z_x⟩/‖z_x‖²).
    """
    from .sampler import _device_of, _rows

    r = noise.shape[0]
    ac = torch.as_tensor(model.alphas_cumprod).double().cpu()
    dev = _device_of(model, noise)
    zx = z_x.reshape(1, *noise.shape[1:]).to(device=dev, dtype=torch.float32)
    eps = noise.to(device=dev, dtype=torch.float32)
    c, u = _rows(cond, r, "cond"), _rows(uncond, r, "uncond")
    both = torch.cat([u, c]) if isinstance(c, torch.Tensor) else {k: torch.cat([u[k], c[k]]) for k in c}
    res = {"t": [], "loss_c": [], "loss_u": [], "loss_g": [], "k_g": [], "k_c": []}
    with torch.no_grad():
        for t in timesteps:
            a = float(ac[int(t)])
            zt = a**0.5 * zx + (1 - a) ** 0.5 * eps
            e = model.eps(torch.cat([zt, zt]), torch.full((2 * r,), int(t), dtype=torch.long, device=dev), both).float()
            e_u, e_c = e[:r], e[r:]
            e_g = e_u + guidance * (e_c - e_u)
            res["t"].append(int(t))
            for k, v in (("c", e_c), ("u", e_u), ("g", e_g)):
                res[f"loss_{k}"].append(float((eps - v).pow(2).flatten(1).mean(1).mean()))
            for k, v in (("c", e_c), ("g", e_g)):
                x0 = (zt - (1 - a) ** 0.5 * v) / a**0.5
                res[f"k_{k}"].append(float(((x0 * zx).flatten(1).sum(1) / zx.pow(2).sum()).mean()))
    return {k: torch.tensor(v) for k, v in res.items()}
