"""The per-sample pass: latents, decoder geometry, attack vectors reduced at once to statistics.

Work is cut into fixed chunks of samples; each chunk's results go to the store as soon as they
exist, so a killed run resumes where it stopped, and the arrays held in memory never grow with
the number of samples or with N x T x d. Every random draw is keyed by the sample's key (see
`diffaudit.rng`), so neither batch size, chunking, order nor sharding changes a number.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .. import attacks as attacks_mod
from .. import geometry, masking
from ..errors import NonFiniteError
from ..rng import sample_generator
from .plan import AuditConfig, MaskId, mask_bank
from .samples import SampleSet
from .store import ChunkStore


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def _geometry_decoder(model):
    """The decoder to differentiate and the point to do it at (VQ: after quantization, SPEC §5)."""
    if hasattr(model, "geometry_decode"):
        return model.geometry_decode, model.geometry_point
    return model.decode, (lambda z: z)


def build_masks(infl: torch.Tensor, keys: Sequence[str], bank: list[MaskId], seed: int) -> torch.Tensor:
    """All masks of the bank for a batch: float [B, M, d] (1 keeps a dim)."""
    B = infl.shape[0]
    cols = []
    cache: dict[int, torch.Tensor] = {}
    for m in bank:
        if m.kind == "none":
            mk = torch.ones_like(infl, dtype=torch.bool)
        elif m.kind == "influence":
            mk = cache.setdefault(m.k, masking.influence_mask(infl, m.k))
        elif m.kind == "reverse":
            mk = masking.reverse_mask(infl, m.k)
        elif m.kind == "random":
            gens = [sample_generator(seed, k, f"random@{m.k}#{m.draw}") for k in keys]
            mk = masking.random_mask(infl.shape, m.k, gens)
        elif m.kind == "channel":
            gens = [sample_generator(seed, k, f"channel@{m.k}#{m.draw}") for k in keys]
            infl_mask = cache.setdefault(m.k, masking.influence_mask(infl, m.k))
            mk = masking.channel_matched_mask(infl_mask, gens)
        else:  # pragma: no cover - the bank only holds the kinds above
            raise AssertionError(m.kind)
        cols.append(mk.reshape(B, -1).to(infl.device))
    return torch.stack(cols, dim=1).float()


@dataclass
class PassTiming:
    encode_s: float = 0.0
    geometry_s: float = 0.0
    attacks_s: float = 0.0
    extra: dict = field(default_factory=dict)


def compute_chunk(model, images: torch.Tensor, cond, keys: Sequence[str], config: AuditConfig,
                  geometry_arrays: dict | None = None, timing: PassTiming | None = None) -> tuple[dict, dict]:
    """One chunk of samples -> (geometry arrays, attack arrays), both per-sample numpy."""
    timing = timing or PassTiming()
    seed = config.seed
    t0 = time.perf_counter()
    with torch.no_grad():
        z = model.encode(images).float()
        if cond is not None and config.cond != "none" and hasattr(model, "encode_cond"):
            cond = model.encode_cond(cond)
        else:
            cond = None
    timing.encode_s += time.perf_counter() - t0

    decode, to_point = _geometry_decoder(model)
    if geometry_arrays is None:
        t0 = time.perf_counter()
        zp = to_point(z).detach()
        gens = [sample_generator(seed, k, "influence") for k in keys]
        infl = geometry.influence(decode, zp, n_probes=config.n_probes, generator=gens)
        gens = [sample_generator(seed, k, "distortion") for k in keys]
        dist = geometry.distortion(
            decode, zp, rank=config.svd_rank, oversample=config.svd_oversample,
            power_iters=config.svd_power_iters, method=config.svd_method,
            estimator=config.distortion_estimator, generator=gens,
        )
        from ..analysis.frequency import band_energy

        lf, hf = band_energy(images)
        geometry_arrays = {
            "influence": infl.detach().reshape(len(keys), -1).cpu().numpy().astype(np.float32),
            "distortion": dist.detach().cpu().numpy().astype(np.float64),
            "lf": np.asarray(lf, dtype=np.float64),
            "hf": np.asarray(hf, dtype=np.float64),
        }
        timing.geometry_s += time.perf_counter() - t0

    t0 = time.perf_counter()
    infl = torch.from_numpy(geometry_arrays["influence"]).reshape(z.shape).to(z.device)
    bank = mask_bank(config)
    masks = build_masks(infl, keys, bank, seed)  # [B, M, d]
    out = _attack_statistics(model, z, cond, keys, config, masks)
    timing.attacks_s += time.perf_counter() - t0
    return geometry_arrays, out


def _attack_statistics(model, z, cond, keys, config: AuditConfig, masks: torch.Tensor) -> dict:
    B = z.shape[0]
    grids = {a: config.grid(a) for a in config.attacks}
    stats = {a: torch.zeros(B, len(grids[a]), masks.shape[1], dtype=torch.float64) for a in config.attacks}
    hf_ts = [t for t in config.hf_timesteps] if config.hf_filter else []
    hf_attacks = [a for a in ("loss", "pia") if a in config.attacks and hf_ts]
    hf = {a: torch.full((B, len(hf_ts), 2), float("nan"), dtype=torch.float64) for a in hf_attacks}
    x_ref = None
    if hf_attacks:
        with torch.no_grad():
            x_ref = model.decode(z).float()

    sweep_grids = dict(grids)
    for a in hf_attacks:  # the HF variant needs these t even when the main grid skips them
        sweep_grids[a] = sorted(set(grids[a]) | set(hf_ts))
    try:
        for attack, t, vec in attacks_mod.attack_sweep(
            model, z, sweep_grids, attacks=config.attacks, cond=cond, sample_ids=list(keys), seed=config.seed,
            interval=config.secmi_interval, max_batch=config.batch_size * 8,
        ):
            vec = vec.detach()
            p = attacks_mod.ATTACKS[attack].p
            if t in grids[attack]:
                ti = grids[attack].index(t)
                powered = vec.reshape(B, -1).abs().double() ** p
                stats[attack][:, ti, :] = torch.einsum("bd,bmd->bm", powered, masks.double()).cpu()
            if attack in hf and t in hf_ts:
                hf[attack][:, hf_ts.index(t), :] = _hf_statistics(model, z, vec, t, x_ref, config)
    except NonFiniteError as e:
        raise NonFiniteError(f"{e} (chunk samples: {_short(keys)})") from None
    out = {f"stats__{a}": s.numpy() for a, s in stats.items()}
    out.update({f"hf__{a}": h.numpy() for a, h in hf.items()})
    return out


def _hf_statistics(model, z, vec, t: int, x_ref, config: AuditConfig) -> torch.Tensor:
    """App. F: decode the predicted clean latent and the target; ℓ2 of their difference, plain and
    after scaling the high-frequency band. For Loss and PIA the prediction is z + c·vec with
    c = √(1−ᾱ_t)/√ᾱ_t, since x̂₀ = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t and z_t = √ᾱ_t z + √(1−ᾱ_t) ε."""
    from ..analysis.frequency import highfreq_filter, default_radius

    a = model.alphas_cumprod[t].double().item()
    c = math.sqrt(1 - a) / math.sqrt(a)
    with torch.no_grad():
        x_pred = model.decode(z + c * vec.to(z.dtype)).float()
    diff = (x_pred - x_ref).double()
    radius = default_radius(x_ref.shape[-1])
    filt = highfreq_filter(x_pred, radius, config.hf_scale) - highfreq_filter(x_ref, radius, config.hf_scale)
    plain = diff.reshape(len(z), -1).pow(2).sum(1)
    filtered = torch.as_tensor(filt).double().reshape(len(z), -1).pow(2).sum(1)
    return torch.stack([plain, filtered], dim=1).cpu()


def _short(keys: Sequence[str]) -> str:
    keys = list(keys)
    return ", ".join(keys[:3]) + (f" … {keys[-1]}" if len(keys) > 3 else "")


def run_pass(model, samples: SampleSet, config: AuditConfig, geometry_store: ChunkStore,
             attack_store: ChunkStore, rank: int = 0, world_size: int = 1, progress: bool = True) -> PassTiming:
    """Compute every chunk this process owns that the stores do not already hold."""
    from tqdm.auto import tqdm

    timing = PassTiming()
    ranges = chunk_ranges(len(samples), config.chunk_size)
    mine = [i for i in range(len(ranges)) if i % world_size == rank]
    bar = tqdm(mine, desc="audit", unit="chunk", disable=not progress, leave=False)
    for i in bar:
        s, e = ranges[i]
        ids = np.arange(s, e)
        if attack_store.done(i, ids) is not None and geometry_store.done(i, ids) is not None:
            continue
        keys = samples.keys[s:e]
        images, cond = samples.load(range(s, e))
        geo = geometry_store.done(i, ids)
        geo_arrays = None if geo is None else {k: v for k, v in geo.items() if k != "id"}
        geo_arrays, att = compute_chunk(model, images, cond, keys, config, geo_arrays, timing)
        if geo is None:
            geometry_store.save(i, {"id": ids, **geo_arrays})
        attack_store.save(i, {"id": ids, "member": samples.member[s:e], **att})
        bar.set_postfix(samples=e)
    return timing


def gather(samples: SampleSet, config: AuditConfig, geometry_store: ChunkStore, attack_store: ChunkStore) -> dict:
    """Concatenate all chunks in sample order; error if any is missing (a rank did not finish)."""
    from ..errors import DataError

    parts: dict[str, list] = {}
    for i, (s, e) in enumerate(chunk_ranges(len(samples), config.chunk_size)):
        ids = np.arange(s, e)
        g, a = geometry_store.done(i, ids), attack_store.done(i, ids)
        if g is None or a is None:
            raise DataError(f"{attack_store.root}: chunk {i} (samples {s}..{e - 1}) is missing; rerun to complete it")
        for k, v in {**{k: v for k, v in g.items() if k != "id"}, **a}.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}
