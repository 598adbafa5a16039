"""Deterministic sampling with classifier-free guidance that records the whole trajectory:
latents and the conditional / unconditional predictions per step (Kim et al. 2025, arXiv
2509.25705: SD with DDIM, 50 steps, g = 7.5). Works over the model contract only.

The family's path (`paths.py`) says how: VP families run DDIM (η = 0) on `alphas_cumprod` with
ε̂ from `model.eps`; flow families (SD3, FLUX) run the flow Euler ODE x_σ' = x_σ + (σ' − σ)·v̂ on
the σ grid their pipeline uses (`model.sampling_sigmas`) with v̂ from `model.velocity`. Guidance
is p̂_g = p̂_u + w (p̂_c − p̂_u) on the native prediction p̂ (ε̂ or v̂). The state and this
arithmetic stay in float32 even when the denoiser runs in fp16 / bf16.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._checks import check_finite
from ...errors import InputError
from ...models.library_logs import quiet_libraries
from .paths import VP, VPPath, path_of


@dataclass
class Trajectory:
    """A recorded batch of trajectories (one prompt, N seeds), all on the CPU in float32.

    latents[0] is z_T (the initial noise), latents[i + 1] the output of step i; pred_c/pred_u[i]
    are the native predictions (ε̂ for VP, v̂ for flow) at latents[i], timesteps[i] and
    levels_in[i] (ᾱ or σ); levels_out[i] is the level step i maps to (the one latents[i + 1]
    belongs to); guidance[i] = w used at step i. `path` is the family's path (`paths.py`).
    """

    timesteps: torch.Tensor  # [S]: integer t (VP), σ·T (flow)
    levels_in: torch.Tensor  # [S] float64
    levels_out: torch.Tensor  # [S] float64
    guidance: torch.Tensor  # [S] float64
    latents: torch.Tensor  # [S+1, N, *shape]
    pred_c: torch.Tensor  # [S, N, *shape]
    pred_u: torch.Tensor  # [S, N, *shape]
    path: VPPath = field(default=VP)

    @property
    def pred_g(self) -> torch.Tensor:
        w = _bcast(self.guidance, self.pred_c)
        return self.pred_u + w * (self.pred_c - self.pred_u)

    def _coef_in(self, like: torch.Tensor):
        return self.path.coefficients(_bcast(self.levels_in, like))

    def eps(self, kind: str = "g") -> torch.Tensor:
        """ε̂ per step: kind "c" (conditional), "u" (unconditional) or "g" (guided); for a flow
        model ε̂ = x_σ + (1−σ)·v̂ (the VP-equivalent's ε̂)."""
        p = self._pred(kind)
        return self.path.eps(self.latents[:-1], p, *self._coef_in(p))

    eps_c = property(lambda self: self.eps("c"))
    eps_u = property(lambda self: self.eps("u"))
    eps_g = property(lambda self: self.eps("g"))

    def _pred(self, kind: str) -> torch.Tensor:
        if kind not in ("c", "u", "g"):
            raise InputError(f"kind must be 'c', 'u' or 'g', got {kind!r}")
        return {"c": self.pred_c, "u": self.pred_u}[kind] if kind != "g" else self.pred_g

    def x0(self, kind: str = "g") -> torch.Tensor:
        """Predicted clean latents per step (kind as in `eps`): (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t (VP),
        x_σ − σ·v̂ (flow)."""
        p = self._pred(kind)
        return self.path.x0(self.latents[:-1], p, *self._coef_in(p))

    @property
    def alphas_in(self) -> torch.Tensor:
        return self._vp_levels(self.levels_in)

    @property
    def alphas_out(self) -> torch.Tensor:
        return self._vp_levels(self.levels_out)

    def _vp_levels(self, levels):
        if self.path.kind != "vp":
            raise InputError(f"a {self.path.kind} trajectory has σ levels (levels_in / levels_out), not alphas")
        return levels

    def rows(self, idx) -> "Trajectory":
        """The trajectories of the seeds/rows `idx` (a slice or index tensor)."""
        return Trajectory(self.timesteps, self.levels_in, self.levels_out, self.guidance,
                          self.latents[:, idx], self.pred_c[:, idx], self.pred_u[:, idx], self.path)

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
    Each step maps to the next visited timestep (so the next ε̂ is taken at the level the latent
    is at), the last one to t − T//S (DDIMScheduler.step's previous timestep) or the final ᾱ. For
    leading spacing (SD's, SDXL's) that is DDIMScheduler.step exactly; on linspace or trailing
    grids, which are not spaced T//S apart (PixArt's DPM-Solver config: linspace),
    DDIMScheduler.step would step to t − T//S, off the grid the next ε̂ is taken on.
    The prediction type does not enter: `model.eps` returns ε̂ for ε and v models alike.
    """
    ac = torch.as_tensor(alphas_cumprod).detach().double().cpu()
    T = ac.shape[0]
    if not 1 <= int(steps) <= T:
        raise InputError(f"steps must be in [1, {T}], got {steps}")
    steps = int(steps)
    if scheduler_config is not None:
        from diffusers import DDIMScheduler

        drop = {"prediction_type", "num_train_timesteps"}
        cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_") and k not in drop}
        cfg["num_train_timesteps"] = T
        with quiet_libraries():  # another scheduler's config: its extra keys are ignored (and logged)
            sched = DDIMScheduler.from_config(cfg)
        sched.set_timesteps(steps)
        ts = sched.timesteps.long().cpu()
        final = float(sched.final_alpha_cumprod)
    else:
        ratio = T // steps
        ts = (torch.arange(steps) * ratio).flip(0).long()
        final = 1.0
    last = int(ts[-1]) - T // steps
    a_last = ac[last] if last >= 0 else torch.tensor(final, dtype=torch.float64)
    a_out = torch.cat([ac[ts[1:]], a_last.reshape(1)])
    return ts, ac[ts], a_out


def flow_schedule(model, steps: int):
    """(σ·T [S], σ_in [S], σ_out [S]) of a flow Euler run of `steps` steps on the σ grid of
    `model.sampling_sigmas` (σ_in[0] = 1: the run starts from pure noise; σ_out[-1] = 0)."""
    T = int(torch.as_tensor(model.alphas_cumprod).shape[0])
    if int(steps) < 1:
        raise InputError(f"steps must be ≥ 1, got {steps}")
    sig = torch.as_tensor(model.sampling_sigmas(int(steps)), dtype=torch.float64).cpu()
    if sig.shape != (int(steps) + 1,) or (sig[1:] > sig[:-1]).any() or sig[0] > 1 or sig[-1] < 0:
        raise InputError(f"sampling_sigmas({steps}) must be {int(steps) + 1} decreasing values in [0, 1]")
    return sig[:-1] * T, sig[:-1], sig[1:]


def guidance_schedule(steps: int, guidance: float, delay: int = 0, early_guidance: float = 1.0) -> torch.Tensor:
    """Per-step w: `early_guidance` (1 = conditional only, no guidance) for the first `delay`
    steps, then `guidance` — the delayed-guidance remedy (Jain et al., CVPR 2025) that Kim et
    al. explain (arXiv 2509.25705)."""
    if delay < 0:
        raise InputError(f"delay must be ≥ 0, got {delay}")
    w = torch.full((steps,), float(guidance), dtype=torch.float64)
    w[: min(delay, steps)] = float(early_guidance)
    return w


def sample_trajectories(model, cond, uncond, noise: torch.Tensor, steps: int = 50,
                        guidance: float | torch.Tensor = 7.5, scheduler_config: dict | None = None,
                        progress: bool = False) -> Trajectory:
    """Run N trajectories (one per row of `noise`) of one prompt with the sampler of the model's
    family (`paths.path_of`: DDIM for VP families, flow Euler for SD3 / FLUX) and record them.

    cond / uncond: the conditional and null conditions for N rows (batch-first tensors with
    equal trailing shapes, e.g. `model.encode_cond([caption] * N)` and `model.uncond(N)`);
    a single row is expanded to N. Both are evaluated in one batched denoiser call per step.
    guidance: a float w or a per-step tensor of w (see `guidance_schedule`).
    scheduler_config: the VP timesteps' scheduler config (`ddim_schedule`; default: the model's
    own scheduler's, if it has one); a flow model's σ grid comes from `model.sampling_sigmas`.
    """
    path = path_of(model)
    if path.kind == "flow":
        grid = flow_schedule(model, steps)
    else:
        cfg = scheduler_config if scheduler_config is not None else model_scheduler_config(model)
        grid = ddim_schedule(model.alphas_cumprod, steps, cfg)
    return _run(model, path, grid, cond, uncond, noise, guidance, progress)


def sample_ddim(model, cond, uncond, noise: torch.Tensor, steps: int = 50, guidance: float | torch.Tensor = 7.5,
                scheduler_config: dict | None = None, progress: bool = False) -> Trajectory:
    """DDIM over `model.eps` and `model.alphas_cumprod` whatever the family (for a flow model, its
    VP-equivalent on the grid σ_t = t/T, docs/models.md §Flow matching); arguments as
    `sample_trajectories`."""
    return _run(model, VP, ddim_schedule(model.alphas_cumprod, steps, scheduler_config), cond, uncond, noise,
                guidance, progress)


@torch.no_grad()
def _run(model, path, grid, cond, uncond, noise, guidance, progress) -> Trajectory:
    if noise.dim() < 2:
        raise InputError(f"noise must be [N, *latent_shape], got {tuple(noise.shape)}")
    n = noise.shape[0]
    ts, l_in, l_out = grid
    S = ts.shape[0]
    w = guidance if isinstance(guidance, torch.Tensor) else torch.full((S,), float(guidance))
    w = w.detach().double().cpu()
    if w.shape != (S,):
        raise InputError(f"guidance must be a float or a tensor of {S} per-step values, got shape {tuple(w.shape)}")
    c, u = _rows(cond, n, "cond"), _rows(uncond, n, "uncond")
    both = torch.cat([u, c]) if isinstance(c, torch.Tensor) else _cat_cond(u, c)
    device = _device_of(model, noise)
    z = noise.detach().to(device=device, dtype=torch.float32)
    lat, pc, pu = [z.cpu()], [], []
    it = range(S)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=path.sampler_name, leave=False)
    for i in it:
        p = path.predict(model, torch.cat([z, z]), ts[i], l_in[i], both)
        check_finite(p, f"{path.describe(ts[i], l_in[i])} (step {i})")
        p_u, p_c = p[:n], p[n:]
        p_g = p_u + float(w[i]) * (p_c - p_u)
        z = path.step(z, p_g, float(l_in[i]), float(l_out[i]))
        lat.append(z.cpu())
        pc.append(p_c.cpu())
        pu.append(p_u.cpu())
    return Trajectory(ts, l_in, l_out, w, torch.stack(lat), torch.stack(pc), torch.stack(pu), path)


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


def model_scheduler_config(model) -> dict | None:
    """The config of the model's diffusers scheduler (None without one)."""
    cfg = getattr(getattr(model, "scheduler", None), "config", None)
    return dict(cfg) if cfg is not None else None
