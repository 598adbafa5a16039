"""The noise schedule a model is audited on, from its diffusers scheduler, by an explicit table.

Two kinds (docs/models.md §Schedules):
- "vp": discrete variance-preserving schedulers. ᾱ_t is the scheduler's own `alphas_cumprod`
  (built by diffusers from the β config: beta_schedule, trained_betas, zero-terminal-SNR
  rescaling), and the network predicts ε or v (`prediction_type`).
- "flow": rectified-flow schedulers (x_σ = (1−σ)·x₀ + σ·ε, the network predicts v = ε − x₀;
  SD3, arXiv:2403.03206 §2). They are audited through their VP-equivalent on the unshifted
  grid σ_t = t/T, t = 0 … T−1: ᾱ_t = (1−σ_t)² / ((1−σ_t)² + σ_t²). The scheduler's `shift`
  (and dynamic shifting) only re-spaces the σ a sampler visits; the network is a function of
  σ, so the grid does not use it (docs/models.md explains the choice).

Any other scheduler is refused with a `ModelError` naming it: a guessed schedule would give
silently wrong numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError

# diffusers schedulers whose `alphas_cumprod` is the training schedule (cumprod of 1 − β_t).
VP_SCHEDULERS = frozenset({
    "DDPMScheduler", "DDIMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler", "PNDMScheduler",
    "LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "SASolverScheduler", "LCMScheduler", "TCDScheduler",
})
# diffusers schedulers with the rectified-flow convention x_σ = σ·ε + (1−σ)·x₀ (their scale_noise).
FLOW_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"})
VP_PREDICTIONS = ("epsilon", "v_prediction")
FLOW_PREDICTION = "flow_prediction"  # diffusers' name for v = ε − x₀


@dataclass(frozen=True)
class Schedule:
    """ᾱ over t = 0 … T−1 and how the network's output maps to ε (see the module docstring)."""

    kind: str  # "vp" | "flow"
    alphas_cumprod: torch.Tensor  # [T]: the scheduler's float32 table (vp), float64 (flow)
    prediction_type: str  # "epsilon" | "v_prediction" | "flow_prediction"
    scheduler_class: str

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ_t = t/T (float64) of a flow schedule."""
        return t.to(torch.float64) / self.num_train_timesteps


def flow_alphas_cumprod(T: int) -> torch.Tensor:
    """VP-equivalent ᾱ_t = (1−σ)²/((1−σ)² + σ²) on σ_t = t/T, t = 0 … T−1.

    float64: near t = 0, 1 − ᾱ_t ≈ σ² is ~1e-6, below float32's resolution next to 1, and the
    attacks take √(1−ᾱ_t) as the noise scale (float32 would be off by percents at t = 1).
    """
    sigma = torch.arange(T, dtype=torch.float64) / T
    return (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma ** 2)


def schedule_of(scheduler, where: str) -> Schedule:
    """The `Schedule` of a diffusers scheduler instance; `where` names its folder in errors."""
    name = type(scheduler).__name__
    cfg = scheduler.config
    if name in VP_SCHEDULERS:
        pred = cfg.get("prediction_type", "epsilon")
        if pred not in VP_PREDICTIONS:
            raise ModelError(f"{where}: prediction_type {pred!r} of {name} is not supported "
                             f"(only epsilon and v_prediction map to ε)")
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise ModelError(f"{where}: {name} has no alphas_cumprod table")
        return Schedule("vp", torch.as_tensor(ac, dtype=torch.float32).clone(), pred, name)
    if name in FLOW_SCHEDULERS:
        if cfg.get("invert_sigmas"):
            raise ModelError(f"{where}: {name} with invert_sigmas=True (x_σ = σ·x₀ + (1−σ)·ε) is not supported")
        return Schedule("flow", flow_alphas_cumprod(int(cfg.get("num_train_timesteps", 1000))), FLOW_PREDICTION, name)
    supported = ", ".join(sorted(VP_SCHEDULERS | FLOW_SCHEDULERS))
    raise ModelError(f"{where}: scheduler {name} has no schedule diffaudit can map (supported: {supported})")
