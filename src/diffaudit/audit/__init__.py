"""The audit pipeline: plan -> per-sample pass (streaming, resumable) -> store -> metrics -> report.

    from diffaudit.audit import run_audit, AuditConfig, SampleSet
    result = run_audit(model, samples, AuditConfig(), out_dir="report")
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from .plan import AuditConfig, from_dict, load_config, mask_bank  # noqa: F401
from .run import gather, run_pass
from .samples import SampleSet
from .store import ChunkStore, atomic_write_json

__all__ = ["AuditConfig", "AuditResult", "SampleSet", "compute_results", "load_config", "model_folder_hash", "run_audit"]

_GEOMETRY_FIELDS = ("n_probes", "svd_rank", "svd_oversample", "svd_power_iters", "svd_method", "svd_algorithm",
                    "svd_block_size",
                    "distortion_estimator", "chunk_size", "seed")


@dataclass
class AuditResult:
    results: dict
    samples: dict
    out_dir: Path | None = None


def samples_hash(samples: SampleSet) -> str:
    h = hashlib.sha256(json.dumps([samples.keys, samples.member.astype(int).tolist()]).encode())
    return h.hexdigest()[:16]


MODEL_PARTS = ("vae", "unet", "scheduler", "text_encoder", "tokenizer")


def model_folder_hash(folder) -> str:
    """sha256 over a model folder's components (file names and bytes; not diffaudit.json's timings)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and (rel.parts[0] in MODEL_PARTS or rel.name == "model_index.json"):
            h.update(str(rel).encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def versions() -> dict:
    import diffusers
    import torch

    return {"diffaudit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


def run_audit(model, samples: SampleSet, config: AuditConfig | None = None, out_dir: str | Path | None = None,
              model_info: dict | None = None, split_info: dict | None = None, overwrite: bool = False,
              progress: bool = True, rank: int = 0, world_size: int = 1, barrier=None,
              write_report: bool = True) -> AuditResult | None:
    """Audit `model` on members vs held-out. Resumable: rerunning with the same out_dir continues.

    With several processes (rank/world_size), each computes its share of chunks; after `barrier()`
    the main process (rank 0) gathers, computes metrics and writes the report; others return None.
    """
    config = config or AuditConfig()
    if samples.member.all() or (~samples.member).all():
        from ..errors import DataError

        raise DataError("the audit needs both members and held-out samples")
    out = Path(out_dir) if out_dir is not None else Path("diffaudit-report")
    model_info = dict(model_info or {})
    shash = samples_hash(samples)
    common = {"diffaudit_version": __version__, "model_sha256": model_info.get("sha256"), "samples": shash}
    geo_manifest = {**common, "kind": "geometry", **{f: getattr(config, f) for f in _GEOMETRY_FIELDS}}
    att_manifest = {**common, "kind": "attacks", "config": config.hash()}
    t0 = time.perf_counter()
    # The main process checks (and with overwrite, clears) the stores before others write to them.
    if rank == 0:
        geo_store = ChunkStore(out / "cache" / "geometry", geo_manifest, overwrite=overwrite)
        att_store = ChunkStore(out / "cache" / "attacks", att_manifest, overwrite=overwrite)
    if barrier is not None:
        barrier()
    if rank != 0:
        geo_store = ChunkStore(out / "cache" / "geometry", geo_manifest)
        att_store = ChunkStore(out / "cache" / "attacks", att_manifest)
    timing = run_pass(model, samples, config, geo_store, att_store, rank=rank, world_size=world_size, progress=progress)
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    arrays = gather(samples, config, geo_store, att_store)
    results, table = compute_results(arrays, samples, config, model, model_info, split_info)
    results["timing"] = {"encode_s": timing.encode_s, "geometry_s": timing.geometry_s,
                         "attacks_s": timing.attacks_s, "total_s": time.perf_counter() - t0,
                         "note": "this process's compute in this invocation (chunks reused from the store cost nothing)"}
    res = AuditResult(results=results, samples=table, out_dir=out)
    if write_report:
        from ..report import write_report as _write

        images = _thumbnails(samples, results)
        _write(out, results, table, images=images)
    else:
        atomic_write_json(out / "results.json", results)
    return res


def _thumbnails(samples: SampleSet, results: dict, max_pixels: int = 64_000_000):
    """uint8 [N, H, W, C] of all samples when small enough to hold, else None."""
    import torch

    n = len(samples)
    first, _ = samples.load([0])
    if n * first[0].numel() > max_pixels:
        return None
    imgs = []
    for s in range(0, n, 256):
        x, _ = samples.load(range(s, min(n, s + 256)))
        imgs.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(imgs)


def compute_results(arrays: dict, samples: SampleSet, config: AuditConfig, model=None, model_info=None,
                    split_info=None) -> tuple[dict, dict]:
    """Everything the report shows, from the gathered per-sample arrays (no model calls)."""
    from ..analysis.strata import distortion_strata_over_t
    from .assemble import build_summaries, latent_usage
    from .findings import filter_findings, frequency_finding, hf_filter_results, hf_findings, strata_finding
    from ..analysis.frequency import default_radius, energy_correlation

    member = arrays["member"].astype(bool)
    warnings = []
    n_h = int((~member).sum())
    if n_h < 1000:
        warnings.append(f"TPR@0.1%FPR needs at least 1000 held-out samples to mean anything; this audit has {n_h}.")
    if n_h < 100:
        warnings.append(f"TPR@1%FPR rests on fewer than 100 held-out samples ({n_h}).")
    protocols, rows, sweeps, rocs = build_summaries(arrays, config)
    latent_shape = list(getattr(model, "latent_shape", None) or [arrays["influence"].shape[1], 1, 1])
    usage = latent_usage(arrays["influence"], latent_shape, config.k, config.active_nats)

    dist = arrays["distortion"]
    strata = {}
    for a in config.attacks:
        S = -arrays[f"stats__{a}"][:, :, 0].T  # unfiltered scores [T, N]
        strata[a] = distortion_strata_over_t(S[:, member], S[:, ~member], dist[member], dist[~member],
                                             ts=config.grid(a), n_random=config.strata_random, seed=config.seed)
    freq = energy_correlation(dist, arrays["lf"], arrays["hf"], n_boot=config.bootstrap, seed=config.seed)
    image_hw = getattr(model, "image_shape", None)
    if image_hw is not None:
        freq["radius"] = int(default_radius(int(image_hw[1]), int(image_hw[2])))
    hf = hf_filter_results(arrays, member, list(config.hf_timesteps), config.bootstrap, config.seed) if config.hf_filter else {}

    findings = filter_findings(protocols, config.k)
    best = max(config.attacks, key=lambda a: protocols["paper"]["per_attack"][a]["unfiltered"]["auc"])
    for f in [strata_finding(strata, best), frequency_finding(freq)] + hf_findings(hf):
        if f:
            findings.append(f)

    # Per-sample table: scores at each attack's chosen t (unfiltered and filtered).
    bank = [m.name for m in mask_bank(config)]
    jf = bank.index(f"influence@{config.k}") if config.k > 0 else 0
    table = {"id": np.arange(len(samples)), "key": np.asarray(samples.keys, dtype=object), "member": member,
             "distortion": dist, "lf_energy": arrays["lf"], "hf_energy": arrays["hf"]}
    if samples.captions is not None:
        table["caption"] = np.asarray(samples.captions, dtype=object)
    for a in config.attacks:
        grid = config.grid(a)
        rows_a = protocols["paper"]["per_attack"][a]
        tu, tf = rows_a["t"]["unfiltered"]["auc"], rows_a["t"]["filtered"]["auc"]
        table[f"score__{a}__t{tu}"] = -arrays[f"stats__{a}"][:, grid.index(tu), 0]
        table[f"score__{a}__filtered__t{tf}"] = -arrays[f"stats__{a}"][:, grid.index(tf), jf]
    tu = protocols["paper"]["per_attack"][best]["t"]["unfiltered"]["auc"]
    score = table[f"score__{best}__t{tu}"]
    at_risk = {"attack": best, "t": tu, "members": [], "heldout_false_positives": []}
    for name, sel in (("members", member), ("heldout_false_positives", ~member)):
        idx = np.flatnonzero(sel)
        for i in idx[np.argsort(-score[idx], kind="stable")][:10]:
            r = {"id": int(i), "key": samples.keys[i], "score": float(score[i]), "distortion": float(dist[i]),
                 "score_rank": int((score > score[i]).sum()) + 1}
            if samples.captions is not None:
                r["caption"] = samples.captions[i]
            at_risk[name].append(r)

    results = {
        "diffaudit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(), "seed": config.seed,
        "model": {**(model_info or {}), "latent_shape": latent_shape,
                  "scaling_factor": float(getattr(model, "scaling_factor", 1.0) or 1.0),
                  "kind": getattr(model, "kind", None)},
        "split": split_info or {"members": {"n": int(member.sum())}, "heldout": {"n": n_h}},
        "versions": versions(),
        "timesteps": {a: config.grid(a) for a in config.attacks},
        "masks": [m.name for m in mask_bank(config) if m.draw in (None, 0)],
        "metrics": rows, "protocols": protocols, "k_sweep": sweeps, "roc": rocs,
        "latent_usage": usage, "strata": strata, "frequency": freq, "hf_filter": hf,
        "at_risk": at_risk, "findings": findings, "warnings": warnings,
    }
    return results, table
