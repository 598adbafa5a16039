"""The noising path a dynamics run moves along, one object per kind of family (docs/models.md §Dynamics).

Both kinds write a latent as z = a·x₀ + b·ε and step deterministically by z' = a'·x̂₀ + b'·ε̂:

* `VP` (SD 1.x / 2.x, SDXL, PixArt): level ᾱ_t, (a, b) = (√ᾱ_t, √(1−ᾱ_t)); the network's
  prediction is ε̂ (`model.eps` at the integer t); the step is DDIM with η = 0 (Song et al.,
  arXiv 2010.02502, Eq. 12).
* `FLOW` (SD3, FLUX): level σ, (a, b) = (1−σ, σ) in flow coordinates x_σ = (1−σ)·x₀ + σ·ε
  (arXiv 2403.03206 §2); the prediction is v̂ ≈ ε − x₀ (`model.velocity` at σ); the step is the
  flow Euler step x_σ' = x_σ + (σ' − σ)·v̂, which equals (1−σ')·x̂₀ + σ'·ε̂ with x̂₀ = x_σ − σ·v̂,
  ε̂ = x_σ + (1−σ)·v̂, and is computed in that v̂ form (x̂₀ = (z − b·ε̂)/a is 0/0 at σ = 1).

Classifier-free guidance is applied to the native prediction (ε̂ or v̂); since x̂₀ and ε̂ are affine
in it with the same z, that is guidance on x̂₀ and on ε̂ as well. The analyses read x̂₀, ε̂ and the
native prediction through these objects, so one code path serves both kinds.
"""
from __future__ import annotations

import torch

from ...diffusion import ddim_step
from ...errors import InputError, ModelError


def _sqrt(x):
    # Python floats keep `** 0.5` (what the VP code always used, so its numbers stay bit-identical)
    return x.sqrt() if isinstance(x, torch.Tensor) else x ** 0.5


class VPPath:
    """z_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε; prediction ε̂; DDIM steps."""

    kind = "vp"
    prediction = "epsilon"
    level_name = "alphas_cumprod"
    levels_key = "alphas_out"  # result-file key of the levels the recorded latents belong to
    theory_labels = ("√ᾱ_t", "√(1−ᾱ_t)")
    sampler_name = "DDIM"

    def coefficients(self, level):
        """(a, b) = (√ᾱ, √(1−ᾱ)) at level ᾱ (a float or a float64 tensor)."""
        return _sqrt(level), _sqrt(1 - level)

    def check_levels(self, levels: torch.Tensor) -> None:
        if (levels < 0).any() or (levels > 1).any():
            raise InputError(f"{self.level_name} values must lie in [0, 1]")

    def predict(self, model, z: torch.Tensor, t, level, cond) -> torch.Tensor:
        tt = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
        return model.eps(z, tt, cond).float()

    def step(self, z, pred, level_in: float, level_out: float):
        return ddim_step(z, pred, level_in ** 0.5, (1 - level_in) ** 0.5, level_out ** 0.5, (1 - level_out) ** 0.5)

    def x0(self, z, pred, a, b):
        return (z - b * pred) / a

    def eps(self, z, pred, a, b):
        return pred

    def target(self, x0, noise):
        """The true prediction at z = a·x0 + b·noise: the noise."""
        return noise

    def toward(self, z, x0, a, b):
        """The prediction that maps z to x0 in one step: (z − a·x0)/b."""
        return (z - a * x0) / b

    def loss_level(self, model, t: int) -> float:
        return float(torch.as_tensor(model.alphas_cumprod).double().cpu()[int(t)])

    def describe(self, t, level) -> str:
        return f"model.eps at t={int(t)}"


class FlowPath(VPPath):
    """x_σ = (1−σ)·x₀ + σ·ε; prediction v̂; flow Euler steps on the scheduler's σ grid."""

    kind = "flow"
    prediction = "velocity"
    level_name = "sigma"
    levels_key = "sigmas_out"
    theory_labels = ("1−σ", "σ")
    sampler_name = "flow Euler"

    def coefficients(self, level):
        return 1 - level, level

    def predict(self, model, z, t, level, cond):
        sigma = torch.full((z.shape[0],), float(level), dtype=torch.float64, device=z.device)
        return model.velocity(z, sigma, cond).float()

    def step(self, z, pred, level_in: float, level_out: float):
        return z + (level_out - level_in) * pred

    def x0(self, z, pred, a, b):
        return z - b * pred

    def eps(self, z, pred, a, b):
        return z + a * pred

    def target(self, x0, noise):
        return noise - x0

    def toward(self, z, x0, a, b):
        return (z - x0) / b

    def loss_level(self, model, t: int) -> float:
        return int(t) / int(torch.as_tensor(model.alphas_cumprod).shape[0])  # σ_t = t/T (docs/models.md)

    def describe(self, t, level) -> str:
        return f"model.velocity at σ={float(level):.4f}"


VP, FLOW = VPPath(), FlowPath()

_CONDITIONING_WORDS = {"label": "class-conditional (labels), not text-conditioned", "none": "unconditional",
                       "embedding": "conditioned on embeddings without a text encoder, so prompts cannot be encoded"}


def text_families() -> list[str]:
    """The families (models.registry.FAMILIES) conditioned on captions."""
    from ...models.registry import FAMILIES

    return [f.name for f in FAMILIES if f.conditioning.startswith("captions")]


def path_of(model):
    """The path of `model` (`VP` or `FLOW`), or one ModelError naming the family when the dynamics
    cannot sample it from prompts. Models without a `conditioning` attribute (hand-written ones)
    are taken as text-conditioned VP models over `eps`."""
    family = getattr(model, "family", None) or type(model).__name__
    where = getattr(model, "source", None) or "the model"
    conditioning = getattr(model, "conditioning", "caption")
    if conditioning != "caption":
        what = _CONDITIONING_WORDS.get(conditioning, f"conditioned on {conditioning}")
        raise ModelError(f"{where}: the dynamics samples from text prompts; this {family} model is {what} "
                         f"(supported: {', '.join(text_families())} with their text encoders)")
    kind = getattr(getattr(model, "schedule", None), "kind", "vp")
    if kind == "flow":
        if not (hasattr(model, "velocity") and hasattr(model, "sampling_sigmas")):
            raise ModelError(f"{where}: a flow-matching {family} model without velocity / sampling_sigmas")
        return FLOW
    if kind == "vp":
        return VP
    raise ModelError(f"{where}: the dynamics has no sampler for a {kind!r} schedule ({family})")
