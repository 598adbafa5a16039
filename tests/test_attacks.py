"""Attack vectors vs hand-written formulas on analytic noise predictors; sweep == single calls."""
import math

import numpy as np
import pytest
import torch

from diffaudit.attacks import (ATTACKS, attack_sweep, loss, loss_noise, pia, register_attack, secmi, sima, statistic,
                               statistic_bank)
from diffaudit.errors import InputError, ModelError, NonFiniteError

T = 120
SHAPE = (2, 3, 3)
D = int(np.prod(SHAPE))


def schedule():
    return torch.cumprod(1 - torch.linspace(1e-4, 2e-2, T, dtype=torch.float64), 0)


class DenseLinear:
    """ε̂(x, t) = W_t vec(x) + b_t: dense, so every dim of the output mixes every input dim."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.alphas_cumprod = schedule().float()  # like diffusers: float32 table
        self.W = torch.randn(T, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
        self.b = 0.1 * torch.randn(T, D, generator=g, dtype=torch.float64)

    def eps(self, x, t, cond=None):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        out = torch.einsum("nij,nj->ni", self.W[t], x.reshape(x.shape[0], -1)) + self.b[t]
        return out.reshape(x.shape)

    # numpy twin for the hand-written formulas
    def eps_np(self, x, t):
        return np.stack([self.W[ti].numpy() @ xi.ravel() + self.b[ti].numpy() for xi, ti in zip(x, t)]).reshape(x.shape)


class Elementwise:
    """Row-independent to the last bit (elementwise ops only): for exact sweep == single checks."""

    def __init__(self, seed=0, cond_scale=0.0):
        g = torch.Generator().manual_seed(seed)
        self.alphas_cumprod = schedule()
        self.A = 0.3 * torch.randn(T, *SHAPE, generator=g, dtype=torch.float64)
        self.b = 0.1 * torch.randn(T, *SHAPE, generator=g, dtype=torch.float64)
        self.cond_scale = cond_scale
        self.calls, self.rows = 0, 0

    def eps(self, x, t, cond=None):
        self.calls += 1
        self.rows += x.shape[0]
        out = self.A[t] * x + self.b[t] + 0.1 * x.flip(-1)
        if cond is not None:
            out = out + self.cond_scale * cond.view(-1, 1, 1, 1)
        return out


def abar(t):
    return schedule().float().double().numpy()[t]  # the model's float32 table, read in float64


@pytest.fixture
def z():
    return torch.randn(4, *SHAPE, dtype=torch.float64)


def test_sima_loss_pia_match_formulas(z):
    m = DenseLinear()
    zn = z.numpy()
    for t in [0, 7, 55, T - 1]:
        tt = np.full(4, t)
        a = abar(t)
        np.testing.assert_allclose(sima(m, z, t).numpy(), m.eps_np(zn, tt), rtol=1e-12, atol=1e-12)
        noise = torch.randn_like(z)
        nn = noise.numpy()
        want = nn - m.eps_np(math.sqrt(a) * zn + math.sqrt(1 - a) * nn, tt)
        np.testing.assert_allclose(loss(m, z, t, noise).numpy(), want, rtol=1e-12, atol=1e-12)
        e0 = m.eps_np(zn, np.zeros(4, int))
        want = e0 - m.eps_np(math.sqrt(a) * zn + math.sqrt(1 - a) * e0, tt)
        np.testing.assert_allclose(pia(m, z, t).numpy(), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pia(m, z, t, eps0=torch.from_numpy(e0)).numpy(), want, rtol=1e-12, atol=1e-12)


def test_per_sample_t_equals_one_at_a_time(z):
    m = DenseLinear()
    t = torch.tensor([0, 13, 40, 95])
    noise = torch.randn_like(z)
    for fn, kw in [(sima, {}), (pia, {}), (loss, {"noise": noise}), (secmi, {"interval": 10})]:
        batched = fn(m, z, t, **kw)
        for i in range(4):
            kwi = {"noise": noise[i:i + 1]} if fn is loss else kw
            single = fn(m, z[i:i + 1], int(t[i]), **kwi)
            torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-12, atol=1e-12)


def _ddim_np(x, e, s, u):
    return math.sqrt(abar(u)) * (x - math.sqrt(1 - abar(s)) * e) / math.sqrt(abar(s)) + math.sqrt(1 - abar(u)) * e


def _secmi_reference_style(m, zn, t_sec, step):
    """A literal mirror of the SecMI code's convention (mia_evals/secmia.py): target_steps =
    range(0, t_sec, step)[1:], multistep from t_c = 0, one step on to target[-1] + step, back."""
    n = zn.shape[0]
    targets = list(range(0, t_sec, step))[1:]
    x, tc = zn, 0
    for tgt in targets:
        x = _ddim_np(x, m.eps_np(x, np.full(n, tc)), tc, tgt)
        tc = tgt
    last = targets[-1] if targets else 0
    on = _ddim_np(x, m.eps_np(x, np.full(n, last)), last, last + step)
    back = _ddim_np(on, m.eps_np(on, np.full(n, last + step)), last + step, last)
    return back - x


def test_secmi_matches_reference_convention(z):
    m = DenseLinear()
    for t in [10, 50, 90]:  # ours at t == the reference's t_sec = t + Δ
        want = _secmi_reference_style(m, z.numpy(), t + 10, 10)
        np.testing.assert_allclose(secmi(m, z, t, interval=10).numpy(), want, rtol=1e-10, atol=1e-12)


def test_secmi_literal_loop_off_grid_and_t0(z):
    m = DenseLinear()
    zn = z.numpy()
    for t, d in [(0, 10), (5, 10), (37, 10), (36, 6)]:
        x, s = zn, 0
        while s < t:  # strides of Δ, a last shorter step to t
            u = min(s + d, t)
            x = _ddim_np(x, m.eps_np(x, np.full(4, s)), s, u)
            s = u
        on = _ddim_np(x, m.eps_np(x, np.full(4, t)), t, t + d)
        back = _ddim_np(on, m.eps_np(on, np.full(4, t + d)), t + d, t)
        np.testing.assert_allclose(secmi(m, z, t, interval=d).numpy(), back - x, rtol=1e-10, atol=1e-12)


def test_statistic():
    v = torch.randn(3, *SHAPE, dtype=torch.float64)
    mask = torch.rand(3, *SHAPE) > 0.4
    flat, mflat = v.reshape(3, -1), mask.reshape(3, -1)
    for p in [1, 2, 4, 2.5]:
        want = torch.stack([(flat[i][mflat[i]].abs() ** p).sum() for i in range(3)])
        torch.testing.assert_close(statistic(v, p, mask), want)
        torch.testing.assert_close(statistic(v, p, mask, power=False), want ** (1 / p))
        torch.testing.assert_close(statistic(v, p, power=False), torch.linalg.vector_norm(flat, p, dim=1))
    torch.testing.assert_close(statistic(v, math.inf, mask[0]), (v * mask[0]).abs().reshape(3, -1).amax(1))
    assert ATTACKS["sima"].p == 4 and ATTACKS["pia"].p == 4 and ATTACKS["loss"].p == 2 and ATTACKS["secmi"].p == 2
    with pytest.raises(InputError, match="mask"):
        statistic(v, 2, torch.ones(5))
    with pytest.raises(InputError, match="p must"):
        statistic(v, 0)


def test_statistic_bank_is_the_batched_statistic():
    """Column m of the bank form == statistic(v, p, mask_m) for each mask on its own."""
    v = torch.randn(3, *SHAPE)  # float32 in, float64 out (as the audit stores it)
    masks = (torch.rand(3, 5, D) > 0.5).float()
    masks[:, 0] = 1  # the plain statistic
    masks[1, 3] = 0  # a mask that drops every dim
    for p in [1, 2, 4, 2.5, math.inf]:
        for power in [True, False]:
            got = statistic_bank(v, p, masks, power=power)
            assert got.dtype == torch.float64 and got.shape == (3, 5)
            for m in range(5):
                want = statistic(v.double(), p, masks[:, m].reshape(v.shape), power=power)
                torch.testing.assert_close(got[:, m], want, rtol=1e-12, atol=1e-300)
    with pytest.raises(InputError, match=r"masks must be \[N=3, M, d=18\]"):
        statistic_bank(v, 2, masks[:, :, :5])
    with pytest.raises(InputError, match="p must"):
        statistic_bank(v, -1, masks)


def _sweep_dict(m, z, ts, **kw):
    out = {}
    for name, t, vec in attack_sweep(m, z, ts, **kw):
        assert (name, t) not in out
        out[(name, t)] = vec.clone()
    return out


def _single(m, z, name, t, ids, cond=None, interval=10):
    if name == "loss":
        return loss(m, z, t, loss_noise(z.shape[1:], ids, 0, t, dtype=z.dtype), cond=cond)
    if name == "secmi":
        return secmi(m, z, t, interval=interval, cond=cond)
    return ATTACKS[name].fn(m, z, t, cond=cond)


@pytest.mark.parametrize("max_batch", [1, 7, 4096])
def test_sweep_equals_single_calls_exactly(z, max_batch):
    m = Elementwise(cond_scale=0.5)
    ids = [f"img{i}" for i in range(4)]
    cond = torch.arange(4, dtype=torch.float64)
    ts = {"sima": [0, 10, 20, 30], "loss": [10, 30], "pia": [10, 20], "secmi": [0, 10, 15, 30]}
    out = _sweep_dict(m, z, ts, sample_ids=ids, cond=cond, max_batch=max_batch)
    assert set(out) == {(a, t) for a, v in ts.items() for t in v}
    rows, calls = m.rows, m.calls
    for (name, t), vec in out.items():
        assert torch.equal(vec, _single(m, z, name, t, ids, cond)), (name, t)
    # rows: SimA 3 + eps0 1 + Loss 2 + PIA 2 + SecMI trajectory 10→40 (4) + off-grid 15 (2) = 14 per sample
    assert rows == 14 * 4
    if max_batch == 4096:
        assert calls == 5  # the SecMI chain ε̂ at 0, 10, 20, 30, 40; the t = 15 branch runs beside it


@pytest.mark.parametrize("max_batch", [16, 64])
def test_sweep_call_count_is_minimal(max_batch):
    m = Elementwise()
    z = torch.randn(8, *SHAPE, dtype=torch.float64)
    grid = list(range(0, 100, 10))
    _sweep_dict(m, z, grid, sample_ids=range(8), max_batch=max_batch)
    # eps0 + SimA 9 + Loss 10 + PIA 10 + SecMI 10..100 (10) = 40 rows per sample
    assert m.rows == 40 * 8
    # the lower bound: full calls, or SecMI's sequential chain ε̂ at 0, 10, …, 100 (11 calls)
    assert m.calls == max(math.ceil(40 * 8 / max_batch), 11)
    single = Elementwise()
    for name in ("sima", "loss", "pia", "secmi"):  # the sweep above (its default attacks)
        for t in grid:
            _single(single, z, name, t, list(range(8)))
    assert single.calls > 4 * m.calls


def test_sweep_is_batch_independent(z):
    m = Elementwise()
    ids = ["a", "b", "c", "d"]
    full = _sweep_dict(m, z, [0, 20], sample_ids=ids, max_batch=5)
    part = [_sweep_dict(m, z[i:j], [0, 20], sample_ids=ids[i:j], max_batch=3) for i, j in [(0, 1), (1, 4)]]
    for key, vec in full.items():
        assert torch.equal(vec, torch.cat([part[0][key], part[1][key]])), key


def test_sweep_streams_and_leaves_grad_mode(z):
    m = Elementwise()
    gen = attack_sweep(m, z, [10, 20], attacks=("sima",), max_batch=4)
    next(gen)
    assert torch.is_grad_enabled()
    assert m.calls == 1  # only what the first vector needed
    list(gen)


def test_registered_attack_is_one_function_and_one_line(z):
    def double_sima(model, z, t, cond=None):
        return 2 * sima(model, z, t, cond=cond)

    register_attack("double_sima", double_sima, 4)
    try:
        m = Elementwise()
        out = _sweep_dict(m, z, [10, 20], attacks=("double_sima", "sima"))
        for t in [10, 20]:
            assert torch.equal(out[("double_sima", t)], 2 * out[("sima", t)])
        with pytest.raises(InputError, match="already registered"):
            register_attack("double_sima", double_sima, 4)
    finally:
        ATTACKS.pop("double_sima")


class NaNAt:
    def __init__(self, bad):
        self.alphas_cumprod, self.bad = schedule(), bad

    def eps(self, x, t, cond=None):
        out = x.clone()
        out[self.bad] = float("nan")
        return out


def test_errors(z):
    m = DenseLinear()
    with pytest.raises(InputError, match=r"\[0, 120\)"):
        sima(m, z, T)
    with pytest.raises(InputError, match="must lie"):
        pia(m, z, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(InputError, match="shape"):
        sima(m, z, torch.tensor([1, 2]))
    with pytest.raises(InputError, match="integers"):
        sima(m, z, torch.tensor(1.0))
    with pytest.raises(InputError, match="interval"):
        secmi(m, z, T - 10, interval=10)
    with pytest.raises(InputError, match="noise"):
        loss(m, z, 3, torch.randn(2, 2))
    with pytest.raises(InputError, match="batch-first"):
        sima(m, z[0, 0, 0], 3)
    with pytest.raises(InputError, match="alphas_cumprod"):
        sima(object(), z, 3)
    with pytest.raises(NonFiniteError, match=r"1 sample\(s\): 2"):
        sima(NaNAt(2), z, 3)
    with pytest.raises(NonFiniteError, match=r"img1 \(t=5\)"):
        list(attack_sweep(NaNAt(1), z, [5], attacks=("sima",), sample_ids=["img0", "img1", "img2", "img3"]))

    class Wrong(DenseLinear):
        def eps(self, x, t, cond=None):
            return x[:, :1]

    with pytest.raises(ModelError, match="expected a tensor of shape"):
        sima(Wrong(), z, 3)
    with pytest.raises(InputError, match="unknown attack"):
        list(attack_sweep(m, z, [1], attacks=("nope",)))
    with pytest.raises(InputError, match="sample_ids"):
        list(attack_sweep(m, z, [1], attacks=("loss",)))
    with pytest.raises(InputError, match="timesteps for secmi"):
        list(attack_sweep(m, z, [T - 5], attacks=("secmi",)))


def test_sweep_through_a_diffusers_unet():
    """A real (tiny, float64) UNet2DModel: packed calls agree with single calls to float tolerance."""
    from diffaudit.models.tiny import tiny_scheduler, tiny_unet2d

    unet = tiny_unet2d(in_channels=2, sample_size=8, block_out_channels=(8, 16)).double()

    class UNetModel:
        alphas_cumprod = tiny_scheduler().alphas_cumprod

        def eps(self, x, t, cond=None):
            return unet(x, t).sample

    m = UNetModel()
    z = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    out = _sweep_dict(m, z, [0, 20], sample_ids=["x", "y", "w"], max_batch=5)
    assert len(out) == 8
    for (name, t), vec in out.items():
        torch.testing.assert_close(vec, _single(m, z, name, t, ["x", "y", "w"]), rtol=1e-9, atol=1e-9)


def test_sweep_spreads_rows_over_secmi_chain():
    """The audit's default grid at a chunk of 64: SecMI's 31 chain calls each carry about a 31st
    of the rows (before: 12 full calls of 512, then 18 chain-only calls of 64), the same rows."""
    from diffaudit.audit import AuditConfig

    class Recording:  # a 1000-step schedule, rows independent; records each call's rows
        alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)

        def __init__(self):
            self.sizes = []

        def eps(self, x, t, cond=None):
            self.sizes.append(x.shape[0])
            return 0.5 * x

    cfg = AuditConfig()
    grids = {a: cfg.grid(a) for a in ("sima", "loss", "pia", "secmi")}
    m = Recording()
    z = torch.randn(64, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = _sweep_dict(m, z, grids, sample_ids=range(64), max_batch=512)
    assert len(out) == sum(len(v) for v in grids.values())
    sizes = m.sizes
    rows = 64 * (1 + 29 + 29 + 29 + 30)  # ε̂(z,0), SimA t>0, Loss, PIA, SecMI's chain past t=0 (10..300)
    assert sum(sizes) == rows and len(sizes) == 31  # the chain's length: the fewest calls possible
    assert max(sizes) <= -(-rows // 30) and min(sizes[:-2]) >= rows // 31 - 1
