"""Deterministic DDIM sampling (η = 0) with classifier-free guidance that records the whole
trajectory: latents, ε̂_c, ε̂_u per step (Kim et al. 2025, arXiv 2509.25705, sample SD with DDIM,
50 steps, g = 7.5). Works over the model contract only: `eps(z_t, t, cond)`, `alphas_cumprod`.

One DDIM step from t to t' with guided ε̂_g = ε̂_u + w (ε̂_c − ε̂_u):
  x̂_0 = (z_t − √(1−ᾱ_t) ε̂_g) / √ᾱ_t,   z_t' = √ᾱ_t' x̂_0 + √(1−ᾱ_t') ε̂_g
(`diffaudit.diffusion.ddim_step`; Song et al. 2021, arXiv 2010.02502, Eq. 12).
The state and this arithmetic stay in float32 even when the UNet runs in fp16.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._checks import check_finite
from ...diffusion import ddim_step
from ...errors import InputError, ModelError


@dataclass
class Trajectory:
    """A recorded batch of trajectories (one prompt, N seeds), all on the CPU in float32.

    latents[0] is z_T, latents[i + 1] the output of step i; eps_c/eps_u[i] were predicted at
    latents[i] and timesteps[i]; alphas_in[i] = ᾱ(timesteps[i]), alphas_out[i] = the ᾱ that
    step i maps to (the one latents[i + 1] belongs to); guidance[i] = w used at step i.
    """

    timesteps: torch.Tensor  # [S] long
    alphas_in: torch.Tensor  # [S] float64
    alphas_out: torch.Tensor  # [S] float64
    guidance: torch.Tensor  # [S] float64
    latents: torch.Tensor  # [S+1, N, *shape]
    eps_c: torch.Tensor  # [S, N, *shape]
    eps_u: torch.Tensor  # [S, N, *shape]

    @property
    def eps_g(self) -> torch.Tensor:
        w = _bcast(self.guidance, self.eps_c)
        return self.eps_u + w * (self.eps_c - self.eps_u)

    def x0(self, kind: str = "g") -> torch.Tensor:
        """Predicted clean latents per step: kind "c" (conditional), "u" (unconditional) or
        "g" (guided, the one the sampler stepped with): (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t."""
        eps = {"c": self.eps_c, "u": self.eps_u, "g": self.eps_g}.get(kind)
        if eps is None:
            raise InputError(f"kind must be 'c', 'u' or 'g', got {kind!r}")
        a = _bcast(self.alphas_in, eps)
        return (self.latents[:-1] - (1 - a).sqrt() * eps) / a.sqrt()

    def rows(self, idx) -> "Trajectory":
        """The trajectories of the seeds/rows `idx` (a slice or index tensor)."""
        return Trajectory(self.timesteps, self.alphas_in, self.alphas_out, self.guidance,
                          self.latents[:, idx], self.eps_c[:, idx], self.eps_u[:, idx])

    @property
    def final(self) -> torch.Tensor:
        return self.latents[-1]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def ddim_schedule(alphas_cumprod: torch.Tensor, steps: int, scheduler_config: dict | None = None):
    """(timesteps [S], ᾱ_in [S], ᾱ_out [S]) of a DDIM run with `steps` steps.

    With a diffusers scheduler config (e.g. a Stable Diffusion folder's scheduler/), the
    timesteps and the final ᾱ follow `DDIMScheduler` for that config (SD: leading spacing,
    steps_offset 1, final ᾱ = ᾱ_0). Without: leading spacing, offset 0, final ᾱ = 1.
    """
    ac = torch.as_tensor(alphas_cumprod).detach().double().cpu()
    T = ac.shape[0]
    if not 1 <= int(steps) <= T:
        raise InputError(f"steps must be in [1, {T}], got {steps}")
    steps = int(steps)
    if scheduler_config is not None:
        from diffusers import DDIMScheduler

        cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ModelError(f"the scheduler predicts {cfg['prediction_type']!r}; dynamics needs ε-prediction")
        cfg["num_train_timesteps"] = T
        sched = DDIMScheduler.from_config(cfg)
        sched.set_timesteps(steps)
        ts = sched.timesteps.long().cpu()
        final = float(sched.final_alpha_cumprod)
    else:
        ratio = T // steps
        ts = (torch.arange(steps) * ratio).flip(0).long()
        final = 1.0
    prev = ts - T // steps
    a_out = torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.tensor(final, dtype=torch.float64))
    return ts, ac[ts], a_out


def guidance_schedule(steps: int, guidance: float, delay: int = 0, early_guidance: float = 1.0) -> torch.Tensor:
    """Per-step w: `early_guidance` (1 = conditional only, no guidance) for the first `delay`
    steps, then `guidance` — the delayed-guidance remedy (Jain et al., CVPR 2025) that Kim et
    al. explain (arXiv 2509.25705)."""
    if delay < 0:
        raise InputError(f"delay must be ≥ 0, got {delay}")
    w = torch.full((steps,), float(guidance), dtype=torch.float64)
    w[: min(delay, steps)] = float(early_guidance)
    return w


@torch.no_grad()
def sample_ddim(
    model,
    cond,
    uncond,
    noise: torch.Tensor,
    steps: int = 50,
    guidance: float | torch.Tensor = 7.5,
    scheduler_config: dict | None = None,
    progress: bool = False,
) -> Trajectory:
    """Run N trajectories (one per row of `noise`) of one prompt and record them.

    cond / uncond: the conditional and null conditions for N rows (batch-first tensors with
    equal trailing shapes, e.g. `model.encode_cond([caption] * N)` and `model.uncond(N)`);
    a single row is expanded to N. Both are evaluated in one batched UNet call per step.
    guidance: a float w or a per-step tensor of w (see `guidance_schedule`).
    """
    if noise.dim() < 2:
        raise InputError(f"noise must be [N, *latent_shape], got {tuple(noise.shape)}")
    n = noise.shape[0]
    ts, a_in, a_out = ddim_schedule(model.alphas_cumprod, steps, scheduler_config)
    S = ts.shape[0]
    w = guidance if isinstance(guidance, torch.Tensor) else torch.full((S,), float(guidance))
    w = w.detach().double().cpu()
    if w.shape != (S,):
        raise InputError(f"guidance must be a float or a tensor of {S} per-step values, got shape {tuple(w.shape)}")
    c, u = _rows(cond, n, "cond"), _rows(uncond, n, "uncond")
    both = torch.cat([u, c]) if isinstance(c, torch.Tensor) else _cat_cond(u, c)
    device = _device_of(model, noise)
    z = noise.detach().to(device=device, dtype=torch.float32)
    lat, ec, eu = [z.cpu()], [], []
    it = range(S)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="DDIM", leave=False)
    for i in it:
        t = torch.full((2 * n,), int(ts[i]), dtype=torch.long, device=device)
        e = model.eps(torch.cat([z, z]), t, both).float()
        check_finite(e, f"model.eps at step {i} (t={int(ts[i])})")
        e_u, e_c = e[:n], e[n:]
        e_g = e_u + float(w[i]) * (e_c - e_u)
        ai, ao = float(a_in[i]), float(a_out[i])
        z = ddim_step(z, e_g, ai**0.5, (1 - ai) ** 0.5, ao**0.5, (1 - ao) ** 0.5)
        lat.append(z.cpu())
        ec.append(e_c.cpu())
        eu.append(e_u.cpu())
    return Trajectory(ts, a_in, a_out, w, torch.stack(lat), torch.stack(ec), torch.stack(eu))


def _rows(c, n: int, what: str):
    if isinstance(c, torch.Tensor):
        if c.shape[0] == 1 and n > 1:
            return c.expand(n, *c.shape[1:])
        if c.shape[0] != n:
            raise InputError(f"{what} has {c.shape[0]} rows, expected 1 or {n}")
        return c
    if isinstance(c, dict):  # e.g. {"encoder_hidden_states": ..., "attention_mask": ...}
        return {k: _rows(v, n, f"{what}[{k!r}]") for k, v in c.items()}
    raise InputError(f"{what} must be a tensor or a dict of tensors, got {type(c).__name__}")


def _cat_cond(u, c):
    if isinstance(u, dict) and isinstance(c, dict) and u.keys() == c.keys():
        return {k: torch.cat([u[k], c[k]]) for k in u}
    raise InputError("cond and uncond must be of the same kind (tensors, or dicts with the same keys)")


def _device_of(model, fallback: torch.Tensor) -> torch.device:
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    return torch.as_tensor(model.alphas_cumprod).device if isinstance(model.alphas_cumprod, torch.Tensor) else fallback.device
