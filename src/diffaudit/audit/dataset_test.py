"""`diffaudit dataset-test`: was the suspect set used to train the model? (docs/dataset-inference.md)

The audit's per-sample pass runs with the suspect images as "members" and the reference images
as "held-out" (`run_audit`, so its chunk cache makes a rerun resume); every statistic it stores
becomes a feature (`analysis.dataset_features`), and the dataset-inference test
(`analysis.dataset_inference`, after CDI, arXiv 2411.12858) gives the p-value, the verdict and the
images-needed curve, written atomically to dataset-test.json beside the audit's results.json.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._io import atomic_write_json
from ..errors import DataError
from .plan import AuditConfig, attack_bank
from .samples import SampleSet

FORMAT = "diffaudit.dataset-test/1"
SIDES = {"suspect": "members", "reference": "heldout"}  # the role each side plays in the audit pass


def open_side(spec: str, side: str, root=None):
    """A side of the test as a `Split`: a split file (`diffaudit split`; checked against the data,
    either role), or a data source spec (folder:PATH, npz:PATH, digits, …: all its images, a
    picture repeated inside the source counted once)."""
    from ..data import Split, load_split, open_source

    path = Path(spec)
    if path.suffix.lower() == ".json" and path.is_file():
        return load_split(path, root=root, verify=True)
    src = open_source(spec, root=root)
    keys, hashes, seen = [], [], set()
    for key in src.keys():
        sha = src.pixels(key).sha256()
        if sha not in seen:
            seen.add(sha)
            keys.append(key)
            hashes.append(sha)
    if not keys:
        raise DataError(f"{spec}: the {side} source holds no images")
    return Split(SIDES[side], 0, src.describe(), keys, hashes)


def check_disjoint_sides(suspect, reference) -> None:
    """No picture may be in both sets (by pixel hash): the test compares two disjoint sets."""
    by_hash = dict(zip(suspect.hashes, suspect.keys))
    for key, sha in zip(reference.keys, reference.hashes):
        if sha in by_hash:
            raise DataError(f"reference image {key!r} ({reference.source.get('spec')}) has the same pixels as suspect "
                            f"image {by_hash[sha]!r} ({suspect.source.get('spec')}); the two sets must be disjoint")


def suspect_reference_samples(suspect, reference, image_shape=None, cond: str = "auto",
                              conditioning: str = "none") -> SampleSet:
    """Suspect images (as members) then reference images (as held-out); the two may come from
    different sources. Keys get a "suspect/" or "reference/" prefix, so keyed draws never coincide."""
    from ..data import Split

    def one(split):
        empty = Split("heldout", split.seed, split.source, [], [], root=split.root)
        return SampleSet.from_splits(split, empty, image_shape=image_shape, cond=cond, conditioning=conditioning)

    a, b = one(suspect), one(reference)
    n_a = len(a)

    def load(idx):
        idx = list(idx)
        pos_a = [j for j, i in enumerate(idx) if i < n_a]
        pos_b = [j for j, i in enumerate(idx) if i >= n_a]
        parts = [s.load([idx[j] - off for j in pos]) for s, pos, off in ((a, pos_a, 0), (b, pos_b, n_a)) if pos]
        order = torch.as_tensor(np.argsort(pos_a + pos_b, kind="stable"))
        images = torch.cat([x for x, _ in parts])[order]
        conds = [c for _, c in parts]
        if all(c is None for c in conds):
            return images, None
        if isinstance(conds[0], torch.Tensor):
            return images, torch.cat(conds)[order]
        flat = [c for part in conds for c in part]
        return images, [flat[int(i)] for i in order]

    member = np.r_[np.ones(len(a), dtype=bool), np.zeros(len(b), dtype=bool)]
    keys = [f"suspect/{k}" for k in a.keys] + [f"reference/{k}" for k in b.keys]
    captions = a.captions + b.captions if a.captions is not None and b.captions is not None else None
    return SampleSet(keys=keys, member=member, load=load, captions=captions)


def audit_features(arrays: dict, config: AuditConfig, masks=None) -> tuple[np.ndarray, list[str]]:
    """The feature matrix of an audit's gathered arrays: every attack of the config at every t of
    its grid, under `masks` (default: "none" and the influence filter at the config's k), plus
    the decoded-image variants (arXiv 2511.20592 App. F) when the audit computed them."""
    from ..analysis.dataset_features import statistic_features

    if masks is None:
        masks = ("none", f"influence@{config.k}") if config.k > 0 else ("none",)
    hf_ts = list(config.hf_timesteps) if config.hf_filter else []
    parts = []  # per attack: its own mask bank (a scalar attack has "none" only; a feature attack none)
    for a in (a for a in config.attacks if f"stats__{a}" in arrays):
        names = [m.name for m in attack_bank(config, a)]
        parts.append(statistic_features(arrays, {a: config.grid(a)}, names, [m for m in masks if m in names], hf_ts))
    if not parts:
        raise DataError("no attack statistics were stored: no feature columns for the dataset test")
    return np.concatenate([F for F, _ in parts], axis=1), [c for _, cs in parts for c in cs]


def run_dataset_test(model, suspect, reference, config: AuditConfig, out_dir, alpha: float = 0.01,
                     folds: int = 2, repeats: int = 100, model_info: dict | None = None,
                     overwrite: bool = False, progress: bool = True, names: dict | None = None) -> dict:
    """Statistics of suspect and reference (resumable), the test, dataset-test.json; returns its dict.

    `suspect`/`reference` are `Split`s (`open_side`); `names` optionally maps each side to what
    the user passed, for the record.
    """
    from ..analysis.dataset_inference import check_settings, dataset_test
    from ..metrics import membership_metrics
    from . import run_audit

    check_settings(len(suspect), len(reference), alpha, folds, repeats)
    check_disjoint_sides(suspect, reference)
    out = Path(out_dir)
    samples = suspect_reference_samples(suspect, reference, image_shape=getattr(model, "image_shape", None),
                                        cond=config.cond, conditioning=getattr(model, "conditioning", "none"))
    sides = {"suspect": suspect, "reference": reference}
    split_info = {SIDES[s]: {"path": str(sp.path or sp.source.get("spec")), "sha256": sp.digest(), "n": len(sp)}
                  for s, sp in sides.items()}
    run_audit(model, samples, config, out_dir=out, model_info=model_info, split_info=split_info,
              overwrite=overwrite, progress=progress, write_report=False)
    arrays = _stored_arrays(out, samples, config)
    F, columns = audit_features(arrays, config)
    member = arrays["member"].astype(bool)
    res = dataset_test(F[member], F[~member], alpha=alpha, folds=folds, seed=config.seed, repeats=repeats)
    single = membership_metrics(res.suspect_scores, res.reference_scores)
    doc = {
        "format": FORMAT, "diffaudit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": dict(model_info or {}),
        **{s: {"input": (names or {}).get(s), "source": sp.source.get("spec"), "n": len(sp), "sha256": sp.digest()}
           for s, sp in sides.items()},
        **res.to_dict(),
        "single_image": {"auc": single["auc"], "tpr_at_1pct_fpr": single["tpr_at_1pct_fpr"],
                         "note": "each image's out-of-fold score alone, as a membership attack (for comparison)"},
        "features": {"n_columns": len(columns), "columns": columns},
        "config": config.to_dict(),
        "audit_results": "results.json (the single-image audit of suspect vs reference)",
    }
    atomic_write_json(out / "dataset-test.json", doc)
    return doc


def _stored_arrays(out: Path, samples: SampleSet, config: AuditConfig) -> dict:
    """The per-sample arrays `run_audit` just stored, gathered under the manifests it wrote (so
    the cache's identity is defined in one place, `run_audit`)."""
    from .run import gather
    from .store import ChunkStore

    stores = []
    for name in ("geometry", "attacks"):
        root = out / "cache" / name
        stores.append(ChunkStore(root, json.loads((root / "manifest.json").read_text())))
    return gather(samples, config, *stores)
