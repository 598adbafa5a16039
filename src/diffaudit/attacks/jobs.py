"""The protocol between attack jobs and the sweep's scheduler (:mod:`diffaudit.attacks.sweep`).

A job is a generator that yields a :class:`Request` (model inputs; the scheduler sends back ε̂ for
them), an :class:`Emit` (a finished vector) or a :class:`Spawn` (a new job to run beside it). An
attack's ``job(ctx, ts)`` factory returns an iterator of jobs for the timesteps ``ts``; jobs are
started lazily, so memory stays bounded. Requests under one ``key`` are computed once per sweep
and shared: ε̂(z, 0) (:func:`eps0_request`) serves SimA at t = 0, PIA's ε₀ and SecMI's first
inversion step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from ..diffusion import VPSchedule

__all__ = ["Request", "Emit", "Spawn", "SweepContext", "eps0_request", "direct_job"]


@dataclass(eq=False)
class Request:
    x: torch.Tensor            # [n, ...] model input
    t: torch.Tensor            # [n] long
    key: str | None = None     # results cached under this key for the whole sweep
    priority: int = 1          # 0 = on a sequential chain (SecMI): goes first in every call
    sent: int = 0              # rows handed to model calls so far (scheduler state)
    seq: int = 0               # arrival order (scheduler state)
    parts: list = field(default_factory=list)  # answered slices (scheduler state)


@dataclass(eq=False)
class Emit:
    name: str
    t: int
    vector: torch.Tensor


@dataclass(eq=False)
class Spawn:
    job: Iterator


@dataclass
class SweepContext:
    """What every job of one sweep shares: the samples, their condition and the schedule."""

    model: object
    z: torch.Tensor
    cond: object
    sched: VPSchedule
    interval: int
    noise: Callable[[int], torch.Tensor]  # t -> noise shaped like z, keyed by sample id and t
    sample_ids: Sequence | None = None
    seed: int = 0

    def full(self, t: int) -> torch.Tensor:
        return torch.full((self.z.shape[0],), int(t), dtype=torch.long, device=self.z.device)


def eps0_request(ctx: SweepContext, priority: int = 1) -> Request:
    """ε̂(z, 0) for all samples, computed once per sweep."""
    return Request(ctx.z, ctx.full(0), key="eps0", priority=priority)


def direct_job(spec) -> Callable:
    """Fallback for an attack without a job: call its function once per timestep, passing what
    its ``needs`` name (cond, noise, interval, sample_ids and seed for perturbations)."""
    def job(ctx: SweepContext, ts: Sequence[int]):
        def run():
            for t in ts:
                kw = {}
                if "cond" in spec.needs:
                    kw["cond"] = ctx.cond
                if "noise" in spec.needs:
                    kw["noise"] = ctx.noise(t)
                if "interval" in spec.needs:
                    kw["interval"] = ctx.interval
                if "perturbation" in spec.needs:
                    kw["sample_ids"], kw["seed"] = ctx.sample_ids, ctx.seed
                yield Emit(spec.name, t, spec.fn(ctx.model, ctx.z, t, **kw))
        return iter([run()])
    return job
