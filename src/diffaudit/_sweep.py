"""Attack sweeps in few model calls (issue 5): pack (sample, t) pairs, share what can be shared.

Every attack at every timestep is a small *job*: a generator that yields a :class:`_Req` (model
inputs; it is sent back ε̂ for them), :class:`_Emit` (a finished vector) or :class:`_Spawn` (a new
job). The scheduler packs the rows of pending requests into model calls of at most
``max_batch`` rows, hands results back, and streams vectors to the caller as soon as they are
done. Sharing: ε̂(z, 0) is requested under one key (SimA at t = 0, PIA's ε₀, SecMI's first
inversion step), and one SecMI inversion trajectory serves every t on its grid — scoring SecMI
at every t ∈ {0, Δ, …, t_max} costs t_max/Δ + 2 calls per sample in all (SPEC §1).

Memory stays bounded: new jobs are admitted only while fewer than ``max_batch`` rows are
waiting, and nothing of size N × T × d is ever held.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

from ._checks import check_batched
from .errors import InputError


@dataclass(eq=False)
class _Req:
    x: torch.Tensor            # [n, ...] model input
    t: torch.Tensor            # [n] long
    key: str | None = None     # results cached under this key for the whole sweep
    priority: int = 1          # 0 = on a sequential chain (SecMI): goes first in every call
    sent: int = 0
    seq: int = 0
    parts: list = field(default_factory=list)


@dataclass(eq=False)
class _Emit:
    name: str
    t: int
    vector: torch.Tensor


@dataclass(eq=False)
class _Spawn:
    job: Iterator


@dataclass
class _Ctx:
    model: object
    z: torch.Tensor
    cond: object
    sched: object
    interval: int
    noise: object  # t -> noise shaped like z

    def full(self, t: int) -> torch.Tensor:
        return torch.full((self.z.shape[0],), int(t), dtype=torch.long, device=self.z.device)


# -- jobs -------------------------------------------------------------------------------------

def _eps0_req(ctx: _Ctx) -> _Req:
    return _Req(ctx.z, ctx.full(0), key="eps0")


def sima_job(ctx: _Ctx, ts: Sequence[int]):
    def one(t):
        req = _eps0_req(ctx) if t == 0 else _Req(ctx.z, ctx.full(t))
        yield _Emit("sima", t, (yield req))
    return (one(t) for t in ts)


def loss_job(ctx: _Ctx, ts: Sequence[int]):
    from .attacks import _noisy

    def one(t):
        noise = ctx.noise(t)
        tt = ctx.full(t)
        e = yield _Req(_noisy(ctx.sched, ctx.z, tt, noise), tt)
        yield _Emit("loss", t, noise - e)
    return (one(t) for t in ts)


def pia_job(ctx: _Ctx, ts: Sequence[int]):
    from .attacks import _noisy

    def one(t):
        eps0 = yield _eps0_req(ctx)
        tt = ctx.full(t)
        e = yield _Req(_noisy(ctx.sched, ctx.z, tt, eps0), tt)
        yield _Emit("pia", t, eps0 - e)
    return (one(t) for t in ts)


def secmi_job(ctx: _Ctx, ts: Sequence[int]):
    """One inversion trajectory along 0, Δ, 2Δ, … serving every requested t.

    At grid point s the trajectory holds x̃_s and ε̂(x̃_s, s): that ε̂ is both the inversion
    step to s + Δ and, for t = s − Δ, the step back from x̃_{t+Δ}; so on-grid t cost nothing
    beyond the trajectory. An off-grid t branches off at ⌊t/Δ⌋Δ (two extra calls).
    """
    from .attacks import _ddim

    d, s_ = ctx.interval, ctx.sched
    on = {t for t in ts if t % d == 0}
    off = sorted(t for t in ts if t % d)
    last = max([t + d for t in on] + [t // d * d for t in off])

    def tail(x_t, t):
        tt, up = ctx.full(t), ctx.full(t + d)
        x_on = _ddim(s_, x_t, tt, up, (yield _Req(x_t, tt, priority=0)))
        back = _ddim(s_, x_on, up, tt, (yield _Req(x_on, up, priority=0)))
        yield _Emit("secmi", t, back - x_t)

    def trajectory():
        s, x, x_prev = 0, ctx.z, None
        e = yield _Req(ctx.z, ctx.full(0), key="eps0", priority=0)
        while True:
            ss = ctx.full(s)
            if s - d in on:
                yield _Emit("secmi", s - d, _ddim(s_, x, ss, ctx.full(s - d), e) - x_prev)
            for t in off:
                if t // d * d == s:
                    yield _Spawn(tail(_ddim(s_, x, ss, ctx.full(t), e), t))
            if s + d > last:
                return
            x_prev, x = x, _ddim(s_, x, ss, ctx.full(s + d), e)
            s += d
            e = yield _Req(x, ctx.full(s), priority=0)

    return iter([trajectory()])


def _direct_job(spec):
    """Fallback for a registered attack without a job: call its function per timestep."""
    def job(ctx: _Ctx, ts):
        def run():
            for t in ts:
                extra = {"noise": ctx.noise(t)} if spec.needs_noise else {}
                yield _Emit(spec.name, t, spec.fn(ctx.model, ctx.z, t, cond=ctx.cond, **extra))
        return iter([run()])
    return job


# -- scheduler --------------------------------------------------------------------------------

def _schedule(ctx: _Ctx, jobs: Iterator, max_batch: int, names) -> Iterator[_Emit]:
    from .attacks import _eps

    queue: list[_Req] = []           # requests with rows not yet sent
    waiting: dict[int, list] = {}    # id(req) -> [(job, reserved rows)]
    inflight: dict[str, _Req] = {}
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
            if isinstance(item, _Emit):
                yield item
            elif isinstance(item, _Spawn):
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
        for req in queue:
            take = min(req.x.shape[0] - req.sent, room)
            if take == 0:
                break
            call.append((req, req.sent, req.sent + take))
            req.sent += take
            room -= take
        queue = [r for r in queue if r.sent < r.x.shape[0]]
        rows = call
        x = torch.cat([r.x[a:b] for r, a, b in rows]) if len(rows) > 1 else rows[0][0].x[rows[0][1]:rows[0][2]]
        t = torch.cat([r.t[a:b] for r, a, b in rows]) if len(rows) > 1 else rows[0][0].t[rows[0][1]:rows[0][2]]
        idx = torch.cat([torch.arange(a, b) for r, a, b in rows])  # request rows are samples 0..n-1
        cond = ctx.cond if ctx.cond is None else ctx.cond[idx.to(ctx.cond.device)]
        with torch.no_grad():
            e = _eps(ctx.model, x, t, cond, names=lambda i: names(int(idx[i]), int(t[i])))
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


# -- public entry point -----------------------------------------------------------------------

def attack_sweep(model, z: torch.Tensor, timesteps, attacks: Sequence[str] = ("sima", "loss", "pia", "secmi"),
                 cond=None, noise_fn=None, interval: int = 10, max_batch: int = 256,
                 sample_ids: Sequence | None = None, seed: int = 0) -> Iterator[tuple[str, int, torch.Tensor]]:
    """Yield ``(attack, t, vector)`` for every attack and timestep, in as few model calls as possible.

    ``timesteps``: one sequence of ints for all attacks, or a mapping attack → sequence.
    Vectors equal the single-call functions' (:func:`sima`, :func:`loss`, …) exactly, for a
    model whose rows do not interact. Reduce each vector as it arrives (the generator never holds
    N × T × d). Loss noise comes from ``noise_fn(t)`` or, given ``sample_ids``, from
    :func:`diffaudit.attacks.loss_noise` keyed by (seed, sample id, t), so it does not depend on
    batching. Vectors arrive in completion order, not sorted by t.
    """
    from .attacks import ATTACKS, _check_cond, _schedule as make_schedule, _timesteps, loss_noise

    check_batched(z, "z")
    n = z.shape[0]
    _check_cond(cond, n)
    if cond is not None and not isinstance(cond, torch.Tensor):
        raise InputError("attack_sweep needs cond as a batch-first tensor (or None)")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"max_batch must be a positive int, got {max_batch!r}")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise InputError(f"interval must be a positive int, got {interval!r}")
    if isinstance(attacks, str):
        attacks = (attacks,)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise InputError(f"unknown attack(s) {unknown}; registered: {sorted(ATTACKS)}")
    if sample_ids is not None and len(sample_ids) != n:
        raise InputError(f"sample_ids has {len(sample_ids)} entries for {n} samples")
    sched = make_schedule(model, z.device)
    per_attack = {}
    for a in attacks:
        ts = timesteps.get(a, ()) if isinstance(timesteps, Mapping) else timesteps
        ts = sorted({int(_timesteps(t, 1, sched.T, "cpu", interval if a == "secmi" else 0, f"timesteps for {a}"))
                     for t in ts})
        if ts:
            per_attack[a] = ts
    if any(ATTACKS[a].needs_noise for a in per_attack) and noise_fn is None and sample_ids is None:
        raise InputError("the loss attack needs noise: pass sample_ids (noise keyed by id) or noise_fn(t)")

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
    ctx = _Ctx(model, z, cond, sched, interval, noise)
    # SecMI first: its chain is sequential, the rest fills the calls around it.
    order = sorted(per_attack, key=lambda a: a != "secmi")
    jobs = (job for a in order for job in (ATTACKS[a].job or _direct_job(ATTACKS[a]))(ctx, per_attack[a]))

    def names(i, t):
        return f"{sample_ids[i] if sample_ids is not None else i} (t={t})"

    for item in _schedule(ctx, jobs, max_batch, names):
        yield item.name, item.t, item.vector
