"""Latent decomposition and the deviation score (Kim, Kim & Lee 2025, "How Diffusion Models
Memorize", arXiv 2509.25705, Sec. 4 "decomposition of intermediate latents").

Each intermediate latent z_t of one trajectory is fitted, by least squares without intercept,
on two columns: the clean latent z_x of the paired training image (or the trajectory's own
final latent when no image is known, as the authors' earlier code does) and the initial noise
z_T:  z_t ≈ w_0(t)·z_x + w_T(t)·z_T.  A deterministic trajectory that follows the schedule has
(w_0, w_T) = the path's coefficients (`paths.py`): (√ᾱ_t, √(1−ᾱ_t)) for a DDIM run, (1−σ, σ) for
a flow Euler run (latents in flow coordinates x_σ); under memorization z_x takes over early
(w_0 above, w_T below).

Off-by-one: the latent written by the step t → t' belongs to t' (its level is the one the step
mapped *to*), so the theoretical curves use the sampler's output levels, not its input ones.

Even a perfect denoiser does not give exactly (√ᾱ_t, √(1−ᾱ_t)) on a DDIM run: z_T is pure
noise, while the first timestep t_0 has ᾱ_t0 > 0 (SD: 0.0047), so it yields
w_T = √(1−ᾱ_t)/√(1−ᾱ_t0) and w_0 = √ᾱ_t − √ᾱ_t0·w_T (tested). The offset is the same for every
prompt: it shifts D_0, D_T but does not change their ranking. A flow run starts at σ = 1, where
x_1 is the noise itself, so a perfect velocity field gives (1−σ, σ) exactly (tested).
"""
from __future__ import annotations

import torch

from ..._checks import check_batched
from ...errors import InputError
from .paths import VP


def decompose(latents: torch.Tensor, z_x: torch.Tensor, z_T: torch.Tensor) -> dict:
    """Least squares of every latent on [z_x, z_T] (no intercept).

    latents: [S, N, *shape] (steps × seeds) or [N, *shape]; z_x: [N, *shape] (per seed) or
    [*shape] / [1, *shape] (shared); z_T: [N, *shape].
    Returns float64 tensors `w0`, `wT`, `residual` (root-mean-square per element, as the
    authors' code reports it), `rel_residual` (‖r‖ / ‖z_t‖), each shaped [S, N] (or [N]).
    """
    single = latents.dim() == z_T.dim()
    lat = latents.unsqueeze(0) if single else latents
    if lat.dim() != z_T.dim() + 1 or lat.shape[1:] != z_T.shape:
        raise InputError(f"latents {tuple(latents.shape)} do not match z_T {tuple(z_T.shape)} (want [steps, seeds, ...])")
    n = z_T.shape[0]
    zx = z_x.expand_as(z_T) if z_x.dim() < z_T.dim() or z_x.shape[0] == 1 else z_x
    if zx.shape != z_T.shape:
        raise InputError(f"z_x {tuple(z_x.shape)} does not match z_T {tuple(z_T.shape)}")
    S = lat.shape[0]
    y = lat.detach().double().reshape(S, n, -1)
    a = torch.stack([zx.detach().double().reshape(n, -1), z_T.detach().double().reshape(n, -1)], dim=-1)  # [N, d, 2]
    # Normal equations per seed (2x2, shared over steps): cheap and exact in float64; lstsq
    # on [N, d, 2] would redo the QR for every step.
    gram = a.transpose(1, 2) @ a  # [N, 2, 2]
    if torch.linalg.matrix_rank(gram).min() < 2:
        raise InputError("z_x and z_T are linearly dependent for some seed: the decomposition is undefined")
    rhs = torch.einsum("ndk,snd->snk", a, y)  # [S, N, 2]
    w = torch.linalg.solve(gram.unsqueeze(0).expand(S, -1, -1, -1), rhs.unsqueeze(-1)).squeeze(-1)
    fit = torch.einsum("ndk,snk->snd", a, w)
    r = y - fit
    d = y.shape[-1]
    out = {
        "w0": w[..., 0],
        "wT": w[..., 1],
        "residual": r.norm(dim=-1) / d**0.5,
        "rel_residual": r.norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-300),
    }
    return {k: v[0] for k, v in out.items()} if single else out


def theoretical_coefficients(levels_out: torch.Tensor, path=VP) -> tuple[torch.Tensor, torch.Tensor]:
    """The path's (w_0, w_T) at the levels the latents belong to (the steps' *output* levels):
    (√ᾱ, √(1−ᾱ)) for VP, (1−σ, σ) for flow."""
    a = torch.as_tensor(levels_out, dtype=torch.float64)
    path.check_levels(a)
    return path.coefficients(a)


def deviation_scores(w0: torch.Tensor, wT: torch.Tensor, levels_out: torch.Tensor, path=VP) -> dict:
    """Deviation of the seed-averaged coefficients from the schedule, summed over steps (arXiv 2509.25705 Sec. 4):
    D_0 = Σ_t (E[w_0(t)] − a_t),  D_T = −Σ_t (E[w_T(t)] − b_t) with (a, b) the path's coefficients
    ((√ᾱ_t, √(1−ᾱ_t)) VP, (1−σ, σ) flow); larger = more memorized.

    w0, wT: [S, N] (steps × seeds) or [S] (already averaged); levels_out: [S] (ᾱ or σ).
    Also returns the per-step mean curves and the schedule's curves.
    """
    w0m = w0.double().mean(dim=1) if w0.dim() == 2 else w0.double()
    wTm = wT.double().mean(dim=1) if wT.dim() == 2 else wT.double()
    th0, thT = theoretical_coefficients(levels_out, path)
    if w0m.shape != th0.shape:
        raise InputError(f"{w0m.shape[0]} decomposed steps but {th0.shape[0]} output alphas")
    return {
        "D0": float((w0m - th0).sum()),
        "DT": float(-(wTm - thT).sum()),
        "w0_mean": w0m,
        "wT_mean": wTm,
        "w0_theory": th0,
        "wT_theory": thT,
    }


def decompose_trajectory(traj, z_x: torch.Tensor | None = None) -> dict:
    """Decomposition of a recorded `Trajectory` (see sampler.py) and its deviation scores.

    z_x: the paired training image's latent ([*shape] or [1, *shape]); None → each seed's own
    final latent (then the last step is w_0 = 1, w_T = 0 by construction).
    """
    lat = traj.latents[1:]  # the steps' outputs; latents[0] is z_T itself
    zT = traj.latents[0]
    ref = traj.latents[-1] if z_x is None else check_batched(z_x.reshape(1, *zT.shape[1:]).to(zT), "z_x")
    dec = decompose(lat, ref, zT)
    dev = deviation_scores(dec["w0"], dec["wT"], traj.levels_out, traj.path)
    dev["residual_mean"] = dec["residual"].mean(dim=1)
    dev["w0"], dev["wT"] = dec["w0"], dec["wT"]
    return dev
