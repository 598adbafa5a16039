"""GSA (arXiv 2308.06405): per-layer gradient norms vs the closed form of a linear conditional
ε-model, vmap(grad) vs the authors' one-sample backward loop on a tiny UNet, and the classifier
protocol (fitted on the calibration fold only)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffaudit.attacks import ATTACKS, attack_sweep
from diffaudit.attacks.classifier import classifier_scores
from diffaudit.attacks.gsa import gsa, gsa_features, gsa_layer_names, gsa_scores, gsa_timesteps
from diffaudit.errors import InputError

T = 1000
SHAPE = (2, 3, 3)
D = int(np.prod(SHAPE))
M = 4


def table():
    return torch.cumprod(1 - torch.linspace(1e-4, 2e-2, T, dtype=torch.float64), 0).float()


class LinearEps(torch.nn.Module):
    """ε̂(x, t, c) = W vec(x) + b + U c + g_t, with g a fixed (non-trained) table."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D))
        self.b = torch.nn.Parameter(0.1 * torch.randn(D, generator=g, dtype=torch.float64))
        self.U = torch.nn.Parameter(torch.randn(D, M, generator=g, dtype=torch.float64) / math.sqrt(M))
        self.register_buffer("g", 0.1 * torch.randn(T, D, generator=g, dtype=torch.float64))

    def forward(self, x, t, c=None):
        out = x.flatten(1) @ self.W.T + self.b + self.g[t]
        if c is not None:
            out = out + c @ self.U.T
        return out.reshape(x.shape)


class Wrapped:
    """The model contract plus what gradient attacks need: `denoiser` and `eps_with_grad`."""

    def __init__(self, net, forward):
        self.denoiser, self._forward = net, forward
        self.alphas_cumprod = table()

    @torch.no_grad()
    def eps(self, x, t, cond=None):
        return self._forward(self.denoiser, x, t, cond)

    def eps_with_grad(self, x, t, cond=None):
        return self._forward(self.denoiser, x, t, cond)


def linear_model():
    return Wrapped(LinearEps(), lambda net, x, t, c: net(x, t, c))


def noise_table(n, shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    tab = {}

    def noise(t):
        if t not in tab:
            tab[t] = torch.randn(n, *shape, generator=g, dtype=torch.float64)
        return tab[t]
    return noise


def closed_form(m, z, c, ts, noise):
    """∇ of (1/K) Σ_k mean_d r_k² with r_k = W x_k + b + U c + g_{t_k} − ε_k: ∇W = 2/(KD) Σ r_k x_kᵀ,
    ∇b = 2/(KD) Σ r_k, ∇U = 2/(KD) Σ r_k cᵀ (GSA1); per-t norms (2/D)‖r_k‖·(‖x_k‖, 1, ‖c‖) averaged (GSA2)."""
    W, b, U, g = (v.detach().numpy() for v in (m.denoiser.W, m.denoiser.b, m.denoiser.U, m.denoiser.g))
    k = len(ts)
    g1, g2 = [], []
    for i in range(len(z)):
        zi, ci = z[i].numpy().ravel(), c[i].numpy()
        gw, gb, gu, per = 0, 0, 0, []
        for t in ts:
            a = float(m.alphas_cumprod[t])
            e = noise(t)[i].numpy().ravel()
            x = math.sqrt(a) * zi + math.sqrt(1 - a) * e
            r = W @ x + b + U @ ci + g[t] - e
            gw, gb, gu = gw + np.outer(r, x), gb + r, gu + np.outer(r, ci)
            nr = np.linalg.norm(r)
            per.append([2 / D * nr * np.linalg.norm(x), 2 / D * nr, 2 / D * nr * np.linalg.norm(ci)])
        g1.append([np.linalg.norm(v) * 2 / (k * D) for v in (gw, gb, gu)])
        g2.append(np.mean(per, 0))
    return np.array(g1), np.array(g2)


def test_gsa_matches_the_closed_form_of_a_linear_conditional_model():
    m = linear_model()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, *SHAPE, generator=g, dtype=torch.float64)
    c = torch.randn(5, M, generator=g, dtype=torch.float64)
    noise = noise_table(5, SHAPE)
    ts = gsa_timesteps(None, 10, T)
    assert ts == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]  # the authors' 10 timesteps
    want1, want2 = closed_form(m, z, c, ts, noise)
    f1 = gsa_features(m, z, None, c, noise_fn=noise, method=1)
    f2 = gsa_features(m, z, None, c, noise_fn=noise, method=2)
    assert gsa_layer_names(m) == ["W", "b", "U"] and f1.shape == (5, 3)
    np.testing.assert_allclose(f1.numpy(), want1, rtol=1e-12)
    np.testing.assert_allclose(f2.numpy(), want2, rtol=1e-12)
    # chunked vmap gives the same features
    np.testing.assert_allclose(gsa_features(m, z, None, c, noise_fn=noise, method=2, chunk_size=7).numpy(),
                               want2, rtol=1e-12)


