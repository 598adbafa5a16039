"""What an audit computes: the validated configuration, its timestep grids and its mask bank.

A config is plain data (a dataclass) loaded from JSON/TOML or keyword arguments; unknown keys
are an error, because a typo silently ignored would change what gets measured.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class AuditConfig:
    attacks: tuple[str, ...] = ("sima", "loss", "pia", "secmi")
    t_max: int = 300  # grid: the multiples of t_stride below t_max from the attack's first_t on: {0, 10, ..., 290}
    t_stride: int = 10
    timesteps: dict[str, list[int]] | None = None  # per-attack override of the grid
    secmi_interval: int = 10
    k: int = 40  # default drop percentage of the influence filter (arXiv 2511.20592 §4.3)
    k_sweep: tuple[int, ...] = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)
    n_random: int = 10  # draws of the random and channel-matched controls
    n_probes: int = 8  # Hutchinson probes for influence
    svd_rank: int = 20
    svd_method: str = "fd"  # J·v by central differences ("fd") or forward mode ("jvp")
    svd_algorithm: str = "gkl"  # Golub–Kahan–Lanczos (measured fastest, benchmarks/README.md); "block_krylov";
    #                             "subspace": the paper's Algorithm 1
    svd_power_iters: int | None = None  # None: the algorithm's default (gkl 9, block_krylov 10, subspace 2)
    svd_block_size: int | None = None  # None: the algorithm's default (gkl 1, block_krylov 10)
    svd_oversample: int = 30  # subspace only: ℓ = rank + oversample columns
    distortion_estimator: str = "topk"
    distortion_samples: int = 0  # distortion (and its strata) on a membership-stratified subset of this many (0: all)
    hf_filter: bool = True  # App. F high-frequency-filter variant of Loss and PIA
    hf_timesteps: tuple[int, ...] = (50, 100, 150, 200, 250)
    hf_scale: float = 0.0  # β above the radius (0 removes the high band)
    active_nats: float = 3.0  # a dim is "active" within this many nats of the sample's max influence
    bootstrap: int = 1000
    calibration_fraction: float = 0.5
    strata_random: int = 10
    owner_curve_repeats: int = 20  # subsamples per size of the report's dataset-inference curve (0: off)
    chunk_size: int = 64  # samples per stored chunk (fixed: part of the result's identity)
    batch_size: int = 64  # samples per forward batch (does not change results)
    seed: int = 0
    cond: str = "auto"  # "auto" | "none" | "caption" | "label"

    # Left out of the config hash that keys the attack store: what changes how fast, not what
    # (batch_size), and what only the geometry store depends on (its own manifest has it).
    _NOT_HASHED = ("batch_size", "distortion_samples")

    def __post_init__(self):
        _validate(self)

    def grid(self, attack: str) -> list[int]:
        """The attack's timesteps: the config's `timesteps` for it, else the attack's own grid
        (attacks that do not sweep t: PFAMI, CLiD, GSA; docs/attacks.md), else the multiples of
        t_stride below t_max from the attack's first_t on."""
        if self.timesteps and attack in self.timesteps:
            return [int(t) for t in self.timesteps[attack]]
        from ..attacks import ATTACKS

        spec = ATTACKS[attack]
        if spec.grid is not None:
            return list(spec.grid)
        first = spec.first_t  # e.g. Loss and PIA are degenerate at t = 0
        return [t for t in range(0, self.t_max, self.t_stride) if t >= first]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["attacks"] = list(self.attacks)
        d["k_sweep"] = list(self.k_sweep)
        d["hf_timesteps"] = list(self.hf_timesteps)
        return d

    def hash(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in self._NOT_HASHED}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **kw) -> "AuditConfig":
        return from_dict({**self.to_dict(), **kw})


