"""Batched == per-sample, and the same numbers whatever the batch or chunk size (issue 5).

Geometry runs on a tiny float64 AutoencoderKL decoder (attention mid-block kept) so that
float tolerance is tight and any mixing of samples would show; the per-sample references are
brute-force loops written here (Algorithm 2 for influence), or the single-call attack functions.
"""
import pytest
import torch

from diffaudit import geometry, masking
from diffaudit.attacks import attack_sweep, loss, loss_noise, pia, secmi, sima, statistic
from diffaudit.rng import sample_generator

N = 5


@pytest.fixture(scope="module")
def decode():
    from diffaudit.models.tiny import tiny_autoencoder_kl

    vae = tiny_autoencoder_kl(block_out_channels=(4, 8), latent_channels=2, attention=True).double()
    return lambda z: vae.decode(z / vae.config.scaling_factor).sample


@pytest.fixture(scope="module")
def z():
    return torch.randn(N, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def gens(purpose, ids=range(N)):
    return [sample_generator(0, i, purpose) for i in ids]


# -- influence ---------------------------------------------------------------------------------

def algorithm2(decode, z, n_mc, generators, eps=1e-12):
    """The paper's Algorithm 2: per sample one forward, one VJP per probe (probes drawn per sample)."""
    out = []
    for n in range(z.shape[0]):
        zn = z[n:n + 1].clone().requires_grad_(True)
        x = decode(zn)
        probes = torch.randn((n_mc, *x.shape[1:]), generator=generators[n], dtype=z.dtype)
        acc = sum(torch.autograd.grad(x, zn, probes[j:j + 1], retain_graph=True)[0] ** 2 for j in range(n_mc))
        out.append(0.5 * torch.log(acc / n_mc + eps))
    return torch.cat(out)


def test_influence_batched_equals_algorithm2_and_any_chunking(decode, z):
    ref = algorithm2(decode, z, 4, gens("influence"))
    for kw in ({}, {"max_batch": 1}, {"max_batch": 3}, {"vjp_mode": "fold"}, {"vjp_mode": "fold", "max_batch": 6}):
        got = geometry.influence(decode, z, n_probes=4, generator=gens("influence"), **kw)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9, msg=f"influence with {kw}")
    # a sample alone (its own generator) gets the numbers it gets inside the batch
    for i in (0, N - 1):
        alone = geometry.influence(decode, z[i:i + 1], n_probes=4, generator=gens("influence", [i]))
        torch.testing.assert_close(alone, ref[i:i + 1], rtol=1e-9, atol=1e-9)


# -- distortion --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_distortion_batched_equals_per_sample(decode, z, method):
    kw = dict(rank=4, oversample=4, power_iters=1, method=method)
    full = geometry.distortion(decode, z, generator=gens("distortion"), **kw)
    for i in (0, N - 1):  # a sample alone, with its own generator
        alone = geometry.distortion(decode, z[i:i + 1], generator=gens("distortion", [i]), **kw)
        torch.testing.assert_close(alone, full[i:i + 1], rtol=1e-9, atol=1e-9)
    for extra in ({"max_batch": 2}, {"vjp_mode": "fold"}):
        got = geometry.distortion(decode, z, generator=gens("distortion"), **kw, **extra)
        torch.testing.assert_close(got, full, rtol=1e-9, atol=1e-9, msg=f"{method} with {extra}")


@pytest.mark.parametrize("options", [dict(algorithm="block_krylov", block_size=3, power_iters=2),
                                     dict(estimator="slq", slq_probes=2, slq_steps=4)])
