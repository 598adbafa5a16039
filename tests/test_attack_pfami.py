"""PFAMI vs a float64 re-derivation of the SimA authors' ``PFAMI`` attacker (github
mx-ethan-rao/SimA, DDPM/components.py), an analytic memorising model, and a latent model whose
neighbours are re-encoded crops of the image."""
import math

import numpy as np
import pytest
import torch

from diffaudit.attacks import ATTACKS, attack_sweep
from diffaudit.attacks.pfami import DEFAULT_STRENGTHS, center_crop, pfami, pfami_inputs, pfami_timesteps
from diffaudit.errors import InputError
from diffaudit.models.tiny import tiny_unet2d

T = 1000


def table():
    return torch.cumprod(1 - torch.linspace(1e-4, 2e-2, T, dtype=torch.float64), 0).float()


class TinyUNet64:
    """A tiny diffusers UNet in float64 (pixel space: no encode/decode)."""

    def __init__(self, channels=4, size=8):
        self.unet = tiny_unet2d(in_channels=channels, sample_size=size).double()
        self.alphas_cumprod = table()

    @torch.no_grad()
    def eps(self, x, t, cond=None):
        return self.unet(x, t).sample


def bilinear_np(img, out_h, out_w):
    """Bilinear resize [C, h, w] → [C, out_h, out_w] with half-pixel centres (align_corners=False),
    source coordinates clamped at 0 and the last row/column — written out from the formula."""
    c, h, w = img.shape

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = taps(h, out_h)
    x0, x1, wx = taps(w, out_w)
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bot = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bot * wy[:, None]


def crop_np(img, strength):
    """The authors' centre crop: side int(h·λ), offset (h − side)//2, resized back to h × w."""
    c, h, w = img.shape
    side = int(h * strength)
    top, left = (h - side) // 2, (w - side) // 2
    return bilinear_np(img[:, top:top + side, left:left + side], h, w)


def reference_pfami(eps_getter, x, noise_level, noise, timesteps, lambdas):
    """The authors' PFAMI, re-derived: per (perturbation k, t) a fresh noise draw (here noise(k, t);
    k = 0 the image itself), L = mean over (C, H, W) of (ε̂ − ε)² at √ᾱ x + √(1−ᾱ) ε; the base mean
    over t minus each crop's mean over t, averaged over the crops → [B]."""
    def loss(xx, k, t):
        e = noise(k, t)
        a = float(noise_level[t])
        return ((eps_getter(math.sqrt(a) * xx + math.sqrt(1 - a) * e, t) - e) ** 2).mean(dim=(1, 2, 3))

    base = torch.stack([loss(x, 0, t) for t in timesteps]).mean(0)
    neigh = []
    for k, lam in enumerate(lambdas, start=1):
        xp = torch.stack([torch.from_numpy(crop_np(img.numpy(), lam)) for img in x])
        neigh.append(torch.stack([loss(xp, k, t) for t in timesteps]).mean(0))
    return (base.unsqueeze(0) - torch.stack(neigh)).mean(0)


def keyed_noise(shape, seed=3):
    table_ = {}

    def noise(k, t):
        if (k, t) not in table_:
            g = torch.Generator().manual_seed(seed * 100003 + 1009 * k + t)
            table_[k, t] = torch.randn(shape, generator=g, dtype=torch.float64)
        return table_[k, t]
    return noise


def test_center_crop_is_the_bilinear_formula():
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    for lam in DEFAULT_STRENGTHS:
        got = center_crop(x[:, :, :12, :12], lam).numpy()
        want = np.stack([crop_np(img, lam) for img in x[:, :, :12, :12].numpy()])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # λ from the reference's float32 linspace: int(20·0.7) is 13 there, not 14
    assert DEFAULT_STRENGTHS[-1] == float(np.float32(0.7)) and int(20 * DEFAULT_STRENGTHS[-1]) == 13
    np.testing.assert_allclose(DEFAULT_STRENGTHS, np.linspace(0.95, 0.70, 10), atol=1e-7)
    assert pfami_timesteps(450, 50, T) == list(range(0, 451, 50))


