"""The per-sample pass: latents, decoder geometry, attack vectors reduced at once to statistics.

Work is cut into fixed chunks of samples; each chunk's results go to the store as soon as they
exist, so a killed run resumes where it stopped, and the arrays held in memory never grow with
the number of samples or with N x T x d. Every random draw is keyed by the sample's key (see
`diffaudit.rng`), so neither batch size, chunking, order nor sharding changes a number.
"""
from __future__ import annotations

import gc
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .. import attacks as attacks_mod
from .. import geometry, masking
from ..errors import ConfigError, ModelError
from ..rng import sample_generator
from .attack_pass import attack_statistics, in_batches, short_keys, skipped_attacks, unavailable_reason
from .plan import AuditConfig, MaskId, check_grids, mask_bank
from .samples import SampleSet, conditioning_used, stratified_subset
from .store import ChunkStore


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def _geometry_decoder(model):
    """The decoder to differentiate and the point to do it at (VQ: after quantization, arXiv 2511.20592 App. E)."""
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


def compute_chunk(model, images: torch.Tensor, cond, keys: Sequence[str], config: AuditConfig,
                  geometry_arrays: dict | None = None, timing: PassTiming | None = None,
                  batch_size: int | None = None, on_geometry: Callable[[dict], None] | None = None,
                  skip: Sequence[str] | None = None, distortion_keep: np.ndarray | None = None) -> tuple[dict, dict]:
    """One chunk of samples -> (geometry arrays, attack arrays), both per-sample numpy.

    `batch_size` (default `config.batch_size`) bounds the samples per VAE/geometry call; UNet
    calls hold up to 8x as many rows. It changes memory, not results (draws are keyed by sample,
    up to float rounding). `on_geometry(arrays)` is called as soon as the geometry exists.
    `skip`: attacks of the config not to compute (default: those :func:`unavailable_reason`
    rules out for this chunk's conditioning). `distortion_keep` (bool per sample, default all):
    the samples whose distortion is computed (`distortion_subset`); the others' is NaN.
    """
    timing = timing or PassTiming()
    seed = config.seed
    bs = int(batch_size or config.batch_size)
    t0 = time.perf_counter()
    with torch.no_grad():
        z = in_batches(model.encode, images, bs).float()
        if conditioning_used(cond, config, model):
            cond = model.encode_cond(cond)
        else:
            cond = None
    timing.encode_s += time.perf_counter() - t0

    decode, to_point = _geometry_decoder(model)
    if geometry_arrays is None:
        t0 = time.perf_counter()
        infl_parts = []
        for s in range(0, len(keys), bs):
            zp = to_point(z[s:s + bs]).detach()
            gens = [sample_generator(seed, k, "influence") for k in keys[s:s + bs]]
            infl_parts.append(geometry.influence(decode, zp, n_probes=config.n_probes, generator=gens).detach())
        infl = torch.cat(infl_parts)
        # Distortion only where `distortion_keep` says (config.distortion_samples); NaN elsewhere.
        todo = np.arange(len(keys)) if distortion_keep is None else np.flatnonzero(distortion_keep)
        dist = torch.full((len(keys),), float("nan"), dtype=torch.float64)
        for s in range(0, len(todo), bs):
            rows = todo[s:s + bs]
            zp = to_point(z[torch.as_tensor(rows, device=z.device)]).detach()
            gens = [sample_generator(seed, keys[r], "distortion") for r in rows]
            dist[torch.as_tensor(rows)] = geometry.distortion(
                decode, zp, rank=config.svd_rank, oversample=config.svd_oversample,
                power_iters=config.svd_power_iters, method=config.svd_method,
                algorithm=config.svd_algorithm, block_size=config.svd_block_size,
                estimator=config.distortion_estimator, generator=gens,
            ).detach().double().cpu()
        from ..analysis.frequency import band_energy

        lf, hf = band_energy(images)
        geometry_arrays = {
            "influence": infl.detach().reshape(len(keys), -1).cpu().numpy().astype(np.float32),
            "distortion": dist.numpy(),
            "lf": np.asarray(lf, dtype=np.float64),
            "hf": np.asarray(hf, dtype=np.float64),
        }
        timing.geometry_s += time.perf_counter() - t0
        if on_geometry is not None:
            on_geometry(geometry_arrays)

    t0 = time.perf_counter()
    infl = torch.from_numpy(geometry_arrays["influence"]).reshape(z.shape).to(z.device)
    bank = mask_bank(config)
    masks = build_masks(infl, keys, bank, seed)  # [B, M, d]
    if skip is None:
        skip = [a for a in config.attacks if unavailable_reason(a, model, cond is not None)]
    out = attack_statistics(model, z, cond, keys, config, masks, bs, images=images, skip=skip)
    timing.attacks_s += time.perf_counter() - t0
    return geometry_arrays, out


