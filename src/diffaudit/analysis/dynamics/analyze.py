"""All dynamics measures of one prompt: guided, unguided (w = 1) and delayed-guidance runs
(Kim et al., arXiv 2509.25705, Sec. 3–4), with the sampler of the model's family (DDIM for VP
families, flow Euler for SD3 / FLUX; `paths.py`). Returns a JSON-able dict; nothing is written here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ...errors import InputError
from ...rng import randn_per_sample
from .alignment import alignment_curves, denoising_losses
from .collapse import diversity_curves
from .decomposition import decompose_trajectory
from .detector import wen_curve
from .paths import path_of
from .sampler import guidance_schedule, model_scheduler_config, sample_trajectories
from .similarity import severity


@dataclass
class DynamicsConfig:
    """Settings of a dynamics run (defaults: the paper's SD setting, arXiv 2509.25705 Sec. 3)."""

    seeds: int = 10  # generations per prompt (N = 10 in the paper)
    guidance: float = 7.5
    steps: int = 50  # sampler steps (DDIM; flow Euler for SD3 / FLUX)
    seed: int = 0  # run seed: seed index i gets the same z_T for every prompt
    delays: tuple[int, ...] = (5, 10)  # mitigation: guidance delayed for the first m steps
    early_guidance: float = 1.0  # w during the delay (1 = conditional only)
    wen_windows: tuple[int, ...] = (1, 10)  # Wen et al.: first 1, first 10 (and all) steps
    early_fraction: float = 0.2  # "early steps" summaries: the first 20% (10 of 50)
    loss_timesteps: int = 10  # training-loss view: t on an even grid of this many points
    loss_draws: int = 4  # noise draws per t for the loss view
    similarity: str = "latent"  # severity fallback: latent | pixel (| embedding with a model)
    center: str = "mean"  # alignment centre μ: "mean" of the training latents, or "none"
    extra: dict = field(default_factory=dict)

    def validate(self) -> "DynamicsConfig":
        if self.seeds < 2:
            raise InputError(f"--seeds must be ≥ 2 (collapse needs pairs), got {self.seeds}")
        if self.steps < 2:
            raise InputError(f"--steps must be ≥ 2, got {self.steps}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise InputError(f"--guidance must be a finite number ≥ 0, got {self.guidance}")
        if any(d < 0 or d > self.steps for d in self.delays):
            raise InputError(f"delays must lie in [0, steps={self.steps}], got {list(self.delays)}")
        if self.center not in ("mean", "none"):
            raise InputError(f"center must be 'mean' or 'none', got {self.center!r}")
        if not 0 < self.early_fraction <= 1:
            raise InputError(f"early_fraction must be in (0, 1], got {self.early_fraction}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["delays"], d["wen_windows"] = list(self.delays), list(self.wen_windows)
        return d


def _l(x) -> list:
    """Tensor → JSON list with NaN/Inf as None."""
    return [None if not math.isfinite(v) else float(v) for v in torch.as_tensor(x).double().flatten().tolist()]


def initial_noise(model, cfg: DynamicsConfig) -> torch.Tensor:
    """z_T for seed indices 0..N−1 (diffaudit.rng; the same for every prompt, as in the paper)."""
    return randn_per_sample(model.latent_shape, list(range(cfg.seeds)), cfg.seed, "dynamics/z_T")


def run_summary(traj, z_x, cfg: DynamicsConfig, center, model, image_x, embedder, full: bool) -> dict:
    """Decomposition, alignment, collapse, Wen and severity of one recorded run."""
    S = traj.timesteps.shape[0]
    early = max(1, round(cfg.early_fraction * S))
    ref = traj.final if z_x is None else z_x
    dec = decompose_trajectory(traj, z_x)
    div = diversity_curves(traj)
    wen = wen_curve(traj)
    sev = None if z_x is None else severity(model, traj.final, z_x, cfg.similarity, embedder, image_x)
    dn = div["diversity_norm"][torch.isfinite(div["diversity_norm"])]
    r = {
        "D0": dec["D0"], "DT": dec["DT"],
        "wen": {**{f"first{k}": float(wen[:k].mean()) for k in cfg.wen_windows if k <= S}, "all": float(wen.mean())},
        "diversity_final": float(div["diversity"][-1]),
        "diversity_norm_last": float(dn[-1]) if len(dn) else None,  # last step where it is defined
        "severity": None if sev is None else {k: v for k, v in sev.items() if k != "per_seed"},
        "severity_per_seed": None if sev is None else _l(sev["per_seed"]),
    }
    if not full:
        return r
    al = alignment_curves(traj, ref, center)
    r.update({
        "w": _l(traj.guidance),
        "w0_mean": _l(dec["w0_mean"]), "wT_mean": _l(dec["wT_mean"]),
        "w0_theory": _l(dec["w0_theory"]), "wT_theory": _l(dec["wT_theory"]),
        "residual_mean": _l(dec["residual_mean"]),
        "diversity": _l(div["diversity"]), "diversity_norm": _l(div["diversity_norm"]),
        "diversity_start": div["diversity_start"],
        "wen_curve": _l(wen),
        "alignment": {k: _l(v.mean(dim=1)) for k, v in al.items()},
        "alignment_early": {k: float(v[:early].mean()) for k, v in al.items()},
        "early_steps": early,
    })
    return r


def analyze_prompts(model, captions: list[str], z_xs: list, cfg: DynamicsConfig, images_x: list | None = None,
                    center: torch.Tensor | None = None, embedder=None, scheduler_config: dict | None = None,
                    progress: bool = False) -> list[dict]:
    """Sample prompts with guidance w, without (w = 1) and with each delay m, and measure.

    All prompts × seeds go through the denoiser as one batch (seed i has the same z_T for every
    prompt). z_xs[p]: latent of prompt p's paired training image, or None (→ each trajectory's
    own final latent for the decomposition and the alignment; no severity, no loss view).
    """
    cfg.validate()
    path = path_of(model)  # one clear error for a family the dynamics cannot sample from prompts
    n, P = cfg.seeds, len(captions)
    if len(z_xs) != P or (images_x is not None and len(images_x) != P):
        raise InputError("captions, z_xs and images_x must have one entry per prompt")
    images_x = images_x or [None] * P
    noise = initial_noise(model, cfg).repeat(P, *([1] * len(model.latent_shape)))
    cond = model.encode_cond(list(captions)).repeat_interleave(n, dim=0)
    unc = model.uncond(P * n)
    sched = scheduler_config if scheduler_config is not None else model_scheduler_config(model)

    def run(w, key, full):
        traj = sample_trajectories(model, cond, unc, noise, cfg.steps, w, sched, progress)
        for p in range(P):
            part = traj.rows(slice(p * n, (p + 1) * n))
            res = run_summary(part, z_xs[p], cfg, center, model, images_x[p], embedder, full)
            (outs[p].setdefault("delayed", {}) if key.isdigit() else outs[p])[key] = res
        return traj

    outs = [{} for _ in range(P)]
    traj = run(cfg.guidance, "guided", True)
    for o in outs:
        # VP: integer t and ᾱ_out; flow: σ·T (what the network is given, SD3's scale) and σ_out
        ts = [int(t) for t in traj.timesteps] if path.kind == "vp" else _l(traj.timesteps)
        o["schedule"], o["timesteps"], o[path.levels_key] = path.kind, ts, _l(traj.levels_out)
    del traj
    run(1.0, "unguided", True)
    for m in cfg.delays:
        if m > 0:
            run(guidance_schedule(cfg.steps, cfg.guidance, m, cfg.early_guidance), str(m), False)
    T = model.alphas_cumprod.shape[0]
    grid = torch.linspace(0, T - 1, cfg.loss_timesteps + 2)[1:-1].round().long()
    eps = randn_per_sample(model.latent_shape, list(range(cfg.loss_draws)), cfg.seed, "dynamics/loss")
    for p in range(P):
        outs[p].setdefault("delayed", {})
        if z_xs[p] is not None:
            lv = denoising_losses(model, z_xs[p], cond[p * n : p * n + 1], unc[:1], grid, cfg.guidance, eps)
            outs[p]["loss"] = {k: _l(v) for k, v in lv.items()}
    return outs


def analyze_prompt(model, caption: str, z_x: torch.Tensor | None, cfg: DynamicsConfig, image_x=None,
                   center=None, embedder=None, scheduler_config=None, progress: bool = False) -> dict:
    """`analyze_prompts` for a single prompt."""
    return analyze_prompts(model, [caption], [z_x], cfg, [image_x], center, embedder, scheduler_config, progress)[0]

