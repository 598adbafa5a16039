"""Attack sweeps in few model calls: pack (sample, t) pairs, share what can be shared.

Every registered attack contributes jobs (:mod:`diffaudit.attacks.jobs`). The scheduler packs the
rows of pending requests into model calls of at most ``max_batch`` rows, hands results back, and
streams vectors to the caller as soon as they are done. Sharing: ε̂(z, 0) is requested under one
key, and one SecMI inversion trajectory serves every t on its grid, so scoring SecMI at every
t ∈ {0, Δ, …, t_max} costs t_max/Δ + 2 calls per sample in all.

Memory stays bounded: new jobs are admitted only while fewer than ``max_batch`` rows are
waiting, and nothing of size N × T × d is ever held.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator, Mapping, Sequence

import torch

from .._checks import check_batched
from ..diffusion import check_timesteps, vp_schedule
from ..errors import InputError
from .base import ATTACKS
from .common import check_cond, check_interval, model_eps
from .jobs import Emit, Request, Spawn, SweepContext, direct_job
from .loss import loss_noise

__all__ = ["attack_sweep"]


def _schedule(ctx: SweepContext, jobs: Iterator, max_batch: int, names, plan: list[int] | None = None) -> Iterator[Emit]:
    """Admit jobs while fewer than `max_batch` rows wait; send calls of at most `max_batch` rows,
    fewer while a chain's calls are left to spread the rows over (`call_plan`)."""
    queue: list[Request] = []        # requests with rows not yet sent
    waiting: dict[int, list] = {}    # id(req) -> [(job, reserved rows)]
    inflight: dict[str, Request] = {}
    cache: dict[str, torch.Tensor] = {}
    spawned: deque = deque()
    n = ctx.z.shape[0]
    outstanding = 0                  # rows queued and not yet answered
    reserved = 0                     # rows that jobs waiting on a shared key will soon request
    seq = 0

    def drive(job, value):
        nonlocal outstanding, reserved, seq
        while True:
            try:
                item = job.send(value)
            except StopIteration:
                return
            value = None
            if isinstance(item, Emit):
                yield item
            elif isinstance(item, Spawn):
                spawned.append(item.job)
            elif item.key is not None and item.key in cache:
                value = cache[item.key]
            elif item.key is not None and item.key in inflight:
                waiting[id(inflight[item.key])].append((job, n))
                reserved += n  # its next request will need about n rows
                return
            else:
                if item.key is not None:
                    inflight[item.key] = item
                waiting[id(item)] = [(job, 0)]
                seq += 1
                item.seq = seq
                queue.append(item)
                outstanding += item.x.shape[0]
                return

    while True:
        # Admit jobs until the next call can be filled; reservations bound the memory held.
        while outstanding < max_batch and reserved < max_batch and (spawned or jobs is not None):
            job = spawned.popleft() if spawned else next(jobs, None)
            if job is None:
                jobs = None
                break
            yield from drive(job, None)
        if not queue:
            if spawned:
                continue
            return
        queue.sort(key=lambda r: (r.priority, r.seq))
        room, call = max_batch, []
        if plan is not None and plan[1] > 1 and queue[0].priority == 0:
            chain_rows = sum(r.x.shape[0] - r.sent for r in queue if r.priority == 0)
            room = min(max_batch, max(chain_rows, -(-plan[0] // plan[1])))
        for req in queue:
            take = min(req.x.shape[0] - req.sent, room)
            if take == 0:
                break
            call.append((req, req.sent, req.sent + take))
            req.sent += take
            room -= take
        queue = [r for r in queue if r.sent < r.x.shape[0]]
        rows = call
        if plan is not None:
            plan[0] -= sum(b - a for _, a, b in call)
            plan[1] -= 1
        x = torch.cat([r.x[a:b] for r, a, b in rows]) if len(rows) > 1 else rows[0][0].x[rows[0][1]:rows[0][2]]
        t = torch.cat([r.t[a:b] for r, a, b in rows]) if len(rows) > 1 else rows[0][0].t[rows[0][1]:rows[0][2]]
        idx = torch.cat([torch.arange(a, b) for r, a, b in rows])  # request rows are samples 0..n-1
        cond = ctx.cond if ctx.cond is None else ctx.cond[idx.to(ctx.cond.device)]
        with torch.no_grad():
            e = model_eps(ctx.model, x, t, cond, names=lambda i: names(int(idx[i]), int(t[i])))
        off, done = 0, []
        for req, a, b in rows:
            req.parts.append(e[off:off + b - a])
            off += b - a
            if b == req.x.shape[0]:
                done.append(req)
        for req in done:
            out = req.parts[0] if len(req.parts) == 1 else torch.cat(req.parts)
            req.parts = []
            outstanding -= req.x.shape[0]
            if req.key is not None:
                cache[req.key] = out
                inflight.pop(req.key, None)
            for job, r in waiting.pop(id(req)):
                reserved -= r
                yield from drive(job, out)


def attack_sweep(model, z: torch.Tensor, timesteps, attacks: Sequence[str] = ("sima", "loss", "pia", "secmi"),
                 cond=None, noise_fn=None, interval: int = 10, max_batch: int = 256,
                 sample_ids: Sequence | None = None, seed: int = 0) -> Iterator[tuple[str, int, torch.Tensor]]:
    """Yield ``(attack, t, vector)`` for every attack and timestep, in as few model calls as possible.

    ``timesteps``: one sequence of ints for all attacks, or a mapping attack → sequence.
    Vectors equal the single-call functions' (:func:`~diffaudit.attacks.sima`, …) exactly, for a
    model whose rows do not interact. Reduce each vector as it arrives (the generator never holds
    N × T × d). Noise for attacks that need it comes from ``noise_fn(t)`` or, given
    ``sample_ids``, from :func:`~diffaudit.attacks.loss_noise` keyed by (seed, sample id, t), so it
    does not depend on batching. ``interval``: Δ of attacks that step past t (SecMI). Vectors
    arrive in completion order, not sorted by t.
    """
    check_batched(z, "z")
    n = z.shape[0]
    check_cond(cond, n)
    if cond is not None and not isinstance(cond, torch.Tensor):
        raise InputError("attack_sweep needs cond as a batch-first tensor (or None)")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"max_batch must be a positive int, got {max_batch!r}")
    check_interval(interval)
    if isinstance(attacks, str):
        attacks = (attacks,)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise InputError(f"unknown attack(s) {unknown}; registered: {sorted(ATTACKS)}")
    if sample_ids is not None and len(sample_ids) != n:
        raise InputError(f"sample_ids has {len(sample_ids)} entries for {n} samples")
    sched = vp_schedule(model, z.device)
    per_attack = {}
    for a in attacks:
        ts = timesteps.get(a, ()) if isinstance(timesteps, Mapping) else timesteps
        margin = ATTACKS[a].t_margin(interval)
        ts = sorted({int(check_timesteps(t, 1, sched.T, "cpu", margin, f"timesteps for {a}")) for t in ts})
        if ts:
            per_attack[a] = ts
    noisy = [a for a in per_attack if ATTACKS[a].needs_noise]
    if noisy and noise_fn is None and sample_ids is None:
        raise InputError(f"the {noisy[0]} attack needs noise: pass sample_ids (noise keyed by id) or noise_fn(t)")

    def noise(t):
        if noise_fn is None:
            return loss_noise(z.shape[1:], sample_ids, seed, t, dtype=z.dtype, device=z.device)
        out = noise_fn(t)
        if not isinstance(out, torch.Tensor) or out.shape != z.shape:
            raise InputError(f"noise_fn({t}) must return a tensor shaped like z {tuple(z.shape)}")
        return out.to(device=z.device, dtype=z.dtype)

    # Detached inputs: no graph is built, and grad mode is not switched across the yields.
    z = z.detach()
    cond = cond.detach() if cond is not None else None
    ctx = SweepContext(model, z, cond, sched, interval, noise, sample_ids, seed)
    # Sequential chains first (stable: otherwise in the order asked), the rest fills the calls around them.
    order = sorted(per_attack, key=lambda a: ATTACKS[a].sweep_priority)
    jobs = (job for a in order for job in (ATTACKS[a].job or direct_job(ATTACKS[a]))(ctx, per_attack[a]))

    def names(i, t):
        return f"{sample_ids[i] if sample_ids is not None else i} (t={t})"

    for item in _schedule(ctx, jobs, max_batch, names, call_plan(per_attack, n)):
        yield item.name, item.t, item.vector


def call_plan(per_attack: Mapping[str, Sequence[int]], n: int) -> list[int] | None:
    """[rows expected, chain calls expected] for spreading rows over a sequential chain, or None.

    With a chain (SecMI: one call per step, its rows first in each call) the other attacks' rows
    are spread evenly over the chain's calls instead of filling the first calls to `max_batch`
    and leaving the last ones to the chain alone: the same number of calls (the chain's length,
    the fewest possible), each about equally full. Measured (benchmarks/README.md): 12 calls of
    512 rows then 18 of 64 ran 1.11x the same rows in 31 even calls on a CPU; spread, 1.01x.
    Counts come from the registry (`calls_per_t` over each grid); the chain's is a lower bound
    (its trajectory may hold more steps than its grid), and once it is used up calls fill to
    `max_batch` again, so a wrong guess never adds a call."""
    chain = max((ATTACKS[a].calls_per_t * len(ts) for a, ts in per_attack.items() if ATTACKS[a].sweep_priority == 0),
                default=0)
    if not chain:
        return None
    return [int(n * sum(ATTACKS[a].calls_per_t * len(ts) for a, ts in per_attack.items())), int(chain)]