@pytest.mark.parametrize("max_rows", [None, 7, 12, 1000])  # one set per call, 2, 4, all 11 sets per call
def test_pfami_equals_the_authors_pfami_logic(max_rows):
    m = TinyUNet64()
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    noise = keyed_noise(x.shape)
    calls = []
    eps = m.eps
    m.eps = lambda xx, t, cond=None: calls.append(xx.shape[0]) or eps(xx, t)

    def getter(xx, t):
        return eps(xx, torch.full((xx.shape[0],), t, dtype=torch.long))

    want = reference_pfami(getter, x, m.alphas_cumprod.double(), noise, range(0, 451, 50), DEFAULT_STRENGTHS)
    got = pfami(m, x, 450, noise_fn=noise, max_rows=max_rows)
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)
    per_call = max(1, (max_rows or 3) // 3)
    assert max(calls) == 3 * min(per_call, 11) and sum(calls) == 3 * 11 * 10  # 11 inputs, 10 t


def test_pfami_repeats_a_tensor_condition_for_stacked_inputs():
    """A conditional model sees each sample's own condition in every stacked set."""
    m = TinyUNet64()
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    cond = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    class Conditional:
        alphas_cumprod = m.alphas_cumprod

        def eps(self, xx, t, c):
            return m.eps(xx, t) * c.view(-1, 1, 1, 1)

    noise = keyed_noise(x.shape)
    one = pfami(Conditional(), x, 100, cond, noise_fn=noise)
    stacked = pfami(Conditional(), x, 100, cond, noise_fn=noise, max_rows=100)
    torch.testing.assert_close(stacked, one, rtol=1e-12, atol=1e-14)


class Memorising:
    """ε̂(x_t, t) = (x_t − √ᾱ_t x*)/√(1−ᾱ_t): the exact denoiser of a model that learned only x*.
    Its loss at x is ᾱ_t/(1−ᾱ_t) · mean (x − x*)², whatever the noise."""

    def __init__(self, x_star):
        self.x_star = x_star
        self.alphas_cumprod = table()

    def eps(self, x, t, cond=None):
        a = self.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.x_star) / (1 - a).sqrt()


def test_pfami_on_a_memorising_model_matches_the_closed_form():
    g = torch.Generator().manual_seed(1)
    x_star = torch.randn(1, 1, 12, 12, generator=g, dtype=torch.float64)
    held = torch.randn(2, 1, 12, 12, generator=g, dtype=torch.float64)
    x = torch.cat([x_star, held])
    m = Memorising(x_star)
    ts = range(0, 201, 50)
    r = np.array([float(m.alphas_cumprod[t]) / (1 - float(m.alphas_cumprod[t])) for t in ts])
    xs = x_star[0].numpy()
    want = []
    for img in x.numpy():
        base = ((img - xs) ** 2).mean()
        neigh = np.mean([((crop_np(img, lam) - xs) ** 2).mean() for lam in DEFAULT_STRENGTHS])
        want.append(r.mean() * (base - neigh))
    got = pfami(m, x, 200, sample_ids=["a", "b", "c"], seed=5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)
    assert got[0] < 0 and got[0] < got[1:].min()  # the memorised sample scores as the member


class _Codec:
    """A latent model stand-in: E(x) = 2·avgpool(x) over 2×2, D(z) = nearest upsampling of z/2."""

    def __init__(self, inner):
        self.inner, self.alphas_cumprod = inner, inner.alphas_cumprod
        self.encoded = 0

    def eps(self, x, t, cond=None):
        return self.inner.eps(x, t)

    def encode(self, x):
        self.encoded += x.shape[0]
        return 2 * torch.nn.functional.avg_pool2d(x, 2)

    def decode(self, z):
        return torch.nn.functional.interpolate(z / 2, scale_factor=2, mode="nearest")


def test_latent_model_perturbs_the_image_and_reencodes_it():
    m = _Codec(TinyUNet64())
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    z = m.encode(x)
    noise = keyed_noise(z.shape)
    lams = DEFAULT_STRENGTHS[::3]
    ts = range(0, 101, 50)

    def getter(xx, t):
        return m.eps(xx, torch.full((xx.shape[0],), t, dtype=torch.long))

    def by_hand(inputs):
        def loss(xx, k, t):
            e = noise(k, t)
            a = float(m.alphas_cumprod[t])
            return ((getter(math.sqrt(a) * xx + math.sqrt(1 - a) * e, t) - e) ** 2).mean((1, 2, 3))
        base = torch.stack([loss(inputs[0], 0, t) for t in ts]).mean(0)
        return torch.stack([base - torch.stack([loss(n, k, t) for t in ts]).mean(0)
                            for k, n in enumerate(inputs[1:], start=1)]).mean(0)

    def crops(imgs):
        return [torch.from_numpy(np.stack([crop_np(i, lam) for i in imgs.numpy()])) for lam in lams]

    got = pfami(m, z, 100, images=x, noise_fn=noise, strengths=lams)
    torch.testing.assert_close(got, by_hand([z] + [m.encode(c) for c in crops(x)]), rtol=1e-11, atol=1e-13)
    # without the images, the decoded latent is the image: E(D(z)) and E(crop(D(z)))
    xd = m.decode(z)
    torch.testing.assert_close(pfami(m, z, 100, noise_fn=noise, strengths=lams),
                               by_hand([m.encode(xd)] + [m.encode(c) for c in crops(xd)]), rtol=1e-11, atol=1e-13)
    # space="latent" crops z itself (the SimA authors' latent-diffusion variant)
    torch.testing.assert_close(pfami(m, z, 100, noise_fn=noise, strengths=lams, space="latent"),
                               by_hand([z] + crops(z)), rtol=1e-11, atol=1e-13)
    # the identity "perturbation" fluctuates by exactly 0 in image space
    same = pfami(m, z, 100, images=x, noise_fn=lambda k, t: noise(0, t), strengths=(1.0,))
    torch.testing.assert_close(same, torch.zeros(2, dtype=torch.float64), rtol=0, atol=0)
    m.encoded = 0
    pfami_inputs(m, z, lams, images=x)
    assert m.encoded == 2 * (1 + len(lams))  # one encode per sample and input


