"""From the gathered per-sample arrays to everything the report shows (docs/results-schema.md)."""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone

import numpy as np

from .. import __version__
from .plan import UNMASKED_REASONS, AuditConfig, is_masked, mask_bank, output_kind
from .samples import SampleSet


def versions() -> dict:
    import diffusers
    import torch

    return {"diffaudit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


def compute_results(arrays: dict, samples: SampleSet, config: AuditConfig, model=None, model_info=None,
                    split_info=None) -> tuple[dict, dict]:
    """Everything the report shows, from the gathered per-sample arrays (no model calls)."""
    from ..analysis.frequency import default_radius, energy_correlation
    from ..analysis.strata import distortion_strata_over_t
    from .assemble import build_summaries, latent_usage
    from .verdicts import audit_findings, degenerate_geometry

    member = arrays["member"].astype(bool)
    warnings = []
    n_h = int((~member).sum())
    if n_h < 1000:
        warnings.append(f"TPR@0.1%FPR needs at least 1000 held-out samples to mean anything; this audit has {n_h}.")
    if n_h < 100:
        warnings.append(f"TPR@1%FPR rests on fewer than 100 held-out samples ({n_h}).")
    skipped = _skipped(arrays, samples, config, model)
    warnings += [f"{a} was not run: {why}." for a, why in skipped.items()]
    protocols, rows, sweeps, rocs, calibration, clf_scores = build_summaries(arrays, config)
    with_stats = [a for a in config.attacks if f"stats__{a}" in arrays]
    latent_shape = list(getattr(model, "latent_shape", None) or [arrays["influence"].shape[1], 1, 1])
    kind = getattr(model, "kind", None)
    usage = latent_usage(arrays["influence"], latent_shape, config.k, config.active_nats,
                         degenerate=degenerate_geometry(arrays["influence"], kind))

    dist = arrays["distortion"]
    has_d = np.isfinite(dist)  # the distortion subset (config.distortion_samples); all samples by default
    subset = distortion_subset_note(has_d, member)
    if subset is not None:
        warnings.append(subset["note"])
    strata = {}
    for a in with_stats:
        S = -arrays[f"stats__{a}"][:, :, 0].T  # unfiltered scores [T, N]
        m, h = member & has_d, ~member & has_d
        strata[a] = distortion_strata_over_t(S[:, m], S[:, h], dist[m], dist[h],
                                             ts=config.grid(a), n_random=config.strata_random, seed=config.seed)
    freq = energy_correlation(dist[has_d], arrays["lf"][has_d], arrays["hf"][has_d], n_boot=config.bootstrap,
                              seed=config.seed)
    image_hw = getattr(model, "image_shape", None)
    if image_hw is not None:
        freq["radius"] = int(default_radius(int(image_hw[1]), int(image_hw[2])))
    findings = audit_findings(arrays, config, protocols, calibration, freq, kind)
    hf = {f["id"].split("/", 1)[1]: f["detail"] for f in findings if "detail" in f}
    owner = owner_curve(arrays, config, member)
    best = max(with_stats, key=lambda a: protocols["paper"]["per_attack"][a]["unfiltered"]["auc"])

    # Per-sample table: scores at each attack's chosen t (unfiltered and filtered).
    bank = [m.name for m in mask_bank(config)]
    jf = bank.index(f"influence@{config.k}") if config.k > 0 else 0
    table = {"id": np.arange(len(samples)), "key": np.asarray(samples.keys, dtype=object), "member": member,
             "distortion": dist, "lf_energy": arrays["lf"], "hf_energy": arrays["hf"]}
    if samples.captions is not None:
        table["caption"] = np.asarray(samples.captions, dtype=object)
    for a in with_stats:
        grid = config.grid(a)
        rows_a = protocols["paper"]["per_attack"][a]
        tu = rows_a["t"]["unfiltered"]["auc"]
        table[f"score__{a}__t{tu}"] = -arrays[f"stats__{a}"][:, grid.index(tu), 0]
        if is_masked(a):
            tf = rows_a["t"]["filtered"]["auc"]
            table[f"score__{a}__filtered__t{tf}"] = -arrays[f"stats__{a}"][:, grid.index(tf), jf]
    for a, sc in clf_scores.items():  # P(member) on the evaluation fold; NaN where the classifier was fitted
        table[f"score__{a}__evaluation_fold__t{config.grid(a)[0]}"] = sc
    tu = protocols["paper"]["per_attack"][best]["t"]["unfiltered"]["auc"]
    score = table[f"score__{best}__t{tu}"]
    at_risk = {"attack": best, "t": tu, "members": [], "heldout_false_positives": []}
    for name, sel in (("members", member), ("heldout_false_positives", ~member)):
        idx = np.flatnonzero(sel)
        for i in idx[np.argsort(-score[idx], kind="stable")][:10]:
            r = {"id": int(i), "key": samples.keys[i], "score": float(score[i]),
                 "distortion": float(dist[i]) if has_d[i] else None,
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
        "attacks": attack_notes(config, skipped),
        "masks": [m.name for m in mask_bank(config) if m.draw in (None, 0)],
        "metrics": rows, "protocols": protocols, "k_sweep": sweeps, "roc": rocs,
        "latent_usage": usage, "distortion_subset": subset, "strata": strata, "frequency": freq, "hf_filter": hf,
        "at_risk": at_risk, "findings": findings, "warnings": warnings, "owner_detection": owner,
    }
    return results, table


def distortion_subset_note(has_distortion: np.ndarray, member: np.ndarray) -> dict | None:
    """None when every sample has a distortion, else what the report says about the subset."""
    if has_distortion.all():
        return None
    n_m, n_h = int((has_distortion & member).sum()), int((has_distortion & ~member).sum())
    return {"n": n_m + n_h, "of": int(len(member)), "members": n_m, "heldout": n_h,
            "note": (f"distortion was computed on {n_m + n_h} of {len(member)} samples ({n_m} members, {n_h} held-out; "
                     "config distortion_samples, stratified by membership, picked by keyed draws): the distortion "
                     "strata, their verdict and the frequency correlation use that subset only")}


def _skipped(arrays: dict, samples: SampleSet, config: AuditConfig, model) -> dict[str, str]:
    """{attack: why it has no stored arrays} (`attack_pass.skipped_attacks` with a model)."""
    from .attack_pass import skipped_attacks

    reasons = skipped_attacks(model, samples, config) if model is not None else {}
    return {a: reasons.get(a, "no statistics were stored for it") for a in config.attacks
            if f"stats__{a}" not in arrays and f"{a}__features" not in arrays}


def attack_notes(config: AuditConfig, skipped: dict[str, str]) -> dict:
    """Per attack: what it outputs, whether it is masked (and why not), its protocol, and which
    findings it gets (docs/attacks.md, "In the audit")."""
    from ..attacks import ATTACKS

    out = {}
    for a in config.attacks:
        spec, kind = ATTACKS[a], output_kind(a)
        note = {"name": spec.display_name, "output": kind, "grid": config.grid(a), "queries": spec.description,
                "masked": is_masked(a)}
        if kind == "signed":
            note["statistic"] = "Σ v over the kept dims (signed, no |·|): smaller ⇒ member"
        elif kind == "vector":
            note["statistic"] = f"Σ|v|^{spec.p:g} over the kept dims: smaller ⇒ member"
        elif kind == "scalar":
            note["statistic"] = "the attack's own number per sample: smaller ⇒ member"
        if not is_masked(a):
            note["unmasked_reason"] = UNMASKED_REASONS[kind]
            note["findings"] = ("no filter, reverse or random-drop findings: " + UNMASKED_REASONS[kind])
        if kind == "features":
            from .plan import CLASSIFIER_PROTOCOL, NOT_IN_PAPER_PROTOCOL

            note["statistic"] = "P(member) from gradient-boosted trees on the features: higher ⇒ member"
            note["protocol"] = CLASSIFIER_PROTOCOL + "; calibrated protocol only"
            note["paper_protocol"] = "no row: " + NOT_IN_PAPER_PROTOCOL
            note["findings"] = "none: " + UNMASKED_REASONS[kind] + "; its scores exist on the evaluation fold only"
        if a in skipped:
            note["skipped"] = skipped[a]
        out[a] = note
    return out


def owner_curve(arrays: dict, config: AuditConfig, member: np.ndarray) -> dict | None:
    """"An owner of n training images would detect their use with probability …": the dataset
    test (docs/dataset-inference.md) with this audit's members as the suspect set and its held-out
    samples as the reference, on the unfiltered statistics at every t of every attack."""
    if config.owner_curve_repeats == 0 or min(int(member.sum()), int((~member).sum())) < 10:
        return None
    from ..analysis.dataset_inference import detection_curve
    from .dataset_test import audit_features

    F, _ = audit_features(arrays, config, masks=("none",))
    out = detection_curve(F[member], F[~member], alpha=0.01, seed=config.seed,
                          repeats=config.owner_curve_repeats).to_dict()
    out["features"] = "log attack statistics, unfiltered, every t of every attack"
    return out
