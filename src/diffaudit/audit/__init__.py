"""The audit pipeline: plan -> per-sample pass (streaming, resumable) -> store -> metrics -> report.

    from diffaudit.audit import run_audit, AuditConfig, SampleSet
    result = run_audit(model, samples, AuditConfig(), out_dir="report")
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .fingerprint import MODEL_PARTS, model_folder_hash, model_weights_hash, samples_hash  # noqa: F401
from .plan import AuditConfig, from_dict, load_config, mask_bank  # noqa: F401
from .results import compute_results, versions  # noqa: F401
from .run import gather, run_pass
from .samples import SampleSet, resolved_conditioning
from .store import ChunkStore, atomic_write_json

__all__ = ["AuditConfig", "AuditResult", "SampleSet", "compute_results", "load_config", "model_folder_hash",
           "model_weights_hash", "run_audit"]

_GEOMETRY_FIELDS = ("n_probes", "svd_rank", "svd_oversample", "svd_power_iters", "svd_method", "svd_algorithm",
                    "svd_block_size",
                    "distortion_estimator", "distortion_samples", "chunk_size", "seed")


@dataclass
class AuditResult:
    results: dict
    samples: dict
    out_dir: Path | None = None


def run_audit(model, samples: SampleSet, config: AuditConfig | None = None, out_dir: str | Path | None = None,
              model_info: dict | None = None, split_info: dict | None = None, overwrite: bool = False,
              progress: bool = True, rank: int = 0, world_size: int = 1, barrier=None,
              write_report: bool = True, log=None) -> AuditResult | None:
    """Audit `model` on members vs held-out. Resumable: rerunning with the same out_dir continues.

    With several processes (rank/world_size), each computes its share of chunks; after `barrier()`
    the main process (rank 0) gathers, computes metrics and writes the report; others return None.
    `log(line)`, if given, receives the cost estimate before the pass starts (`audit.cost`).
    """
    config = config or AuditConfig()
    if samples.member.all() or (~samples.member).all():
        from ..errors import DataError

        raise DataError("the audit needs both members and held-out samples")
    out = Path(out_dir) if out_dir is not None else Path("diffaudit-report")
    model_info = dict(model_info or {})
    shash = samples_hash(samples)
    # The weights actually audited key the cache, whether or not a folder hash was given: a
    # second model (or the same folder at another dtype) never reuses the first one's chunks.
    weights = model_weights_hash(model)
    common = {"diffaudit_version": __version__, "model_sha256": model_info.get("sha256"),
              "weights_sha256": weights, "samples": shash}
    geo_manifest = {**common, "kind": "geometry", **{f: getattr(config, f) for f in _GEOMETRY_FIELDS}}
    if not config.distortion_samples:  # all samples: the manifest of stores made before the option existed
        geo_manifest.pop("distortion_samples")
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
    from .attack_pass import skipped_attacks
    from .cost import cost_line, estimate_cost

    cost = estimate_cost(config, len(samples), [a for a in config.attacks if a not in skipped_attacks(model, samples, config)])
    if log is not None and rank == 0:
        log(cost_line(cost))
    timing = run_pass(model, samples, config, geo_store, att_store, rank=rank, world_size=world_size, progress=progress)
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    arrays = gather(samples, config, geo_store, att_store)
    results, table = compute_results(arrays, samples, config, model, model_info, split_info)
    results["model"].update(_provenance(model, samples, config, model_info, weights))
    results["data_conversions"] = dict(samples.conversions)
    results["cost_estimate"] = cost
    results["timing"] = {"encode_s": timing.encode_s, "geometry_s": timing.geometry_s,
                         "attacks_s": timing.attacks_s, "total_s": time.perf_counter() - t0,
                         "processes": world_size,
                         "note": "this process's compute in this invocation (chunks reused from the store cost nothing)"}
    res = AuditResult(results=results, samples=table, out_dir=out)
    if write_report:
        from ..report import write_report as _write

        images = _thumbnails(samples, results)
        _write(out, results, table, images=images)
    else:
        atomic_write_json(out / "results.json", results)
    return res


def _provenance(model, samples: SampleSet, config: AuditConfig, model_info: dict, weights: str) -> dict:
    """What results.json says was audited, on the CLI and the API path alike."""
    source = getattr(model, "source", None)
    return {"path": model_info.get("path") or (str(source) if source is not None else None),
            "sha256": model_info.get("sha256"), "weights_sha256": weights, "prediction_type": getattr(model, "prediction_type", None),
            "conditioning": resolved_conditioning(samples, config, model)}


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


