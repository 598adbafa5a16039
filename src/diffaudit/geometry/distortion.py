"""Local distortion log √det(JᵀJ) of the decoder at z (arXiv 2511.20592 §3.2, Eqs. 3–4)."""
from __future__ import annotations

import math

import torch

from ._inputs import (GeneratorArg, check_choice, check_positive_int, draw, items_per_call,
                      per_sample_generators, WORKSPACE_ELEMS)
from ._linearize import Linearization, output_shape, resolve_vjp_mode
from .slq import PROBES, SLQ_STEPS, slq_logdet
from .svd import DEFAULT_ALGORITHM, GKL_TOL, _check_sv_args, singular_values

ESTIMATORS = ("topk", "slq")


def distortion(decode, z: torch.Tensor, rank: int = 20, oversample: int = 30, power_iters: int | None = None,
               method: str = "fd", h: float | None = None, generator: GeneratorArg = None,
               estimator: str = "topk", *, algorithm: str = DEFAULT_ALGORITHM, block_size: int | None = None,
               tol: float = GKL_TOL, slq_probes: int = 16, slq_steps: int = SLQ_STEPS, slq_probe: str = "rademacher",
               max_batch: int | None = None, vjp_mode: str = "auto", stats: dict | None = None) -> torch.Tensor:
    """Per-sample local log-volume, `[N]`.

    `estimator="topk"` (the paper's tables): S_K = Σ_{i≤rank} log σ_i from `singular_values`
    (same arguments). `estimator="slq"`: ½·log det(JᵀJ) over all d dims by stochastic Lanczos
    quadrature with `slq_probes` probes ("rademacher" or "gaussian") × `slq_steps` Lanczos
    steps (capped at d: exact quadrature there); J·v by `method`, Jᵀ·y by reverse mode; cost
    2·slq_steps·slq_probes products per sample. Two errors: the trace estimator's (unbiased;
    standard deviation ½·√(2 Σ_{i≠j} (log G)_ij² / slq_probes) for Rademacher) and Gauss
    quadrature's, which overestimates (log's even derivatives are negative) and shrinks with
    the steps at a rate set by √κ(JᵀJ) and by how spread the spectrum is. Measured bias, nats,
    on log-uniform spectra of condition κ (benchmarks/bench_slq.py, results/slq-bias-20261201.json):
    κ = 1.3e4, d = 64: +0.45 at 30 steps, +0.02 at 40; d = 256: +10.2 at 30, +1.1 at 60, +0.18
    at 80, +0.02 at 100; d = 1024: +44.7 at 30, +2.9 at 80, +1.1 at 100, +0.05 at 160; the
    benchmark's random-init decoder (d = 256, κ ≈ 2.5e3): +0.49 at 30, +0.02 at 50, 0 at 80.
    The default 100 steps keeps the bias below a tenth of the 16-probe trace estimator's
    standard deviation (7.9 nats at d = 256, 14 at d = 1024) up to κ = 1.3e4, d = 1024; larger
    d or κ need more steps.
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    if estimator == "topk":
        sv = singular_values(decode, z, rank=rank, oversample=oversample, power_iters=power_iters,
                             method=method, h=h, generator=generator, algorithm=algorithm,
                             block_size=block_size, tol=tol, max_batch=max_batch, vjp_mode=vjp_mode,
                             stats=stats)
        return torch.log(sv).sum(dim=1)
    z, d, h = _check_sv_args(z, 1, 0, 0, method, h, "subspace", None)
    n_probes = check_positive_int(slq_probes, "slq_probes")
    steps = check_positive_int(slq_steps, "slq_steps")
    check_choice(slq_probe, "slq_probe", PROBES)
    gens = per_sample_generators(generator, z.shape[0])
    xshape = output_shape(decode, z)
    m = math.prod(xshape)
    items = items_per_call(max_batch, m)
    mode = resolve_vjp_mode(vjp_mode, z.device)
    chunk = items if mode == "loop" else max(1, items // n_probes)
    chunk = max(1, min(chunk, WORKSPACE_ELEMS // (n_probes * (min(steps, d) + 2) * d + n_probes * m)))
    out = []
    for s in range(0, z.shape[0], chunk):
        zc = z[s:s + chunk]
        lin = Linearization(decode, zc, xshape, first_id=s, method=method, h=h, items=items, vjp_mode=mode)
        U = draw(gens[s:s + chunk], (n_probes, d), like=zc, kind=slq_probe).transpose(1, 2)
        out.append(0.5 * slq_logdet(lin, U, steps))
        lin.release()
    return torch.cat(out)
