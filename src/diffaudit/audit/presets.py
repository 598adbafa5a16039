"""Named audit configurations, defined once: the full study, a quick look, and a tiny one for tests.

- "full": the `AuditConfig` defaults, the study `diffaudit demo` reports (arXiv 2511.20592 §4:
  t ∈ {0, 10, …, 290}, k sweep 0–90, rank-20 distortion, 1000 bootstrap draws).
- "quick": `diffaudit demo --quick`, a smoke test of the whole pipeline, not a result.
- "tiny": the smallest audit that still exercises every stage (two timesteps, two masks, rank-2
  distortion); the tests and the benchmarks' before/after checks run it on tiny random models.
"""
from __future__ import annotations

from ..errors import ConfigError
from .plan import AuditConfig, from_dict

AUDIT_PRESETS: dict[str, dict] = {
    "full": {},
    "quick": dict(t_max=60, t_stride=20, n_random=3, k_sweep=(0, 40, 80), bootstrap=100, svd_rank=4,
                  svd_block_size=4, svd_power_iters=1, hf_timesteps=(20, 40), strata_random=3),
    "tiny": dict(timesteps={"sima": [0, 20], "loss": [20], "pia": [20], "secmi": [0, 20]}, k=40, k_sweep=(0, 40),
                 n_random=2, n_probes=2, svd_rank=2, svd_block_size=2, svd_power_iters=1, bootstrap=20,
                 hf_timesteps=(20,), strata_random=2),
}


def audit_preset_dict(name: str, **overrides) -> dict:
    """The preset's fields with `overrides` applied, as a plain dict (what a config file holds)."""
    if name not in AUDIT_PRESETS:
        raise ConfigError(f"unknown audit preset {name!r}; known: {', '.join(AUDIT_PRESETS)}")
    return {**AUDIT_PRESETS[name], **overrides}


def audit_preset(name: str, **overrides) -> AuditConfig:
    """The validated `AuditConfig` of preset `name` with `overrides` (any AuditConfig field)."""
    return from_dict(audit_preset_dict(name, **overrides), source=f"audit preset {name!r}")