def test_latent_diffusion_adapter_end_to_end():
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_autoencoder_kl, tiny_scheduler

    m = LatentDiffusion(tiny_unet2d(in_channels=4, sample_size=8), tiny_scheduler(),
                        vae=tiny_autoencoder_kl(attention=False))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = m.encode(x)
    ids = ["img-0", "img-1"]
    got = pfami(m, z, 50, images=x, sample_ids=ids, seed=1, strengths=(0.9, 0.75))
    assert got.shape == (2,) and torch.isfinite(got).all()
    # keyed noise: a sample's value does not depend on the batch around it
    torch.testing.assert_close(pfami(m, z[1:], 50, images=x[1:], sample_ids=ids[1:], seed=1, strengths=(0.9, 0.75)),
                               got[1:], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(pfami(m, z, 50, images=x, sample_ids=ids, seed=2, strengths=(0.9, 0.75)), got)


def test_sweep_packs_the_chains_and_matches_the_function():
    m = TinyUNet64()
    calls = []
    inner = m.eps
    m.eps = lambda x, t, cond=None: calls.append(x.shape[0]) or inner(x, t, cond)
    z = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    ids = [10, 11, 12]
    out = list(attack_sweep(m, z, {"pfami": [100]}, attacks=("pfami",), sample_ids=ids, seed=4))
    assert [(a, t) for a, t, _ in out] == [("pfami", 100)]
    # 11 inputs × 3 timesteps, the 11 chains packed: one call of 33 rows per timestep
    assert calls == [33] * 3
    torch.testing.assert_close(out[0][2], pfami(m, z, 100, sample_ids=ids, seed=4), rtol=1e-10, atol=1e-13)
    with pytest.raises(InputError, match="sample_ids"):
        list(attack_sweep(m, z, {"pfami": [100]}, attacks=("pfami",)))


def test_registered_spec():
    spec = ATTACKS["pfami"]
    assert spec.fn is pfami and spec.display_name == "PFAMI" and "perturbation" in spec.needs
    assert spec.calls_per_t == 110  # (10 crops + the sample) × 10 timesteps
    assert spec.output == "scalar" and spec.grid == (450,) and spec.job is not None


def test_spec_output_and_grid_fields_and_the_audit_grid():
    from diffaudit.attacks import AttackSpec
    from diffaudit.audit import AuditConfig

    assert [ATTACKS[a].output for a in ("sima", "pian", "pfami", "clid", "gsa")] == [
        "vector", "vector", "scalar", "signed", "features"]
    assert ATTACKS["sima"].grid is None and AttackSpec("x", pfami, 1, grid=[0, 50]).grid == (0, 50)
    with pytest.raises(InputError, match="output must be one of"):
        AttackSpec("x", pfami, 1, output="matrix")
    with pytest.raises(InputError, match="grid must be"):
        AttackSpec("x", pfami, 1, grid=())
    with pytest.raises(InputError, match="grid must be"):
        AttackSpec("x", pfami, 1, grid=(10, -1))
    for name in ("pfami", "clid", "gsa"):  # the audit runs them at their own grid (tests/test_audit_new_attacks.py)
        assert AuditConfig(attacks=("sima", name)).grid(name) == list(ATTACKS[name].grid)
    assert AuditConfig(attacks=("sima", "pian")).grid("pian")[0] == 10  # first_t = 1 on the stride-10 grid


def test_pfami_errors():
    m = TinyUNet64()
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="sample_ids"):
        pfami(m, z, 100)
    with pytest.raises(InputError, match="2 samples"):
        pfami(m, z, 100, sample_ids=[1])
    with pytest.raises(InputError, match="strengths"):
        pfami(m, z, 100, sample_ids=[1, 2], strengths=(0.9, 1.5))
    with pytest.raises(InputError, match="step"):
        pfami(m, z, 100, sample_ids=[1, 2], step=0)
    with pytest.raises(InputError, match="t for pfami"):
        pfami(m, z, T, sample_ids=[1, 2])
    with pytest.raises(InputError, match="space"):
        pfami(m, z, 100, sample_ids=[1, 2], space="pixels")
    with pytest.raises(InputError, match="encode"):
        pfami(m, z, 100, sample_ids=[1, 2], space="image")
    with pytest.raises(InputError, match="noise_fn"):
        pfami(m, z, 100, noise_fn=lambda k, t: torch.zeros(1))
    with pytest.raises(InputError, match="no pixel"):
        center_crop(z, 0.05)
