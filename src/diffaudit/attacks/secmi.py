"""SecMI: the t-error of deterministic DDIM inversion, x̂_t − x̃_t (Duan et al., ICML 2023,
arXiv 2302.01316; ℓ2 norm as in arXiv 2511.20592 §3.1 and §4.3).

x̃_t: deterministic DDIM inversion of z (taken as x at timestep 0) through 0, Δ, 2Δ, …, and a
last shorter step to t when t is not a multiple of Δ; x̃_{t+Δ}: one DDIM step on; x̂_t: one DDIM
step back using ε̂(x̃_{t+Δ}, t+Δ). The reference code (SecMI, ``get_intermediate_results``) calls
this timestep ``t_sec − Δ``: its default t_sec = 100 is t = 90 here.
"""
from __future__ import annotations

import torch

from .base import register_attack
from .common import check_interval, index_cond, model_eps, prepare
from .jobs import Emit, Request, Spawn

__all__ = ["secmi"]


@torch.no_grad()
def secmi(model, z: torch.Tensor, t, interval: int = 10, cond=None) -> torch.Tensor:
    """SecMI t-error vector, shaped like z (statistic: Σ|v|²). Per-sample t (LongTensor [N]) is
    supported; t + interval must stay below T."""
    check_interval(interval)
    s, tt = prepare(model, z, t, cond, margin=interval)
    n = z.shape[0]
    x, cur = z, torch.zeros_like(tt)
    while True:
        active = (cur < tt).nonzero().flatten()
        if active.numel() == 0:
            break
        nxt = torch.minimum(cur + interval, tt)
        if active.numel() == n:  # common case: everybody steps, no gather/scatter
            x = s.ddim(x, cur, nxt, model_eps(model, x, cur, cond))
            cur = nxt
        else:
            xa, ca, na = x[active], cur[active], nxt[active]
            x = x.clone()
            x[active] = s.ddim(xa, ca, na, model_eps(model, xa, ca, index_cond(cond, active, n)))
            cur = cur.clone()
            cur[active] = na
    up = tt + interval
    x_on = s.ddim(x, tt, up, model_eps(model, x, tt, cond))
    back = s.ddim(x_on, up, tt, model_eps(model, x_on, up, cond))
    return back - x


def secmi_job(ctx, ts):
    """One inversion trajectory along 0, Δ, 2Δ, … serving every requested t.

    At grid point s the trajectory holds x̃_s and ε̂(x̃_s, s): that ε̂ is both the inversion
    step to s + Δ and, for t = s − Δ, the step back from x̃_{t+Δ}; so on-grid t cost nothing
    beyond the trajectory. An off-grid t branches off at ⌊t/Δ⌋Δ (two extra calls). Every request
    is on the sequential chain (priority 0), so the other attacks fill the calls around it.
    """
    d, s_ = ctx.interval, ctx.sched
    on = {t for t in ts if t % d == 0}
    off = sorted(t for t in ts if t % d)
    last = max([t + d for t in on] + [t // d * d for t in off])

    def tail(x_t, t):
        tt, up = ctx.full(t), ctx.full(t + d)
        x_on = s_.ddim(x_t, tt, up, (yield Request(x_t, tt, priority=0)))
        back = s_.ddim(x_on, up, tt, (yield Request(x_on, up, priority=0)))
        yield Emit("secmi", t, back - x_t)

    def trajectory():
        s, x, x_prev = 0, ctx.z, None
        e = yield Request(ctx.z, ctx.full(0), key="eps0", priority=0)
        while True:
            ss = ctx.full(s)
            if s - d in on:
                yield Emit("secmi", s - d, s_.ddim(x, ss, ctx.full(s - d), e) - x_prev)
            for t in off:
                if t // d * d == s:
                    yield Spawn(tail(s_.ddim(x, ss, ctx.full(t), e), t))
            if s + d > last:
                return
            x_prev, x = x, s_.ddim(x, ss, ctx.full(s + d), e)
            s += d
            e = yield Request(x, ctx.full(s), priority=0)

    return iter([trajectory()])


register_attack(
    "secmi", secmi, 2, display_name="SecMI", job=secmi_job, first_t=0, needs=("cond", "interval"),
    sweep_priority=0, reference="Duan et al. 2023, arXiv 2302.01316; arXiv 2511.20592 §3.1",
    description="x̂_t − x̃_t: the DDIM inversion t-error, one trajectory shared along the grid", calls_per_t=1,
)
