"""Quadrature bias of stochastic Lanczos quadrature (`distortion(estimator="slq")`) vs Lanczos steps.

    python benchmarks/bench_slq.py [--quick] [--out benchmarks/results/]

SLQ's error has two parts: the trace estimator's (mean over probes u of uᵀ log(G) u, unbiased)
and Gauss quadrature's (s Lanczos steps instead of d: biased, the same sign for every probe).
On linear decoders x = A z with a prescribed spectrum (A = U diag(σ) Vᵀ, random orthogonal U,
V; JᵀJ = AᵀA, condition κ = σ₁²/σ_d²), and on the full Jacobians of the distortion benchmark's
decoder, the library's estimate at s steps is compared per probe with ½·uᵀ log(AᵀA) u for the
same probe u (by eigendecomposition; what SLQ gives at s = d, where Gauss quadrature is exact):
the difference is the quadrature error alone. Reported per (d, κ, s): the bias (mean over
probes and matrices, nats of ½ log det), its standard error, and the trace estimator's standard
deviation at the default 16 probes (from the same probes).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffaudit import geometry  # noqa: E402
from diffaudit.geometry._inputs import draw  # noqa: E402
from diffaudit.rng import sample_generator  # noqa: E402

F64 = torch.float64


def linear_decoder(d: int, kappa: float, seed: int, spectrum: str = "loguniform") -> torch.Tensor:
    """A = U diag(σ) Vᵀ (random orthogonal U, V) with σ from √κ down to 1: log-uniform, or
    `"two_clusters"` (half at each end)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64)).Q
    if spectrum == "loguniform":
        s = torch.logspace(0.5 * math.log10(kappa), 0, d, dtype=F64)
    else:
        s = torch.cat([torch.full((d // 2,), math.sqrt(kappa), dtype=F64), torch.ones(d - d // 2, dtype=F64)])
    return U @ torch.diag(s) @ V.T


def decoder_jacobians(n: int) -> list[torch.Tensor]:
    """Full Jacobians [m, d] of the distortion benchmark's decoder (SD's VAE layout at 1/16
    width, random init, 4×8×8 latents: d = 256) at n latents, in float64."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_models import decoder_fn, sd_layout_vae

    vae = sd_layout_vae(16, 8)
    decode = decoder_fn(vae)
    geometry.prepare_decoder_for_jvp(vae)
    z = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    out = []
    for i in range(n):
        with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            Jm = torch.autograd.functional.jacobian(lambda t: decode(t).flatten(), z[i:i + 1],
                                                    vectorize=True, strategy="forward-mode")
        out.append(Jm.reshape(Jm.shape[0], -1).double())
    return out


def slq_bias(d: int, kappa: float | None, steps: list[int], probes: int, matrices: int, spectrum: str,
             jacobians: list[torch.Tensor] | None = None) -> dict:
    """Quadrature error of ½·log det at each s in `steps`, per probe, against ½·uᵀ log(AᵀA) u
    for the same probe u (by eigendecomposition; SLQ at s = d equals it, tests/test_geometry.py)."""
    rows = {s: [] for s in steps}
    exact, truths, kappas = [], [], []
    for k in range(matrices):
        A = jacobians[k] if jacobians is not None else linear_decoder(d, kappa, seed=1000 + k, spectrum=spectrum)
        ev, vecs = torch.linalg.eigh(A.T @ A)
        kappas.append((ev[-1] / ev[0]).item())
        L = vecs @ torch.diag(ev.log()) @ vecs.T
        truths.append(0.5 * ev.log().sum().item())

        def decode(z, A=A):
            return z.reshape(z.shape[0], -1) @ A.T
        z = torch.zeros(probes, d, dtype=F64)  # one "sample" per probe: per-probe estimates
        gens = lambda: [sample_generator(k, i, "slq-bias") for i in range(probes)]  # noqa: E731
        U = draw(gens(), (1, d), like=z, kind="rademacher")[:, 0]  # the probes distortion() draws
        exact_k = 0.5 * torch.einsum("pi,ij,pj->p", U, L, U)
        exact.append(exact_k)
        for s in steps:
            est = geometry.distortion(decode, z, estimator="slq", slq_probes=1, slq_steps=s, generator=gens())
            rows[s].append(est - exact_k)
    exact = torch.stack(exact)  # [matrices, probes]: ½·uᵀ log(G) u per probe
    out = {"d": d, "kappa": kappas, "spectrum": spectrum, "probes": probes, "matrices": matrices,
           "trace_std_at_16_probes": (exact - torch.tensor(truths, dtype=F64)[:, None]).std().item() / 4.0,
           "steps": {}}
    for s in steps:
        diff = torch.stack(rows[s]).flatten()
        out["steps"][s] = {"bias_nats": diff.mean().item(), "stderr": diff.std().item() / math.sqrt(diff.numel()),
                           "max_abs": diff.abs().max().item()}
    return out


def run(quick: bool) -> list[dict]:
    probes, matrices = (32, 2) if quick else (64, 3)
    cases = [(64, 1.3e4, "loguniform", probes, matrices), (64, 1.3e4, "two_clusters", probes, matrices),
             (256, 1.3e4, "loguniform", probes, matrices)]
    if not quick:
        cases += [(64, 1e3, "loguniform", probes, matrices), (256, 1e3, "loguniform", probes, matrices),
                  (256, 1e5, "loguniform", probes, matrices), (1024, 1.3e4, "loguniform", 32, 2)]
    steps = [10, 20, 30, 40, 50, 60, 80, 100, 120, 160]
    out = []
    for d, kappa, spectrum, p, k in cases:
        out.append(slq_bias(d, kappa, [s for s in steps if s < d], p, k, spectrum))
    if not quick:
        out.append(slq_bias(256, None, [s for s in steps if s < 256], probes, 2, "decoder",
                            jacobians=decoder_jacobians(2)))
    return out


def default_slq_steps() -> int:
    import inspect

    return inspect.signature(geometry.distortion).parameters["slq_steps"].default


def bench_slq_row(quick: bool) -> dict:
    """The goal row: quadrature bias at the default steps on κ = 1.3e4 (log-uniform spectrum),
    d = 256 (and 1024 unless quick), against the trace estimator's standard deviation at the
    default 16 probes."""
    steps = default_slq_steps()
    cases = [slq_bias(d, 1.3e4, [steps], probes=16, matrices=m, spectrum="loguniform")
             for d, m in ([(256, 2)] if quick else [(256, 2), (1024, 1)])]
    worst = max(abs(c["steps"][steps]["bias_nats"]) / c["trace_std_at_16_probes"] for c in cases)
    summary = "; ".join(f"d={c['d']}: {c['steps'][steps]['bias_nats']:+.3f} nats at {steps} steps "
                        f"(trace std {c['trace_std_at_16_probes']:.2f})" for c in cases)
    return {"default_steps": steps, "cases": cases, "worst_bias_over_trace_std": worst, "summary": summary,
            "target": f"quadrature bias <= 0.1 x the 16-probe trace std at kappa 1.3e4, d {'256' if quick else '256, 1024'}",
            "target_met": worst <= 0.1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = run(a.quick)
    for r in res:
        cells = ", ".join(f"s={s}: {v['bias_nats']:+.3f}" for s, v in r["steps"].items())
        print(f"d={r['d']} κ={', '.join(f'{k:.1e}' for k in r['kappa'])} {r['spectrum']}: trace std (16 probes) {r['trace_std_at_16_probes']:.3f}; "
              f"quadrature bias {cells}")
    path = Path(a.out) / f"slq-bias{'-quick' if a.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
