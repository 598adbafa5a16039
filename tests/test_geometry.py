"""diffaudit.geometry against independent computations: the full Jacobian from
torch.autograd.functional.jacobian, torch.linalg.svdvals and slogdet (float64 where it matters)."""
import math
import pickle

import pytest
import torch
from torch import nn

from diffaudit.errors import InputError, NonFiniteError
from diffaudit.geometry import distortion, influence, jacobian_diag, prepare_decoder_for_jvp, singular_values
from diffaudit.rng import sample_generator

F64 = torch.float64


class TinyDecoder(nn.Module):
    """conv + GroupNorm + SiLU + nearest upsampling: latent [4, 4, 4] (d = 64) -> image [3, 8, 8]."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(4, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.n2 = nn.Conv2d(16, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.c3 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, z):
        h = nn.functional.silu(self.n1(self.c1(z)))
        h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
        return self.c3(nn.functional.silu(self.n2(self.c2(h))))


@pytest.fixture(scope="module")
def dec():
    torch.manual_seed(0)
    return TinyDecoder().to(F64).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def z():
    return torch.randn(3, 4, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))


def full_jacobians(decode, z):
    """[N, m, d] by torch.autograd.functional.jacobian, one sample at a time (independent route)."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda t: decode(t[None])[0], zi).reshape(-1, zi.numel())
        for zi in z
    ])


@pytest.fixture(scope="module")
def J(dec, z):
    return full_jacobians(dec, z)


def gens(n, purpose="geo", seed=0, start=0):
    return [sample_generator(seed, i, purpose) for i in range(start, start + n)]


# -- jacobian_diag / influence -------------------------------------------------------------------
def test_exact_diag_equals_full_jacobian(dec, z, J):
    truth = J.square().sum(dim=1).reshape(z.shape)
    torch.testing.assert_close(jacobian_diag(dec, z, exact=True), truth, rtol=1e-12, atol=0)
    # More latent than output dims: the exact diagonal goes through reverse passes instead.
    squeeze = lambda t: nn.functional.avg_pool2d(torch.tanh(dec(t)), 4)  # noqa: E731  m = 12 < d = 64
    truth = full_jacobians(squeeze, z).square().sum(dim=1).reshape(z.shape)
    torch.testing.assert_close(jacobian_diag(squeeze, z, exact=True), truth, rtol=1e-12, atol=1e-300)


def test_hutchinson_converges_at_its_variance(dec, z, J):
    truth = J.square().sum(dim=1).reshape(z.shape)
    P = 400
    est = jacobian_diag(dec, z, n_probes=P, generator=torch.Generator().manual_seed(3))
    # Gaussian probes: (Jᵀv)_i² / G_ii ~ χ²₁, so the mean of (est/G − 1)² over entries is 2/P.
    nmse = (est / truth - 1).square().mean().item()
    assert 0.5 * 2 / P < nmse < 2.0 * 2 / P
    assert abs((est / truth).mean().item() - 1) < 4 * math.sqrt(2 / P / z[0].numel())
    again = jacobian_diag(dec, z, n_probes=P, generator=torch.Generator().manual_seed(3))
    assert torch.equal(est, again)


