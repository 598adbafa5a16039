"""Real null audits: how often does the report say "shows" when nothing is there?

Each of R audits builds a fresh random-weight tiny latent diffusion model (never trained, so it
has seen none of the images), draws "members" and "held-out" at random from the same pool of
scikit-learn digits, runs the full audit (geometry, all attacks, masks, protocols, verdicts) and
records every finding's status. Under this null every membership effect is absent (the label-free
`frequency` finding is about the decoder and the images and is left out of the rate), so the share
of "shows" verdicts must stay at or below the rate the report states (each finding ≤ 2.5%
one-sided; the family ≤ 5% for any claim in either direction, Holm).

    python benchmarks/null_audits.py --runs 20            # ≈ 1 min per run on a 2-core CPU
    python benchmarks/null_audits.py --runs 3 --quick     # a smoke run

Writes benchmarks/results/null-audits-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffaudit.audit import SampleSet, run_audit  # noqa: E402
from diffaudit.audit.plan import from_dict  # noqa: E402
from diffaudit.models import LatentDiffusion  # noqa: E402
from diffaudit.models.tiny import save_tiny_model_folder  # noqa: E402


def digits_pool() -> torch.Tensor:
    """All 1797 digits as float [N, 3, 16, 16] in [-1, 1] (8×8 upsampled, grey to RGB)."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    return (x * 2 - 1).repeat(1, 3, 1, 1)


def config(quick: bool):
    return from_dict(dict(
        t_max=60 if quick else 100, t_stride=20 if quick else 10, n_random=2 if quick else 4, n_probes=4,
        svd_rank=8, svd_block_size=4, svd_power_iters=3, bootstrap=50 if quick else 200, strata_random=2,
        hf_timesteps=(20, 40) if quick else (20, 50, 80), chunk_size=64, batch_size=64))


def one_run(r: int, pool: torch.Tensor, n_per_class: int, cfg, work: Path) -> dict:
    folder = save_tiny_model_folder(work / f"model{r}", kind="latent", image_size=16, seed=1000 + r)
    model = LatentDiffusion.from_pretrained(folder)
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(r))[: 2 * n_per_class]
    samples = SampleSet.from_tensors(pool[idx[:n_per_class]], pool[idx[n_per_class:]])
    res = run_audit(model, samples, cfg.replace(seed=r), out_dir=work / f"audit{r}", progress=False,
                    write_report=False)
    return {f["id"]: f["status"] for f in res.results["findings"]}


def membership(fid: str) -> set[str]:
    """The findings about membership; `frequency` (distortion vs band energy) uses no labels and is a
    real property of the random decoder and the images, not something this null makes absent."""
    return set() if fid == "frequency" else {fid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from scipy.stats import binomtest

    pool, cfg = digits_pool(), config(args.quick)
    per_finding: dict[str, Counter] = defaultdict(Counter)
    any_claim = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            statuses = one_run(r, pool, args.per_class, cfg, Path(tmp))
            for fid, s in statuses.items():
                per_finding[fid][s] += 1
            any_claim += any(s in ("shows", "opposite") for fid, s in statuses.items() if fid in membership(fid))
            notable = ", ".join(f"{k}={v}" for k, v in sorted(statuses.items()) if v != "inconclusive")
            print(f"run {r + 1}/{args.runs}: {notable or 'all inconclusive'}", flush=True)
    mem = {k: c for k, c in per_finding.items() if k in membership(k)}
    shows = sum(c["shows"] for c in mem.values())
    judged = sum(sum(c.values()) for c in mem.values())
    ci = binomtest(shows, judged).proportion_ci(0.95) if judged else None
    ci_any = binomtest(any_claim, args.runs).proportion_ci(0.95)
    out = {"runs": args.runs, "per_class": args.per_class, "quick": args.quick, "config": cfg.to_dict(),
           "wall_s": time.perf_counter() - t0, "per_finding": {k: dict(v) for k, v in sorted(per_finding.items())},
           "shows_rate": shows / max(judged, 1), "shows_rate_ci": [ci.low, ci.high] if ci else None,
           "stated_rate_per_finding": 0.025, "runs_with_any_claim": any_claim,
           "runs_with_any_claim_ci": [ci_any.low, ci_any.high], "stated_family_rate": 0.05}
    print(f"false 'shows': {shows}/{judged} findings = {out['shows_rate']:.4f} (95% CI {ci.low:.4f}–{ci.high:.4f}; "
          f"stated ≤ 0.025 each); runs with any claim: {any_claim}/{args.runs} (stated ≤ 0.05)")
    path = Path(__file__).parent / "results" / f"null-audits-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
