"""Frequency analyses (§4.4, App. F) against plain numpy FFT loops."""
import numpy as np
import pytest
import torch

from diffaudit.analysis.frequency import (
    band_energy,
    default_radius,
    energy_correlation,
    distortion_frequency_correlation,
    hf_filtered_statistic,
    highfreq_filter,
)
from diffaudit.errors import InputError


@pytest.mark.parametrize("side,r", [(32, 5), (64, 10), (256, 40), (16, 3), (28, 4)])
def test_default_radius_reproduces_paper(side, r):
    assert default_radius(side) == r


def _brute_band_energy(x, r):
    n, c, h, w = x.shape
    low, high = np.zeros(n), np.zeros(n)
    for i in range(n):
        for ch in range(c):
            f = np.fft.fftshift(np.fft.fft2(x[i, ch]))
            for u in range(h):
                for v in range(w):
                    if (u - h // 2) ** 2 + (v - w // 2) ** 2 <= r * r:
                        low[i] += abs(f[u, v])
                    else:
                        high[i] += abs(f[u, v])
    return low, high


@pytest.mark.parametrize("shape,r", [((3, 2, 16, 16), None), ((2, 3, 15, 17), 4), ((2, 1, 8, 8), 0)])
def test_band_energy_matches_loop(shape, r):
    x = np.random.default_rng(0).normal(size=shape)
    low, high = band_energy(x, radius=r)
    bl, bh = _brute_band_energy(x, default_radius(*shape[-2:]) if r is None else r)
    np.testing.assert_allclose(low, bl, rtol=1e-10)
    np.testing.assert_allclose(high, bh, rtol=1e-10)


def test_band_energy_layouts_agree():
    x = np.random.default_rng(1).integers(0, 256, size=(3, 12, 12, 3)).astype(np.uint8)
    a = band_energy(x, layout="NHWC")
    b = band_energy(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(a, b)
    g = band_energy(x[..., 0])  # [N, H, W]
    np.testing.assert_allclose(g, band_energy(x[..., :1], layout="NHWC"))


def test_correlation_finds_planted_hf_link():
    rng = np.random.default_rng(0)
    n = 120
    amp = rng.uniform(0.1, 1.0, n)
    smooth = np.ones((n, 1, 16, 16)) * rng.normal(size=(n, 1, 1, 1))
    imgs = smooth + amp[:, None, None, None] * rng.normal(size=(n, 1, 16, 16))  # HF noise ∝ amp
    dist = amp + 0.02 * rng.normal(size=n)
    out = distortion_frequency_correlation(dist, imgs, n_boot=400, seed=1)
    low, high = band_energy(imgs)
    assert out["r_hf"] == pytest.approx(np.corrcoef(dist, high)[0, 1], abs=1e-12)
    assert out["r_lf"] == pytest.approx(np.corrcoef(dist, low)[0, 1], abs=1e-12)
    assert out["r_hf"] > 0.9 and out["r_hf_ci"][0] > 0.8
    lo, hi = out["r_lf_ci"]
    assert lo <= out["r_lf"] <= hi
    # Percentile bootstrap CI of r is close to Fisher's z interval for this n.
    z, se = np.arctanh(out["r_lf"]), 1 / np.sqrt(n - 3)
    assert hi - lo == pytest.approx(np.tanh(z + 1.96 * se) - np.tanh(z - 1.96 * se), rel=0.35)
    assert out["radius"] == 3 and out["n"] == n
    assert distortion_frequency_correlation(dist, imgs, n_boot=50, seed=1) == distortion_frequency_correlation(
        dist, imgs, n_boot=50, seed=1
    )


def test_correlation_constant_input_is_nan_with_note():
    imgs = np.random.default_rng(0).normal(size=(5, 1, 8, 8))
    out = distortion_frequency_correlation(np.ones(5), imgs, n_boot=10)
    assert np.isnan(out["r_lf"]) and "constant" in out["note"]


def _brute_filter(x, r, s):
    h, w = x.shape
    f = np.fft.fft2(x)
    for u in range(h):
        for v in range(w):
            fu = u if u <= (h - 1) // 2 else u - h
            fv = v if v <= (w - 1) // 2 else v - w
            if np.sqrt(fu * fu + fv * fv) > r:
                f[u, v] *= s
    return np.fft.ifft2(f).real


@pytest.mark.parametrize("h,w,r,s", [(8, 8, 2, 0.3), (9, 12, 3, 0.0), (16, 16, 3, 2.0)])
def test_highfreq_filter_matches_loop(h, w, r, s):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    got = highfreq_filter(x, r, s)
    for i in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[i, c].numpy(), _brute_filter(x[i, c].numpy(), r, s), atol=1e-12)


def test_highfreq_filter_limits():
    x = torch.randn(2, 1, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(highfreq_filter(x, 3, 1.0), x)  # scale 1: identity
    torch.testing.assert_close(highfreq_filter(x, 100, 0.0), x)  # radius past the corner: identity
    dc = highfreq_filter(x, 0, 0.0)  # keep DC only: the image mean everywhere
    torch.testing.assert_close(dc, x.mean(dim=(-2, -1), keepdim=True).expand_as(x))


@pytest.mark.parametrize("p", [2, 4])
def test_hf_filtered_statistic_matches_loop(p):
    a, b = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    got = hf_filtered_statistic(a, b, radius=2, scale=0.5, p=p)
    for i in range(3):
        fa = np.stack([_brute_filter(a[i, c].numpy(), 2, 0.5) for c in range(2)])
        fb = np.stack([_brute_filter(b[i, c].numpy(), 2, 0.5) for c in range(2)])
        assert got[i].item() == pytest.approx(np.sum(np.abs(fa - fb) ** p) ** (1 / p), rel=1e-10)


def test_hf_filtered_statistic_filters_the_difference_once():
    """F is linear: Σ|F(a − b)|² (one FFT pair) equals Σ|F(a) − F(b)|² (two), in float64."""
    a, b = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    two = (highfreq_filter(a, 2, 0.3) - highfreq_filter(b, 2, 0.3)).flatten(1).pow(2).sum(1)
    got = hf_filtered_statistic(a, b, radius=2, scale=0.3, power=True)
    torch.testing.assert_close(got, two, rtol=1e-12, atol=0)
    torch.testing.assert_close(hf_filtered_statistic(a, b, radius=2, scale=0.3), two.sqrt(), rtol=1e-12, atol=0)
    assert hf_filtered_statistic(a.float(), b.float(), radius=2, scale=0.3).dtype == torch.float64


def test_hf_statistic_is_differentiable():
    a = torch.randn(2, 1, 8, 8, requires_grad=True)
    hf_filtered_statistic(a, torch.zeros(2, 1, 8, 8), radius=2, scale=0.1).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_bad_inputs():
    with pytest.raises(InputError, match="same|differ"):
        hf_filtered_statistic(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))
    with pytest.raises(InputError, match="N, C, H, W"):
        hf_filtered_statistic(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(InputError, match="images"):
        band_energy(np.zeros((4, 4)))
    with pytest.raises(InputError, match="5 values but images has 4"):
        distortion_frequency_correlation(np.zeros(5), np.zeros((4, 8, 8)))


def test_energy_correlation_is_the_image_version_on_band_energies():
    rng = np.random.default_rng(2)
    imgs, dist = rng.normal(size=(30, 1, 8, 8)), rng.normal(size=30)
    low, high = band_energy(imgs, radius=2)
    a = energy_correlation(dist, low, high, n_boot=200, seed=4)
    b = distortion_frequency_correlation(dist, imgs, n_boot=200, seed=4, radius=2)
    assert b == {"radius": 2, **a}
    with pytest.raises(InputError, match="30 values but the energies have 29"):
        energy_correlation(dist, low[:-1], high)