def authors_loop(net, forward, z, ts, noise, ac, cond=None):
    """The authors' extraction, one sample at a time: the K noisy copies as one batch, F.mse_loss,
    backward, ‖p.grad‖ for p in parameters() (GSA1); per copy j a backward of its own loss, the
    norms averaged over j (GSA2)."""
    tt = torch.tensor(ts)
    a = ac.double()[tt].view(-1, 1, 1, 1)
    g1, g2 = [], []
    for i in range(len(z)):
        e = torch.stack([noise(t)[i] for t in ts])
        x = a.sqrt() * z[i] + (1 - a).sqrt() * e
        c = None if cond is None else cond[i].expand(len(ts))
        net.zero_grad()
        F.mse_loss(forward(net, x, tt, c), e).backward()
        g1.append(torch.stack([p.grad.norm() for p in net.parameters()]))
        per = []
        for j in range(len(ts)):
            net.zero_grad()
            cj = None if c is None else c[j:j + 1]
            F.mse_loss(forward(net, x[j:j + 1], tt[j:j + 1], cj), e[j:j + 1]).backward()
            per.append(torch.stack([p.grad.norm() for p in net.parameters()]))
        g2.append(torch.stack(per).mean(0))
    return torch.stack(g1), torch.stack(g2)


@pytest.mark.parametrize("classes", [None, 10])
def test_vmap_equals_the_authors_per_sample_loop_on_a_tiny_unet(classes):
    from diffaudit.models.tiny import tiny_unet2d

    net = tiny_unet2d(in_channels=4, sample_size=8, block_out_channels=(8, 16), num_class_embeds=classes).double()
    if classes is None:
        m = Wrapped(net, lambda net_, x, t, c: net_(x, t).sample)
        cond = None
    else:
        m = Wrapped(net, lambda net_, x, t, c: net_(x, t, class_labels=c).sample)
        cond = torch.tensor([3, 7, 1])
    z = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    ts = gsa_timesteps(599, 3, T)
    noise = noise_table(3, (4, 8, 8))
    want1, want2 = authors_loop(net, m._forward, z, ts, noise, m.alphas_cumprod, cond)
    got1 = gsa(m, z, 599, cond, noise_fn=noise, n_timesteps=3, method=1)
    got2 = gsa(m, z, 599, cond, noise_fn=noise, n_timesteps=3, method=2, chunk_size=4)
    assert got1.shape == (3, len(list(net.parameters())))
    torch.testing.assert_close(got1, want1, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(got2, want2, rtol=1e-9, atol=1e-13)


def test_keyed_noise_is_batch_independent():
    m = linear_model()
    z = torch.randn(4, *SHAPE, dtype=torch.float64)
    c = torch.randn(4, M, dtype=torch.float64)
    ids = ["w", "x", "y", "z"]
    full = gsa_features(m, z, 499, c, sample_ids=ids, seed=2, n_timesteps=5)
    torch.testing.assert_close(gsa_features(m, z[1:3], 499, c[1:3], sample_ids=ids[1:3], seed=2, n_timesteps=5),
                               full[1:3], rtol=1e-12, atol=0)
    assert not torch.allclose(gsa_features(m, z, 499, c, sample_ids=ids, seed=3, n_timesteps=5), full)


def test_classifier_protocol_fits_on_calibration_only():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n_cal, n_ev = 300, 200
    mem_cal, mem_ev = rng.random(n_cal) < 0.5, rng.random(n_ev) < 0.5
    f_cal = rng.normal(size=(n_cal, 6)) + mem_cal[:, None] * np.array([1.5, 0, 0, 0, 0, 0])
    f_ev = rng.normal(size=(n_ev, 6)) + mem_ev[:, None] * np.array([1.5, 0, 0, 0, 0, 0])
    s = gsa_scores(f_cal, mem_cal, f_ev, seed=0)
    assert s.shape == (n_ev,) and roc_auc_score(mem_ev, s) > 0.75
    ref = HistGradientBoostingClassifier(max_iter=200, early_stopping=False, random_state=0).fit(f_cal, mem_cal)
    np.testing.assert_allclose(s, ref.predict_proba(f_ev)[:, 1], rtol=0, atol=0)
    np.testing.assert_array_equal(classifier_scores(torch.from_numpy(f_cal), mem_cal, f_ev), s)
    # under the null (labels unrelated to the features) the evaluation AUC stays near 1/2
    null = gsa_scores(rng.normal(size=(n_cal, 6)), mem_cal, rng.normal(size=(n_ev, 6)))
    assert abs(roc_auc_score(mem_ev, null) - 0.5) < 0.12


def test_classifier_errors():
    x = np.random.default_rng(0).normal(size=(10, 3))
    y = np.arange(10) % 2 == 0
    with pytest.raises(InputError, match="both members and non-members"):
        classifier_scores(x, np.ones(10, bool), x)
    with pytest.raises(InputError, match="columns"):
        classifier_scores(x, y, x[:, :2])
    with pytest.raises(InputError, match="labels for 10"):
        classifier_scores(x, y[:5], x)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(InputError, match=r"row\(s\) \[4\]"):
        classifier_scores(bad, y, x)


def test_gsa_errors_and_spec():
    m = linear_model()
    z = torch.randn(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(InputError, match="sample_ids"):
        gsa(m, z)
    with pytest.raises(InputError, match="method"):
        gsa(m, z, sample_ids=[1, 2], method=3)
    with pytest.raises(InputError, match="n_timesteps"):
        gsa(m, z, 5, sample_ids=[1, 2], n_timesteps=10)

    class NoDenoiser:
        alphas_cumprod = table()

        def eps(self, x, t, cond=None):
            return x

    with pytest.raises(InputError, match="denoiser"):
        gsa(NoDenoiser(), z, sample_ids=[1, 2])
    spec = ATTACKS["gsa"]
    assert spec.fn is gsa and "param_grad" in spec.needs


def test_gsa_through_the_latent_diffusion_adapter():
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_autoencoder_kl, tiny_scheduler, tiny_unet2d

    m = LatentDiffusion(tiny_unet2d(in_channels=4, sample_size=8, block_out_channels=(8, 16), num_class_embeds=10),
                        tiny_scheduler(), vae=tiny_autoencoder_kl(attention=False))
    z = m.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    labels = m.encode_cond([4, 9])
    ts = gsa_timesteps(599, 3, T)
    noise = noise_table(2, (4, 8, 8))
    f32 = {t: v.float() for t, v in ((t, noise(t)) for t in ts)}
    got = gsa(m, z, 599, labels, noise_fn=f32.__getitem__, n_timesteps=3)
    m.denoiser.requires_grad_(True)
    try:
        want, _ = authors_loop(m.denoiser, lambda net, x, t, c: m.eps_with_grad(x, t, c), z, ts, f32.__getitem__,
                               m.alphas_cumprod, labels)
    finally:
        m.denoiser.requires_grad_(False)
    assert got.shape == (2, len(gsa_layer_names(m)))
    err = ((got - want).abs() / want.abs().amax(1, keepdim=True)).max()
    assert err < 1e-5  # float32; relative to each sample's largest feature


def test_gsa_runs_in_a_sweep_under_no_grad():
    m = linear_model()
    z = torch.randn(3, *SHAPE, dtype=torch.float64)
    ids = [1, 2, 3]
    with torch.no_grad():
        out = list(attack_sweep(m, z, {"gsa": [599]}, attacks=("gsa",), sample_ids=ids, seed=1))
    assert [(a, t) for a, t, _ in out] == [("gsa", 599)]
    torch.testing.assert_close(out[0][2], gsa(m, z, 599, sample_ids=ids, seed=1), rtol=0, atol=0)