def _validate(c: AuditConfig) -> None:
    from ..attacks import ATTACKS
    from ..geometry import svd

    for a in c.attacks:
        if a not in ATTACKS:
            raise ConfigError(f"unknown attack {a!r}; known: {', '.join(sorted(ATTACKS))}")
    if not c.attacks:
        raise ConfigError("attacks is empty")
    if not 0 <= c.k < 100:
        raise ConfigError(f"k must be in [0, 100), got {c.k}")
    for k in c.k_sweep:
        if not 0 <= k < 100:
            raise ConfigError(f"k_sweep values must be in [0, 100), got {k}")
    if c.t_stride < 1 or c.t_max <= c.t_stride:
        raise ConfigError(f"need 1 <= t_stride < t_max, got t_stride={c.t_stride}, t_max={c.t_max}")
    for name in ("n_random", "n_probes", "svd_rank", "chunk_size", "batch_size", "bootstrap", "secmi_interval"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
    for name in ("hf_scale", "active_nats", "calibration_fraction"):
        if not math.isfinite(getattr(c, name)):
            raise ConfigError(f"{name} must be a finite number, got {getattr(c, name)}")
    if isinstance(c.owner_curve_repeats, bool) or c.owner_curve_repeats < 0:
        raise ConfigError(f"owner_curve_repeats must be an integer >= 0, got {c.owner_curve_repeats!r}")
    if c.hf_scale < 0 or c.active_nats <= 0:
        raise ConfigError(f"need hf_scale >= 0 and active_nats > 0, got {c.hf_scale} and {c.active_nats}")
    if not 0 < c.calibration_fraction < 1:
        raise ConfigError(f"calibration_fraction must be in (0, 1), got {c.calibration_fraction}")
    for name, known in (("svd_method", svd.METHODS), ("svd_algorithm", svd.ALGORITHMS)):
        if getattr(c, name) not in known:
            raise ConfigError(f"{name} must be one of {', '.join(known)}; got {getattr(c, name)!r}")
    if isinstance(c.distortion_samples, bool) or c.distortion_samples < 0 or 0 < c.distortion_samples < 4:
        raise ConfigError(f"distortion_samples must be 0 (every sample) or at least 4 (the strata's quartiles), "
                          f"got {c.distortion_samples!r}")
    if c.svd_oversample < 0:
        raise ConfigError(f"svd_oversample must be >= 0, got {c.svd_oversample}")
    for name, low in (("svd_power_iters", 0), ("svd_block_size", 1)):
        v = getattr(c, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ConfigError(f"{name} must be an integer >= {low} (or null for the default), got {v!r}")
    if c.distortion_estimator not in ("topk", "slq"):
        raise ConfigError(f"distortion_estimator must be 'topk' or 'slq', got {c.distortion_estimator!r}")
    if c.cond not in ("auto", "none", "caption", "label"):
        raise ConfigError(f"cond must be auto|none|caption|label, got {c.cond!r}")
    if c.timesteps is not None:
        if not isinstance(c.timesteps, dict):
            raise ConfigError("timesteps must map attack names to lists of ints")
        for a, ts in c.timesteps.items():
            if a not in c.attacks:
                raise ConfigError(f"timesteps names attack {a!r} which is not in attacks")
            if not ts or any(int(t) < 0 for t in ts):
                raise ConfigError(f"timesteps[{a!r}] must be a non-empty list of t >= 0")
            if ATTACKS[a].output == "features" and len(ts) != 1:
                raise ConfigError(f"timesteps[{a!r}] must hold one t: a feature attack is scored by one classifier "
                                  f"on the features at one t (got {list(ts)})")


_TUPLES = ("attacks", "k_sweep", "hf_timesteps")
_OPTIONAL_INTS = ("svd_power_iters", "svd_block_size")


def from_dict(d: dict, source: str = "config") -> AuditConfig:
    """Build a config from a dict; unknown keys are an error (names the nearest known key)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(AuditConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        import difflib

        hints = []
        for u in unknown:
            m = difflib.get_close_matches(str(u), sorted(known), n=1)
            hints.append(f"{u!r}" + (f" (did you mean {m[0]!r}?)" if m else ""))
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(hints)}")
    kw = dict(d)
    for name in _TUPLES:
        if name in kw:
            v = kw[name]
            if isinstance(v, str):
                v = [x for x in v.replace(",", " ").split() if x]
            if not isinstance(v, (list, tuple)):
                raise ConfigError(f"{source}: {name} must be a list, got {type(v).__name__}")
            kw[name] = tuple(v)
    try:
        kw = {k: _coerce(k, v, source) for k, v in kw.items()}
        return AuditConfig(**kw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None


def _coerce(name: str, value, source: str):
    f = {f.name: f for f in dataclasses.fields(AuditConfig)}[name]
    default = f.default if f.default is not dataclasses.MISSING else None
    if name in _OPTIONAL_INTS:
        if value is None:
            return None
        default = 0  # coerce as an int below
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError
            return value
        if name in ("k_sweep", "hf_timesteps"):
            return tuple(int(v) for v in value)
        if name == "attacks":
            return tuple(str(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{source}: {name} has an invalid value {value!r}") from None
    return value


def load_config(path: str | Path | None, **overrides) -> AuditConfig:
    """Read a JSON or TOML config file (or none) and apply keyword overrides."""
    d: dict = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text config file (invalid UTF-8)") from None
        try:
            if p.suffix.lower() == ".toml":
                import tomllib

                d = tomllib.loads(text)
            else:
                d = json.loads(text)
        except Exception as e:  # JSONDecodeError, TOMLDecodeError, UnicodeError
            raise ConfigError(f"{p}: not a valid {p.suffix.lstrip('.') or 'JSON'} config: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    d.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(d, source=str(path) if path else "config")


# ---------------------------------------------------------------------------------------------
# The mask bank: every mask the audit reduces each attack vector with, in a fixed order.


@dataclass(frozen=True)
class MaskId:
    kind: str  # "none" | "influence" | "reverse" | "random" | "channel"
    k: int = 0
    draw: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "none":
            return "none"
        s = f"{self.kind}@{self.k}"
        return s if self.draw is None else f"{s}#{self.draw}"


def mask_bank(config: AuditConfig) -> list[MaskId]:
    """The masks, in the column order of the stored statistics of a masked attack."""
    ks = sorted(set(k for k in config.k_sweep if k > 0) | {config.k} - {0})
    out = [MaskId("none")]
    for k in ks:
        out.append(MaskId("influence", k))
        out.append(MaskId("reverse", k))
        out.extend(MaskId("random", k, r) for r in range(config.n_random))
        out.extend(MaskId("channel", k, r) for r in range(config.n_random))
    return out


# ---------------------------------------------------------------------------------------------
# How each attack's output is stored and summarised (docs/attacks.md, "In the audit").

# Why an output kind is reported without masks (results.json and the report quote these).
UNMASKED_REASONS = {
    "scalar": "a difference of losses of different inputs: masks have nothing to select "
              "(one number per sample, no per-dim term aligned with the latent)",
    "features": "its features live in parameter space (one gradient norm per parameter tensor), "
                "not in latent space: masks have nothing to select",
}
CLASSIFIER_PROTOCOL = "classifier trained on the calibration fold (no shadow model)"
NOT_IN_PAPER_PROTOCOL = ("a classifier has to be fitted on labelled samples and scored on others; the paper "
                         "protocol scores every sample, so it would score the classifier's own training samples")


def output_kind(attack: str) -> str:
    """"vector" | "signed" | "scalar" | "features" (`AttackSpec.output`)."""
    from ..attacks import ATTACKS

    return ATTACKS[attack].output


def is_masked(attack: str) -> bool:
    """Whether the attack's statistic is computed under the whole mask bank (vector and signed
    outputs) rather than unmasked only."""
    return output_kind(attack) in ("vector", "signed")


def attack_bank(config: AuditConfig, attack: str) -> list[MaskId]:
    """The masks of `stats__{attack}`'s last axis: the whole bank, or "none" alone for a scalar."""
    return mask_bank(config) if is_masked(attack) else [MaskId("none")]


def attacks_for(conditional: bool) -> tuple[str, ...]:
    """Every registered attack a model can serve, in registration order: all but those that need
    a conditional model (CLiD) when `conditional` is False. The demo runs these (its digits LDM
    is unconditional); their extra cost: benchmarks/bench_new_attacks.py."""
    from ..attacks import ATTACKS

    return tuple(a for a, spec in ATTACKS.items() if conditional or "conditional" not in spec.needs)


def check_grids(config: AuditConfig, n_timesteps: int, attacks=None) -> None:
    """Every grid t of every attack must lie in the model's [0, T) (SecMI: t + interval < T);
    one ConfigError naming the attack and the t, before any compute."""
    from ..attacks import ATTACKS

    for a in config.attacks if attacks is None else attacks:
        margin = ATTACKS[a].t_margin(config.secmi_interval)
        for t in config.grid(a):
            if t + margin >= n_timesteps:
                extra = f" + interval {margin}" if margin else ""
                raise ConfigError(f"attack {a!r}: t={t}{extra} is outside the model's timesteps 0..{n_timesteps - 1}; "
                                  f"set timesteps[{a!r}] (or t_max) below {n_timesteps - margin}")
