"""The attacks of one chunk of samples: which can run, and their reductions to stored arrays.

Each attack's output kind (`AttackSpec.output`, docs/attacks.md "In the audit") decides what is
stored: vectors and signed vectors are reduced under the whole mask bank at once, scalars are
stored unmasked, feature attacks store their features for a classifier fitted at results time
(`diffaudit.audit.protocol.summarise_classifier`). An attack this model or these samples cannot
serve (CLiD without conditions) is skipped and reported, not an error.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch

from .. import attacks as attacks_mod
from ..errors import InputError, ModelError, NonFiniteError
from .plan import AuditConfig
from .samples import SampleSet, resolved_conditioning

# Denoiser rows per call, in batches of samples: the sweep packs rows of many t and chains into
# calls this large, and attacks called directly that take ``max_rows`` stack their rows alike.
ROWS_PER_SAMPLE_BATCH = 8

__all__ = ["unavailable_reason", "skipped_attacks", "attack_statistics", "in_batches", "short_keys"]


def in_batches(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn over slices of at most `batch_size` samples, concatenated (bounds peak memory)."""
    if len(x) <= batch_size:
        return fn(x)
    return torch.cat([fn(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])


def unavailable_reason(attack: str, model, conditioned: bool) -> str | None:
    """Why the audit cannot run `attack` on this model and these samples (None: it can).

    `conditioned`: whether the audit conditions the model on the samples' conditions
    (`samples.conditioning_used`). What each need requires: docs/attacks.md.
    """
    spec = attacks_mod.ATTACKS[attack]
    name = spec.display_name
    if "conditional" in spec.needs:
        if not conditioned:
            return (f"{name} needs a conditional model and samples that carry its conditions (class labels or "
                    "captions); this audit queries the model unconditionally")
        try:
            null = model.uncond(1) if callable(getattr(model, "uncond", None)) else None
        except (ModelError, InputError) as err:
            return f"{name} compares each condition with the null condition, which this model lacks ({err})"
        if null is None:
            return f"{name} compares each condition with the null condition, which this model lacks (uncond is None)"
    if "param_grad" in spec.needs and not (isinstance(getattr(model, "denoiser", None), torch.nn.Module)
                                           and callable(getattr(model, "eps_with_grad", None))):
        return (f"{name} differentiates through the denoiser's parameters: the model needs a torch.nn.Module "
                "`denoiser` and eps_with_grad(z_t, t, cond)")
    return None


def skipped_attacks(model, samples: SampleSet, config: AuditConfig) -> dict[str, str]:
    """{attack: reason} for the config's attacks the audit skips on this model and these samples
    (reported in results.json's warnings, never an error; docs/attacks.md)."""
    conditioned = resolved_conditioning(samples, config, model) != "none"
    out = {}
    for a in config.attacks:
        why = unavailable_reason(a, model, conditioned)
        if why is not None:
            out[a] = why
    return out


def _direct(spec) -> bool:
    """Attacks called per chunk outside the sweep: feature attacks (per-sample parameter
    gradients, bounded by slicing the chunk) and attacks that take the original images
    (``images=…``: PFAMI perturbs the image, not D(z)), which the sweep's context does not carry."""
    return spec.output == "features" or "images" in inspect.signature(spec.fn).parameters


def _direct_outputs(model, spec, z, cond, keys, config: AuditConfig, images, bs: int, t: int) -> torch.Tensor:
    """``spec.fn`` at one t over slices of at most `bs` samples (its draws are keyed by sample,
    so slicing changes nothing), with what its needs name; an attack taking ``max_rows`` gets
    the sweep's rows per denoiser call."""
    params = inspect.signature(spec.fn).parameters
    takes_images = "images" in params
    codec = callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))
    parts = []
    for s in range(0, z.shape[0], bs):
        e = min(s + bs, z.shape[0])
        kw = {}
        if "cond" in spec.needs:
            kw["cond"] = None if cond is None else cond[s:e]
        if "perturbation" in spec.needs:
            kw["sample_ids"], kw["seed"] = list(keys[s:e]), config.seed
        if "noise" in spec.needs:
            kw["noise"] = attacks_mod.loss_noise(z.shape[1:], list(keys[s:e]), config.seed, t, dtype=z.dtype,
                                                 device=z.device)
        if "interval" in spec.needs:
            kw["interval"] = config.secmi_interval
        if takes_images and codec and images is not None:
            kw["images"] = images[s:e].to(torch.float32)
        if "max_rows" in params:
            kw["max_rows"] = ROWS_PER_SAMPLE_BATCH * bs
        parts.append(spec.fn(model, z[s:e], t, **kw).detach())
    return torch.cat(parts)


