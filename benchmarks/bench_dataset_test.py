"""Level and power of the dataset-inference test on synthetic features (docs/dataset-inference.md).

    python benchmarks/bench_dataset_test.py [--quick] [--out benchmarks/results/]

Writes results/dataset-test-synthetic[-quick].json:
- level: on null data (P and U both N(0, I), n_P = n_U = 60, d = 8 and 40) the rejection rate at
  0.01 / 0.05 / 0.1 over independent seeds, with 95 % Clopper–Pearson intervals, for the test as
  shipped (K = 2 and K = 5 folds, Bonferroni) and for the naive alternative the library rejects:
  one Mann–Whitney test on the pooled out-of-fold scores of the same fits (each image scored
  once by a model that never saw it), which ignores the dependence between folds.
- rules: on shifted data (n = 60, d = 8), the rejection rates of other valid merges of the same
  fits (twice the median of 5 folds; one train/test split) beside the shipped ones.
- power: the images-needed curve (alpha 0.01) for suspect images whose every feature is lower by
  `shift` standard deviations, n_P = n_U = 500, next to what one image alone gives (AUC and
  TPR@1%FPR of the oracle score, minus the feature mean, over all 500 + 500 images).
Statistics, not timings: the machine's load does not change a number (everything is seeded).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.stats import binomtest, mannwhitneyu  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from diffaudit.analysis.dataset_inference import dataset_test, images_needed_curve  # noqa: E402
from diffaudit.metrics import membership_metrics  # noqa: E402

LEVELS = (0.01, 0.05, 0.1)


def _rate(k: int, n: int) -> dict:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"rate": k / n, "rejections": k, "ci95": [ci.low, ci.high]}


def level(n_seeds: int, d: int, n: int = 60) -> dict:
    p = {"bonferroni_k2": [], "bonferroni_k5": [], "pooled_oof_k2": [], "pooled_oof_k5": []}
    for s in range(n_seeds):
        g = np.random.default_rng(10_000 + s)
        P, U = g.standard_normal((n, d)), g.standard_normal((n, d))
        for k in (2, 5):
            r = dataset_test(P, U, alpha=0.05, folds=k, seed=s, curve=False)
            p[f"bonferroni_k{k}"].append(r.p_value)
            p[f"pooled_oof_k{k}"].append(mannwhitneyu(r.suspect_scores, r.reference_scores,
                                                      alternative="greater").pvalue)
    return {name: {str(a): _rate(int((np.array(v) < a).sum()), n_seeds) for a in LEVELS} for name, v in p.items()}


def rules(n_seeds: int, shift: float, n: int = 60, d: int = 8) -> dict:
    """Rejection rates of valid ways to get one p-value from the same fits, on shifted data: the
    shipped Bonferroni merge (K = 2, 5), twice the median of K = 5 fold p-values, and a single
    train/test split (fold 0 of the K = 2 run alone: fitted on one half, tested on the other)."""
    p = {"bonferroni_k2": [], "bonferroni_k5": [], "twice_median_k5": [], "single_split": []}
    for s in range(n_seeds):
        g = np.random.default_rng(30_000 + s)
        P, U = g.standard_normal((n, d)) - shift, g.standard_normal((n, d))
        r2 = dataset_test(P, U, folds=2, seed=s, curve=False)
        r5 = dataset_test(P, U, folds=5, seed=s, curve=False)
        p["bonferroni_k2"].append(r2.p_value)
        p["single_split"].append(r2.fold_p_values[0])
        p["bonferroni_k5"].append(r5.p_value)
        p["twice_median_k5"].append(min(1.0, 2 * float(np.median(r5.fold_p_values))))
    return {"shift": shift, "n": n, "d": d,
            **{name: {str(a): _rate(int((np.array(v) < a).sum()), n_seeds) for a in (0.01, 0.05)}
               for name, v in p.items()}}


def power(shift: float, n: int, repeats: int, d: int = 8) -> dict:
    g = np.random.default_rng(20_000)
    P, U = g.standard_normal((n, d)) - shift, g.standard_normal((n, d))
    c = images_needed_curve(P, U, alpha=0.01, seed=0, repeats=repeats)
    single = membership_metrics(-P.mean(1), -U.mean(1))
    return {"shift": shift, "d": d, "n_suspect": n, "n_reference": n, **c.to_dict(),
            "single_image_oracle": {"auc": single["auc"], "tpr_at_1pct_fpr": single["tpr_at_1pct_fpr"]}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 null seeds and 20 repeats per size (else 1000, 50)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    n_seeds, repeats = (300, 20) if args.quick else (1000, 50)
    t0 = time.perf_counter()
    out = {"n_seeds": n_seeds, "level": {}, "power": []}
    for d in (8, 40):
        out["level"][f"n60_d{d}"] = level(n_seeds, d)
        print(f"level d={d}:", {k: v["0.05"]["rate"] for k, v in out["level"][f"n60_d{d}"].items()}, flush=True)
    out["rules"] = rules(n_seeds, 0.25)
    print("rules at shift 0.25:", {k: v["0.01"]["rate"] for k, v in out["rules"].items() if isinstance(v, dict)},
          flush=True)
    for shift in (0.1, 0.2, 0.3, 0.5):
        row = power(shift, 500, repeats)
        out["power"].append(row)
        print(f"shift {shift}: power {dict(zip(row['sizes'], row['power']))}, n_needed {row['n_needed']}, "
              f"single-image AUC {row['single_image_oracle']['auc']:.3f} "
              f"TPR@1%FPR {row['single_image_oracle']['tpr_at_1pct_fpr']:.3f}", flush=True)
    out["wall_s"] = time.perf_counter() - t0
    out["load_average"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dataset-test-synthetic{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