def distortion_subset(samples: SampleSet, config: AuditConfig) -> np.ndarray:
    """bool [N]: the samples whose distortion the audit computes (all, or `config.distortion_samples`
    of them, stratified by membership; docs/contracts.md)."""
    return stratified_subset(samples.keys, samples.member, config.distortion_samples, config.seed, "distortion-subset")


def run_pass(model, samples: SampleSet, config: AuditConfig, geometry_store: ChunkStore,
             attack_store: ChunkStore, rank: int = 0, world_size: int = 1, progress: bool = True) -> PassTiming:
    """Compute every chunk this process owns that the stores do not already hold."""
    from tqdm.auto import tqdm

    timing = PassTiming()
    skip = skipped_attacks(model, samples, config)
    if len(skip) == len(config.attacks):
        raise ConfigError("no attack of the config can run here: " + "; ".join(f"{a}: {r}" for a, r in skip.items()))
    check_grids(config, len(model.alphas_cumprod), [a for a in config.attacks if a not in skip])
    ranges = chunk_ranges(len(samples), config.chunk_size)
    keep = distortion_subset(samples, config)
    mine = [i for i in range(len(ranges)) if i % world_size == rank]
    bar = tqdm(mine, desc="audit", unit="chunk", disable=not progress, leave=False)
    work_batch = config.batch_size  # halved on out-of-memory, kept for the chunks that follow
    for i in bar:
        s, e = ranges[i]
        ids = np.arange(s, e)
        if attack_store.done(i, ids) is not None and geometry_store.done(i, ids) is not None:
            continue
        keys = samples.keys[s:e]
        images, cond = samples.load(range(s, e))
        geo = geometry_store.done(i, ids)
        geo_arrays = None if geo is None else {k: v for k, v in geo.items() if k != "id"}

        def keep_geometry(arrays, i=i, ids=ids):  # stored at once: a retry or a rerun reuses it
            nonlocal geo_arrays
            geo_arrays = arrays
            geometry_store.save(i, {"id": ids, **arrays})

        while True:
            oom = False
            try:
                got = compute_chunk(model, images, cond, keys, config, geo_arrays, timing, batch_size=work_batch,
                                    on_geometry=keep_geometry, skip=list(skip), distortion_keep=keep[s:e])
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                oom = True  # handled outside the except block, so its frames (and tensors) are freed
            if not oom:
                break
            _release_memory()
            if work_batch == 1:
                raise ModelError(f"out of memory even at batch 1 (chunk {i}, samples {short_keys(keys)}); "
                                 "use a device with more memory or a smaller model resolution")
            warnings.warn(f"out of memory at batch {work_batch}; retrying with {work_batch // 2}",
                          RuntimeWarning, stacklevel=2)
            work_batch //= 2
        attack_store.save(i, {"id": ids, "member": samples.member[s:e], **got[1]})
        bar.set_postfix(samples=e)
    return timing


def is_out_of_memory(err: BaseException | None) -> bool:
    """An allocator failure (CUDA/ROCm/XPU, MPS, CPU), also when a layer re-raised it as its own
    error (`raise ModelError(...) from oom`, as geometry's decoder calls do)."""
    for _ in range(8):
        if err is None:
            return False
        if isinstance(err, torch.OutOfMemoryError):
            return True
        text = str(err) if isinstance(err, RuntimeError) else ""
        if any(s in text for s in (" out of memory", "MPS backend out of memory",
                                   "DefaultCPUAllocator: can't allocate memory")):
            return True
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return False


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def gather(samples: SampleSet, config: AuditConfig, geometry_store: ChunkStore, attack_store: ChunkStore) -> dict:
    """All chunks in sample order, each array filled in place (peak = the result plus one chunk,
    not twice the result); error if any chunk is missing (a rank did not finish)."""
    from ..errors import DataError

    out: dict[str, np.ndarray] = {}
    n = len(samples)
    for i, (s, e) in enumerate(chunk_ranges(n, config.chunk_size)):
        ids = np.arange(s, e)
        g, a = geometry_store.done(i, ids), attack_store.done(i, ids)
        if g is None or a is None:
            raise DataError(f"{attack_store.root}: chunk {i} (samples {s}..{e - 1}) is missing; rerun to complete it")
        for k, v in {**{k: v for k, v in g.items() if k != "id"}, **a}.items():
            if k not in out:
                out[k] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
            out[k][s:e] = v
        del g, a
    return out