def attack_statistics(model, z, cond, keys, config: AuditConfig, masks: torch.Tensor, bs: int,
                       images: torch.Tensor | None = None, skip: Sequence[str] = ()) -> dict:
    """Every attack of the config not in `skip`, reduced at once (docs/attacks.md, "In the audit"):
    vectors Σ|v|^p and signed vectors Σ v under each mask of the bank (`attacks.statistic_bank`)
    → ``stats__{a}`` [B, T, M]; scalars as they are → ``stats__{a}`` [B, T, 1] (mask "none");
    features → ``{a}__features`` [B, F] at the attack's one t; for attacks with a decoded-image
    variant, the App. F high-frequency statistics (`_hf_statistics`)."""
    B = z.shape[0]
    run = [a for a in config.attacks if a not in set(skip)]
    specs = {a: attacks_mod.ATTACKS[a] for a in run}
    grids = {a: config.grid(a) for a in run}
    direct = [a for a in run if _direct(specs[a])]
    swept = [a for a in run if a not in direct]
    width = {a: masks.shape[1] if specs[a].output in ("vector", "signed") else 1 for a in run}
    stats = {a: torch.zeros(B, len(grids[a]), width[a], dtype=torch.float64) for a in run
             if specs[a].output != "features"}
    features = {}
    hf_ts = [t for t in config.hf_timesteps] if config.hf_filter else []
    hf_attacks = [a for a in swept if specs[a].decoded_variant and hf_ts]
    hf = {a: torch.full((B, len(hf_ts), 2), float("nan"), dtype=torch.float64) for a in hf_attacks}
    x_ref = None
    if hf_attacks:
        with torch.no_grad():
            x_ref = in_batches(model.decode, z, bs).float()
    masks = masks.double()  # once per chunk, not once per (attack, t)

    sweep_grids = dict(grids)
    for a in hf_attacks:  # the HF variant needs these t even when the main grid skips them
        sweep_grids[a] = sorted(set(grids[a]) | set(hf_ts))

    def reduce(attack, t, vec):
        kind = specs[attack].output
        if kind == "features":
            features[attack] = vec.reshape(B, -1).cpu()
        elif kind == "scalar":
            stats[attack][:, grids[attack].index(t), 0] = vec.reshape(B).double().cpu()
        else:
            stats[attack][:, grids[attack].index(t), :] = attacks_mod.statistic_bank(
                vec, specs[attack].p, masks, signed=kind == "signed").cpu()

    try:
        if swept:
            for attack, t, vec in attacks_mod.attack_sweep(
                model, z, {a: sweep_grids[a] for a in swept}, attacks=swept, cond=cond, sample_ids=list(keys),
                seed=config.seed, interval=config.secmi_interval, max_batch=ROWS_PER_SAMPLE_BATCH * bs,
            ):
                vec = vec.detach()
                if t in grids[attack]:
                    reduce(attack, t, vec)
                if attack in hf and t in hf_ts:
                    x0 = specs[attack].predicted_x0(model.alphas_cumprod, z, vec, t)
                    with torch.no_grad():
                        x_pred = in_batches(model.decode, x0, bs).float()
                    hf[attack][:, hf_ts.index(t), :] = _hf_statistics(x_pred, x_ref, config.hf_scale).cpu()
        for attack in direct:
            for t in grids[attack]:
                reduce(attack, t, _direct_outputs(model, specs[attack], z, cond, keys, config, images, bs, t))
    except NonFiniteError as e:
        raise NonFiniteError(f"{e} (chunk samples: {short_keys(keys)})") from None
    # float32 on disk and in the gathered arrays: half the memory, and far below any AUC tie.
    out = {f"stats__{a}": s.numpy().astype(np.float32) for a, s in stats.items()}
    out.update({f"hf__{a}": h.numpy() for a, h in hf.items()})
    out.update({f"{a}__features": f.numpy().astype(np.float32) for a, f in features.items()})
    return out


def _hf_statistics(x_pred: torch.Tensor, x_ref: torch.Tensor, scale: float) -> torch.Tensor:
    """arXiv 2511.20592 App. F on decoded images: [N, 2] float64 of ‖x̂₀ − x₀‖² (plain) and
    ‖F(x̂₀) − F(x₀)‖² (high band scaled by `scale`, radius `default_radius`), both from one
    difference; the filter is linear, so one FFT pair per image (`hf_filtered_statistic`)."""
    from ..analysis.frequency import hf_filtered_statistic

    plain = attacks_mod.statistic((x_pred - x_ref).double(), 2)
    filtered = hf_filtered_statistic(x_pred, x_ref, scale=scale, p=2, power=True)
    return torch.stack([plain, filtered], dim=1)


def short_keys(keys: Sequence[str]) -> str:
    keys = list(keys)
    return ", ".join(keys[:3]) + (f" … {keys[-1]}" if len(keys) > 3 else "")
