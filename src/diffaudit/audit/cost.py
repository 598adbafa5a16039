"""What an audit will cost, in network passes, before it starts (printed by `diffaudit audit`).

Counts per sample, from the config and the registry alone (no model call): the denoiser calls
of every attack's grid (`AttackSpec.calls_per_t`, `backward_per_t`; shared calls such as
ε̂(z, 0) not counted), the decoder passes of influence (one forward, `n_probes` backwards) and
the Jacobian products of distortion (an upper bound for "gkl", which stops per sample; each
product is one J·v — two decoder forwards by central differences — or one Jᵀ·u, a backward).
Multiplied by the samples each part runs on (`distortion_samples` for distortion).
"""
from __future__ import annotations

from typing import Sequence

from .plan import AuditConfig


def distortion_products(config: AuditConfig) -> int:
    """The most Jacobian products distortion spends per sample (`geometry.svd.max_products`)."""
    from ..geometry.svd import max_products

    return max_products(config.svd_algorithm, config.svd_rank, config.svd_oversample, config.svd_power_iters,
                        config.svd_block_size)


def estimate_cost(config: AuditConfig, n_samples: int, attacks: Sequence[str] | None = None) -> dict:
    """Per-sample and total passes of an audit of `n_samples` running `attacks` (default: the config's)."""
    from ..attacks import ATTACKS

    attacks = list(config.attacks if attacks is None else attacks)
    calls = back = 0.0
    for a in attacks:
        spec, grid = ATTACKS[a], config.grid(a)
        ts = set(grid) | (set(config.hf_timesteps) if config.hf_filter and spec.decoded_variant else set())
        calls += spec.calls_per_t * len(ts)
        back += spec.backward_per_t * len(ts)
    n_dist = min(n_samples, config.distortion_samples) if config.distortion_samples else n_samples
    per = {"denoiser_calls": calls, "denoiser_backward": back, "decoder_forward_influence": 1,
           "decoder_backward_influence": config.n_probes, "jacobian_products_distortion_max": distortion_products(config)}
    total = {"denoiser_calls": calls * n_samples, "denoiser_backward": back * n_samples,
             "decoder_passes_influence": (1 + config.n_probes) * n_samples,
             "jacobian_products_distortion_max": per["jacobian_products_distortion_max"] * n_dist}
    return {"samples": n_samples, "distortion_samples": n_dist, "per_sample": per, "total": total}


def cost_line(cost: dict) -> str:
    """One line for the console."""
    p, t = cost["per_sample"], cost["total"]
    dist = (f"distortion ≤ {p['jacobian_products_distortion_max']} Jacobian products × {cost['distortion_samples']} "
            f"samples = ≤ {_n(t['jacobian_products_distortion_max'])}")
    back = f" + {_n(p['denoiser_backward'])} backward" if p["denoiser_backward"] else ""
    return (f"cost: {cost['samples']} samples × {_n(p['denoiser_calls'])} denoiser calls{back} = "
            f"{_n(t['denoiser_calls'])} calls; influence {1 + p['decoder_backward_influence']} decoder passes × "
            f"{cost['samples']} = {_n(t['decoder_passes_influence'])}; {dist}")


def _n(x: float) -> str:
    x = float(x)
    for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= unit:
            return f"{x / unit:.3g}{s}"
    return f"{x:.0f}"
