"""The attack registry: one :class:`AttackSpec` per attack carries every fact the rest of diffaudit
needs about it (the audit's grids and reductions, the sweep, the report's names).

An attack module (``attacks/sima.py`` …) defines its vector function, optionally its sweep job,
and calls :func:`register_attack` once. Adding an attack is that one module (or, outside the
package, one ``register_attack`` call): nothing else names attacks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

from ..errors import InputError

__all__ = ["AttackSpec", "ATTACKS", "NEEDS", "OUTPUTS", "register_attack", "display_name"]

# What an attack may need beyond (model, z, t); the sweep's fallback passes each as a keyword.
NEEDS = {
    "cond": "takes the samples' condition (cond=…) for conditional models",
    "noise": "takes per-timestep noise shaped like z (noise=…, keyed by sample id and t)",
    "interval": "steps interval past t (interval=…), so t + interval < T",
    "perturbation": "draws its own keyed perturbations (sample_ids=…, seed=…; see diffaudit.rng)",
    "param_grad": "differentiates through the model's parameters (run with grad enabled)",
    "conditional": "needs a conditional model and its null condition (model.uncond): none for unconditional models",
}

# What fn returns and how it becomes a statistic (docs/attacks.md).
OUTPUTS = {
    "vector": "shaped like z; statistic Σ|v|^p, under any mask",
    "signed": "shaped like z, signed; statistic Σ v over the kept dims (no |·|), under any mask",
    "scalar": "the statistic itself, [N]; reported unmasked (no per-dim term)",
    "features": "[N, F] features for a classifier fitted on the calibration fold; no statistic",
}


@dataclass(frozen=True)
class AttackSpec:
    """Everything about one membership attack.

    ``fn(model, z, t, **needs)`` returns a vector shaped like z; its statistic is Σ|v|^p (smaller
    ⇒ more likely a member); ``output`` names the exceptions. ``job(ctx, ts)`` (optional)
    returns sweep jobs that pack the attack's model calls with others' (see
    :mod:`diffaudit.attacks.jobs`); without one the sweep calls ``fn`` once per timestep.
    ``first_t``: the smallest t the attack is meaningful at (the audit's default grid keeps the
    multiples of its stride that are ≥ first_t). ``predicted_x0(
    alphas_cumprod, z, vector, t)`` gives the predicted clean latent for the decoded-image
    high-frequency variant (arXiv 2511.20592 App. F), None where that variant does not apply.
    ``sweep_priority`` 0 marks a sequential chain of calls (admitted first, first in every call);
    ``calls_per_t``: denoiser calls per sample per grid timestep in a sweep (shared calls such as
    ε̂(z, 0) not counted); ``backward_per_t``: backward passes through the denoiser likewise.
    ``output``: what fn returns, one of :data:`OUTPUTS` ("vector" unless said otherwise).
    ``grid``: the timesteps an attack that does not sweep t is evaluated at (None: the audit's
    grid from ``first_t``).
    """

    name: str
    fn: Callable
    p: float
    display_name: str = ""
    job: Callable | None = None
    first_t: int = 0
    needs: tuple[str, ...] = ("cond",)
    predicted_x0: Callable | None = None
    sweep_priority: int = 1
    calls_per_t: float = 1.0
    reference: str = ""
    description: str = ""
    output: str = "vector"
    grid: tuple[int, ...] | None = None
    backward_per_t: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise InputError(f"an attack name must be a Python identifier (it names result columns), got {self.name!r}")
        if not callable(self.fn):
            raise InputError(f"attack {self.name!r}: fn must be callable")
        p = self.p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p > 0) or math.isnan(p):
            raise InputError(f"attack {self.name!r}: p must be a positive number, got {p!r}")
        for f in ("job", "predicted_x0"):
            if getattr(self, f) is not None and not callable(getattr(self, f)):
                raise InputError(f"attack {self.name!r}: {f} must be callable or None")
        if isinstance(self.first_t, bool) or not isinstance(self.first_t, int) or self.first_t < 0:
            raise InputError(f"attack {self.name!r}: first_t must be an int >= 0, got {self.first_t!r}")
        needs = (self.needs,) if isinstance(self.needs, str) else tuple(self.needs)
        unknown = [n for n in needs if n not in NEEDS]
        if unknown:
            raise InputError(f"attack {self.name!r}: unknown needs {unknown}; known: {', '.join(NEEDS)}")
        object.__setattr__(self, "needs", needs)
        if self.output not in OUTPUTS:
            raise InputError(f"attack {self.name!r}: output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.grid is not None:
            grid = tuple(self.grid)
            if not grid or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in grid):
                raise InputError(f"attack {self.name!r}: grid must be a non-empty tuple of ints >= 0, got {self.grid!r}")
            object.__setattr__(self, "grid", grid)
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    @property
    def needs_noise(self) -> bool:
        return "noise" in self.needs

    @property
    def decoded_variant(self) -> bool:
        """Whether the App. F high-frequency variant on decoded images applies."""
        return self.predicted_x0 is not None

    def t_margin(self, interval: int) -> int:
        """How far past t the attack queries the model: t + margin must stay below T."""
        return interval if "interval" in self.needs else 0


ATTACKS: dict[str, AttackSpec] = {}

_FIELDS = tuple(f.name for f in fields(AttackSpec))


def register_attack(spec=None, *args, overwrite: bool = False, **kwargs) -> AttackSpec:
    """Add an attack to :data:`ATTACKS`: ``register_attack(AttackSpec(...))`` or
    ``register_attack(name, fn, p, **fields)`` with the fields of :class:`AttackSpec`."""
    if not isinstance(spec, AttackSpec):
        unknown = sorted(set(kwargs) - set(_FIELDS))
        if unknown:
            raise InputError(f"register_attack: unknown field(s) {unknown}; known: {', '.join(_FIELDS)}")
        spec = AttackSpec(spec, *args, **kwargs)
    elif args or kwargs:
        raise InputError("register_attack takes an AttackSpec or its fields, not both")
    if spec.name in ATTACKS and not overwrite:
        raise InputError(f"attack {spec.name!r} is already registered (pass overwrite=True to replace it)")
    ATTACKS[spec.name] = spec
    return spec


def display_name(name: str) -> str:
    """The attack's name for people ("SimA"); an unregistered name is returned as given."""
    spec = ATTACKS.get(str(name)) or ATTACKS.get(str(name).lower())
    return spec.display_name if spec is not None else str(name)