def test_distortion_variants_do_not_depend_on_batching(decode, z, options):
    full = geometry.distortion(decode, z, rank=4, generator=gens("distortion"), **options)
    alone = geometry.distortion(decode, z[2:3], rank=4, generator=gens("distortion", [2]), **options)
    chunked = geometry.distortion(decode, z, rank=4, generator=gens("distortion"), max_batch=2, **options)
    torch.testing.assert_close(alone, full[2:3], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(chunked, full, rtol=1e-9, atol=1e-9)


def test_singular_values_match_full_jacobian_per_sample(decode, z):
    """Batched randomized SVD with ℓ = d is exact: compare with svdvals of each sample's Jacobian."""
    sv = geometry.singular_values(decode, z[:2], rank=5, oversample=27, power_iters=1, method="jvp",
                                  algorithm="subspace", generator=gens("svd", [0, 1]))
    for i in range(2):
        J = torch.autograd.functional.jacobian(lambda v: decode(v).flatten(), z[i:i + 1]).reshape(-1, 32)
        torch.testing.assert_close(sv[i], torch.linalg.svdvals(J)[:5], rtol=1e-8, atol=1e-10)


# -- attack sweep ------------------------------------------------------------------------------

GRIDS = {"sima": [0, 20, 30], "loss": [10, 30], "pia": [10, 20], "secmi": [0, 10, 15, 20]}


@pytest.fixture(scope="module")
def model():
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_scheduler, tiny_unet2d

    return LatentDiffusion(unet=tiny_unet2d(in_channels=2, sample_size=4), scheduler=tiny_scheduler())


def sweep(model, z, ids, max_batch):
    return {(a, t): v for a, t, v in attack_sweep(model, z, GRIDS, sample_ids=ids, seed=7, max_batch=max_batch)}


def test_attack_sweep_same_for_any_batching_and_equal_to_single_calls(model):
    z = torch.randn(N, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    ids = [f"img{i}" for i in range(N)]
    ref = sweep(model, z, ids, max_batch=1000)
    assert set(ref) == {(a, t) for a, ts in GRIDS.items() for t in ts}
    tol = dict(rtol=1e-5, atol=1e-5)  # float32 UNet: batch size changes the conv's rounding only
    for mb in (1, 3, 7):
        got = sweep(model, z, ids, mb)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], **tol, msg=f"{key} with max_batch={mb}")
    perm = [3, 0, 4, 1, 2]  # another order, another batch: the rows follow their sample ids
    got = sweep(model, z[perm], [ids[i] for i in perm], max_batch=4)
    alone = sweep(model, z[2:3], ids[2:3], max_batch=1000)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key][perm], **tol)
        torch.testing.assert_close(alone[key], ref[key][2:3], **tol)
    for t in GRIDS["sima"]:
        torch.testing.assert_close(ref["sima", t], sima(model, z, t), **tol)
    for t in GRIDS["loss"]:
        torch.testing.assert_close(ref["loss", t], loss(model, z, t, loss_noise(z.shape[1:], ids, 7, t)), **tol)
    for t in GRIDS["pia"]:
        torch.testing.assert_close(ref["pia", t], pia(model, z, t), **tol)
    for t in GRIDS["secmi"]:
        torch.testing.assert_close(ref["secmi", t], secmi(model, z, t, interval=10), **tol)


# -- masked statistics -------------------------------------------------------------------------

def test_masked_statistics_batched_equal_per_sample_and_brute_force():
    g = torch.Generator().manual_seed(5)
    v, infl = torch.randn(N, 2, 4, 4, generator=g), torch.randn(N, 2, 4, 4, generator=g)
    ks, p = [0, 25, 40, 90], 4
    full = masking.masked_statistics(v, infl, ks, p)
    for i in range(N):
        torch.testing.assert_close(masking.masked_statistics(v[i:i + 1], infl[i:i + 1], ks, p), full[i:i + 1])
    brute = torch.stack([statistic(v, p, mask=masking.influence_mask(infl, k)) for k in ks], dim=1)
    torch.testing.assert_close(full, brute, rtol=1e-5, atol=1e-6)
    # random controls from per-sample generators: the same masks alone or in a batch
    batch = masking.random_mask(v.shape, 40, gens("random@40"))
    for i in range(N):
        assert torch.equal(masking.random_mask(v[i:i + 1].shape, 40, gens("random@40", [i])), batch[i:i + 1])


def test_audit_mask_bank_batched_equals_per_sample():
    """The audit's mask bank (influence, reverse, random, channel-matched) keyed by sample key."""
    from diffaudit.audit import AuditConfig
    from diffaudit.audit.plan import mask_bank
    from diffaudit.audit.run import build_masks

    infl = torch.randn(N, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    keys = [f"k{i}" for i in range(N)]
    bank = mask_bank(AuditConfig(n_random=2, k_sweep=(0, 40, 80)))
    full = build_masks(infl, keys, bank, seed=1)
    for i in range(N):
        assert torch.equal(build_masks(infl[i:i + 1], keys[i:i + 1], bank, seed=1), full[i:i + 1])