def test_influence_is_half_log_diag(dec, z, J):
    truth = 0.5 * torch.log(J.square().sum(dim=1).reshape(z.shape) + 1e-12)
    torch.testing.assert_close(influence(dec, z, exact=True), truth, rtol=1e-12, atol=0)
    est = influence(dec, z, n_probes=4, eps=1e-6, generator=torch.Generator().manual_seed(5))
    diag = jacobian_diag(dec, z, n_probes=4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(est, 0.5 * torch.log(diag + 1e-6), rtol=0, atol=0)


# -- singular values / distortion ------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["subspace", "block_krylov", "gkl"])
@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_singular_values_match_svdvals(dec, z, J, method, algorithm):
    truth = torch.linalg.svdvals(J)
    # Defaults: subspace K=20, p=30, q=2 (the paper's); block_krylov 11 blocks of 10 (capped at
    # d = 64); gkl blocks of 2 until every top-20 Ritz residual is ≤ 3e-3·σ.
    sv = singular_values(dec, z, method=method, algorithm=algorithm, generator=gens(3))
    assert sv.shape == (3, 20)
    assert torch.all(sv[:, :-1] >= sv[:, 1:])
    assert ((sv - truth[:, :20]).abs() / truth[:, :20]).max() < 1e-3
    # ℓ = d: the sketch spans the whole latent space, exact up to float (and O(h²) for fd) error.
    full = singular_values(dec, z, rank=64, oversample=0, power_iters=0, method=method, algorithm=algorithm,
                           block_size=64, generator=gens(3))
    torch.testing.assert_close(full, truth, rtol=1e-8, atol=0)


def test_block_krylov_matches_svdvals(dec, z, J):
    truth = torch.linalg.svdvals(J)[:, :20]
    sv = singular_values(dec, z, algorithm="block_krylov", block_size=16, power_iters=3, generator=gens(3))
    torch.testing.assert_close(sv, truth, rtol=1e-9, atol=0)  # 4 blocks of 16 span d = 64
    sv = singular_values(dec, z, algorithm="block_krylov", block_size=20, power_iters=2, generator=gens(3))
    assert ((sv - truth).abs() / truth).max() < 0.05


def test_gkl_stops_per_sample_and_counts_its_products(dec, z, J):
    truth = torch.linalg.svdvals(J)[:, :20]
    for method, rtol in (("jvp", 1e-9), ("fd", 1e-8)):
        # A tight tolerance: every sample runs until its top 20 are exact (to float / O(h²)).
        stats = {}
        sv = singular_values(dec, z, method=method, algorithm="gkl", tol=1e-11, generator=gens(3), stats=stats)
        torch.testing.assert_close(sv, truth, rtol=rtol, atol=0)
        assert stats["products"].shape == (3,) and (stats["products"] <= 2 * 64).all()
    # The default tolerance stops earlier, each sample on its own, with its residuals ≤ 3e-3·σ
    # (so, for well-separated values, errors far below that).
    stats = {}
    sv = singular_values(dec, z, algorithm="gkl", method="jvp", generator=gens(3), stats=stats)
    used = stats["products"]
    assert (used % 2 == 0).all() and (used >= 2 * 20).all() and (used < 2 * 64).all()
    assert ((sv - truth).abs() / truth).max() < 1e-3
    # Each sample alone spends the products it spent in the batch.
    for i in range(3):
        alone = {}
        singular_values(dec, z[i:i + 1], algorithm="gkl", method="jvp", generator=gens(1, start=i), stats=alone)
        assert alone["products"].tolist() == [used[i].item()]
    # The other algorithms' fixed counts: (2q+2)·ℓ; block Krylov's basis stops at d = 64 columns
    # (64 J·v, 60 Jᵀ·y) before its 11 blocks of 10.
    for kw, count in (({"algorithm": "subspace"}, 6 * 50), ({"algorithm": "block_krylov"}, 64 + 60)):
        stats = {}
        singular_values(dec, z, generator=gens(3), stats=stats, **kw)
        assert stats["products"].tolist() == [count] * 3


def test_gkl_on_an_invariant_subspace_and_a_rank_deficient_jacobian():
    z = torch.randn(2, 4, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    # An identity-like decoder: every Krylov space is invariant, each step finds no new direction.
    sv = singular_values(lambda t: 2 * t, z, algorithm="gkl", method="jvp", generator=gens(2))
    torch.testing.assert_close(sv, torch.full((2, 20), 2.0, dtype=F64), rtol=1e-12, atol=0)
    # Rank 40 < rank asked (45): the zero singular values come out as (near) zeros.
    W = torch.randn(64, 64, dtype=F64, generator=torch.Generator().manual_seed(5))
    W[:, 40:] = 0
    decode = lambda t: torch.tanh(t.flatten(1) @ W.T)  # noqa: E731
    truth = torch.linalg.svdvals(full_jacobians(decode, z))[:, :45]
    sv = singular_values(decode, z, rank=45, algorithm="gkl", method="jvp", generator=gens(2))
    # Ritz values from JᵀJ: σ_i to about eps·σ₁²/σ_i, so absolute to ~1e-9·σ₁ here.
    torch.testing.assert_close(sv[:, :40], truth[:, :40], rtol=1e-9, atol=1e-9 * truth[:, 0].max().item())
    assert (sv[:, 40:] < 1e-6 * sv[:, :1]).all()


def test_distortion_topk_is_sum_log_top_singular_values(dec, z, J):
    truth = torch.log(torch.linalg.svdvals(J)[:, :20]).sum(dim=1)
    est = distortion(dec, z, rank=20, oversample=44, power_iters=0, method="jvp", algorithm="subspace",
                     generator=gens(3))
    torch.testing.assert_close(est, truth, rtol=1e-10, atol=0)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_distortion_slq_matches_slogdet(dec, z, J, probe):
    z, J = z[:2], J[:2]
    G = J.transpose(1, 2) @ J
    truth = 0.5 * torch.linalg.slogdet(G).logabsdet
    evals, evecs = torch.linalg.eigh(G)
    L = evecs @ torch.diag_embed(evals.log()) @ evecs.transpose(1, 2)  # log G
    off2 = L.square().sum((1, 2)) - torch.diagonal(L, dim1=1, dim2=2).square().sum(1)
    P = 16
    # Trace-estimator std of ½·mean_P uᵀ(log G)u: Rademacher 2Σ_{i≠j}L_ij²; Gaussian 2‖L‖_F².
    var = 2 * off2 if probe == "rademacher" else 2 * L.square().sum((1, 2))
    std = 0.5 * (var / P).sqrt()
    # Lanczos with s = d steps: Gauss quadrature is exact, only the trace estimator errs.
    exact_q = distortion(dec, z, estimator="slq", slq_steps=64, slq_probes=P, slq_probe=probe, generator=gens(2))
    assert ((exact_q - truth).abs() < 4 * std).all(), (exact_q, truth, std)
    # ... and equals ½·mean_p u_pᵀ log(G) u_p for the same probes (drawn per sample, [P, d]).
    U = []
    for g in gens(2):
        u = torch.randn(P, 64, generator=g, dtype=F64) if probe == "gaussian" else \
            torch.randint(0, 2, (P, 64), generator=g).to(F64) * 2 - 1
        U.append(u)
    U = torch.stack(U)
    same_probes = 0.5 * torch.einsum("npi,nij,npj->np", U, L, U).mean(dim=1)
    torch.testing.assert_close(exact_q, same_probes, rtol=1e-9, atol=1e-9)
    if probe == "rademacher":
        # The defaults (16 probes, 100 Lanczos steps, capped at d = 64): exact quadrature.
        default = distortion(dec, z, estimator="slq", generator=gens(2))
        torch.testing.assert_close(default, exact_q, rtol=1e-9, atol=1e-9)
        # Fewer steps than d: Gauss quadrature of log overestimates for every probe (log's even
        # derivatives are negative), so the same probes give a larger estimate.
        for steps in (5, 10, 20):
            fewer = distortion(dec, z, estimator="slq", slq_steps=steps, slq_probes=P, slq_probe=probe,
                               generator=gens(2))
            assert (fewer > exact_q - 1e-9).all(), (steps, fewer, exact_q)


# -- batching, chunking and randomness ---------------------------------------------------------------
def test_batched_equals_one_at_a_time_and_chunk_sizes(dec, z):
    calls = {
        "diag": lambda zz, g, **kw: jacobian_diag(dec, zz, n_probes=3, generator=g, **kw),
        "sv_jvp": lambda zz, g, **kw: singular_values(dec, zz, rank=4, oversample=2, power_iters=1, method="jvp",
                                                      algorithm="subspace", generator=g, **kw),
        "sv_fd": lambda zz, g, **kw: singular_values(dec, zz, rank=4, oversample=2, power_iters=1, method="fd",
                                                     algorithm="subspace", generator=g, **kw),
        "bk": lambda zz, g, **kw: singular_values(dec, zz, rank=4, block_size=3, power_iters=2,
                                                  algorithm="block_krylov", generator=g, **kw),
        "gkl": lambda zz, g, **kw: singular_values(dec, zz, rank=4, algorithm="gkl", method="jvp", generator=g, **kw),
        "gkl_fd": lambda zz, g, **kw: singular_values(dec, zz, rank=4, block_size=1, algorithm="gkl",
                                                      vjp_mode=kw.pop("vjp_mode", "loop"), generator=g, **kw),
        "slq": lambda zz, g, **kw: distortion(dec, zz, estimator="slq", slq_probes=3, slq_steps=5, generator=g, **kw),
    }
    for name, f in calls.items():
        batched = f(z, gens(3))
        single = torch.cat([f(z[i:i + 1], gens(1, start=i)) for i in range(3)])
        torch.testing.assert_close(batched, single, rtol=1e-10, atol=0, msg=name)
        for kw in ({"max_batch": 2}, {"vjp_mode": "fold", "max_batch": 2}):
            torch.testing.assert_close(f(z, gens(3), **kw), batched, rtol=1e-10, atol=0, msg=f"{name} {kw}")
        # One shared generator: draws go sample by sample, so chunking does not change them.
        one = f(z, torch.Generator().manual_seed(9))
        torch.testing.assert_close(f(z, torch.Generator().manual_seed(9), max_batch=1), one, rtol=1e-10, atol=0)


def test_float32_runs_and_agrees(dec, z, J):
    d32, z32 = TinyDecoder().eval(), z.float()
    d32.load_state_dict({k: v.float() for k, v in dec.state_dict().items()})
    est = jacobian_diag(d32, z32, exact=True)
    assert est.dtype == torch.float32
    torch.testing.assert_close(est.double(), J.square().sum(1).reshape(z.shape), rtol=1e-4, atol=0)
    truth = torch.linalg.svdvals(J)[:, :5]
    for method in ("jvp", "fd"):  # fd's default step for float32 is eps^(1/3) ≈ 5e-3
        sv = singular_values(d32, z32, rank=5, oversample=59, power_iters=0, method=method,
                                 algorithm="subspace", generator=gens(3))
        torch.testing.assert_close(sv.double(), truth, rtol=1e-3, atol=0)


# -- the real diffusers AutoencoderKL decoder (GroupNorm, SiLU, attention mid-block) ---------------
@pytest.fixture(scope="module")
def vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=8)
    return vae.to(F64).eval().requires_grad_(False)


def test_autoencoderkl_jvp_and_fd_match_full_jacobian(vae):
    decode = lambda t: vae.decode(t).sample  # noqa: E731  (vae found through the closure)
    zz = torch.randn(2, 4, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    truth = torch.linalg.svdvals(full_jacobians(decode, zz))[:, :6]
    out = {}
    for method in ("jvp", "fd"):
        out[method] = singular_values(decode, zz, rank=6, oversample=58, power_iters=0, method=method,
                                      algorithm="subspace", generator=gens(2))
        torch.testing.assert_close(out[method], truth, rtol=1e-7, atol=0)
    torch.testing.assert_close(out["jvp"], out["fd"], rtol=1e-7, atol=0)
    names = {type(m.processor).__name__ for m in vae.modules() if hasattr(m, "set_processor")}
    assert names == {"ContiguousAttnProcessor"}
    d = distortion(decode, zz, rank=4, oversample=2, power_iters=1, generator=gens(2))
    assert d.shape == (2,) and torch.isfinite(d).all()


def test_prepare_decoder_for_jvp_is_idempotent_and_picklable(vae):
    prepare_decoder_for_jvp(vae)
    procs = [m.processor for m in vae.modules() if hasattr(m, "set_processor")]
    assert prepare_decoder_for_jvp(vae) is vae
    assert [m.processor for m in vae.modules() if hasattr(m, "set_processor")] == procs
    copy = pickle.loads(pickle.dumps(vae))
    zz = torch.randn(1, 4, 4, 4, dtype=F64)
    torch.testing.assert_close(copy.decode(zz).sample, vae.decode(zz).sample)
    assert prepare_decoder_for_jvp(nn.Linear(2, 2)) is not None  # no attention: unchanged


# -- errors ---------------------------------------------------------------------------------------
def test_non_finite_decoder_names_the_samples(dec, z):
    bad = z.clone()
    bad[1, 0, 0, 0] = -20.0
    nan_out = lambda t: dec(t) * torch.sqrt(t[:, :1, :1, :1] + 10)  # noqa: E731  NaN for sample 1
    with pytest.raises(NonFiniteError, match=r"1 sample\(s\): 1$"):
        jacobian_diag(nan_out, bad)
    with pytest.raises(NonFiniteError, match=r"sample\(s\): 1$"):
        singular_values(nan_out, bad, rank=2, oversample=0, power_iters=0, method="fd")
    edge = z.clone()
    edge[2, 0, 0, 0] = -10.0  # output finite, derivative of sqrt at 0 infinite
    with pytest.raises(NonFiniteError, match=r"sample\(s\): 2$"):
        jacobian_diag(nan_out, edge)
    with pytest.raises(NonFiniteError, match=r"sample\(s\): 2$"):
        singular_values(nan_out, edge, rank=2, oversample=0, power_iters=0)


@pytest.mark.parametrize("call, message", [
    (lambda d, z: jacobian_diag(d, z[0, 0, 0]), "batch-first"),
    (lambda d, z: jacobian_diag(d, z.long()), "floating point"),
    (lambda d, z: jacobian_diag(d, z[:0]), "empty"),
    (lambda d, z: jacobian_diag(d, z.half()), "float32 or float64"),
    (lambda d, z: jacobian_diag(d, z[:, 0]), "decode failed on z of shape"),
    (lambda d, z: jacobian_diag(d, z, n_probes=0), "n_probes"),
    (lambda d, z: influence(d, z, n_probes=0), "n_probes"),
    (lambda d, z: jacobian_diag(d, z, generator=gens(2)), "2 generators for 3 samples"),
    (lambda d, z: singular_values(d, z, rank=65), "exceeds the latent dimension d=64"),
    (lambda d, z: singular_values(d, z, method="bogus"), "method"),
    (lambda d, z: singular_values(d, z, h=-1.0, method="fd"), "h must be"),
    (lambda d, z: singular_values(d, z, algorithm="lanczos"), "algorithm"),
    (lambda d, z: singular_values(d, z, algorithm="gkl", tol=0.0), "tol must be"),
    (lambda d, z: singular_values(d, z, algorithm="block_krylov", block_size=2, power_iters=8), "spans block_size"),
    (lambda d, z: distortion(d, z, algorithm="gkl", tol=1.5), "tol must be"),
    (lambda d, z: distortion(d, z, estimator="exact"), "estimator"),
    (lambda d, z: distortion(d, z, estimator="slq", slq_probes=0), "slq_probes"),
    (lambda d, z: jacobian_diag(lambda t: d(t).sum(), z), "batch-first tensor"),
])
def test_bad_inputs_raise_input_error(dec, z, call, message):
    with pytest.raises(InputError, match=message):
        call(dec, z)


def test_output_shape_is_measured_once_per_decoder_and_latent_shape():
    import gc

    from diffaudit.geometry._linearize import _SHAPES, output_shape

    class Dec(torch.nn.Module):
        calls = 0

        def forward(self, z):
            Dec.calls += 1
            return torch.cat([z, z], dim=1)

        def decode(self, z):
            return self(z)

    dec = Dec()
    z = torch.randn(3, 2, 4, 4)
    assert output_shape(dec.decode, z) == (4, 4, 4) and output_shape(dec.decode, z) == (4, 4, 4)
    assert Dec.calls == 1  # the bound method is remembered on its module
    assert output_shape(dec.decode, torch.randn(2, 2, 3, 3)) == (4, 3, 3) and Dec.calls == 2
    assert output_shape(dec.decode, z.double()) == (4, 4, 4) and Dec.calls == 3
    other = Dec()
    output_shape(other.decode, z)
    assert Dec.calls == 4  # another decoder is measured anew
    n = len(_SHAPES)
    del other
    gc.collect()
    assert len(_SHAPES) == n - 1  # the cache does not keep a decoder alive
    # Influence and distortion of a chunk make no batch-1 shape forward once the shape is known.
    from diffaudit import geometry as geo

    sizes = []
    dec.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    geo.influence(dec.decode, z, n_probes=2)
    geo.distortion(dec.decode, z, rank=2)
    assert sizes and 1 not in sizes
