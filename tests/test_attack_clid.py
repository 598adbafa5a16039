"""CLiD (arXiv 2405.14800 Eqs. 13–16) vs hand-written formulas on analytic conditional ε-models."""
import math

import numpy as np
import pytest
import torch

from diffaudit.attacks import ATTACKS, attack_sweep, statistic, statistic_bank
from diffaudit.attacks.clid import clid, clid_terms, clid_threshold_scores, clid_timesteps, gaussian_conditions
from diffaudit.errors import InputError
from diffaudit.rng import randn_per_sample

T = 1000
SHAPE = (2, 3, 3)
D = int(np.prod(SHAPE))
M = 5  # embedding width


def table():
    return torch.cumprod(1 - torch.linspace(1e-4, 2e-2, T, dtype=torch.float64), 0).float()


class CondLinear:
    """ε̂(x, t, c) = A_t ⊙ x + b_t + U c (c: float embeddings [N, M]); the null condition is c = 0."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.alphas_cumprod = table()
        self.A = 0.3 * torch.randn(T, *SHAPE, generator=g, dtype=torch.float64)
        self.b = 0.1 * torch.randn(T, *SHAPE, generator=g, dtype=torch.float64)
        self.U = torch.randn(D, M, generator=g, dtype=torch.float64) / math.sqrt(M)
        self.calls = 0

    def eps(self, x, t, cond=None):
        self.calls += 1
        out = self.A[t] * x + self.b[t]
        if cond is not None:
            out = out + (cond @ self.U.T).reshape(x.shape)
        return out

    def uncond(self, n):
        return torch.zeros(n, M, dtype=torch.float64)

    def eps_np(self, x, t, c):
        return self.A[t].numpy() * x + self.b[t].numpy() + (c @ self.U.numpy().T).reshape(x.shape)


class ClassLinear(CondLinear):
    """Class-conditional: U applied to a one-hot label; label 3 is the null class (all zeros)."""

    def eps(self, x, t, cond=None):
        onehot = torch.nn.functional.one_hot(cond, M).double()
        onehot[cond == 3] = 0
        return super().eps(x, t, onehot)

    def uncond(self, n):
        return torch.full((n,), 3, dtype=torch.long)


def noise_table(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    tab = {t: torch.randn(n, *SHAPE, generator=g, dtype=torch.float64) for t in range(T)}
    return lambda t: tab[t]


def by_hand(m, z, c, reduced, ts, noise):
    """Eqs. 13–15 with one noise per t shared by every condition: vector, D_i, L."""
    zn, vec, disc, lik = z.numpy(), 0.0, 0.0, 0.0
    for t in ts:
        e = noise(t).numpy()
        a = float(m.alphas_cumprod[t])
        x = math.sqrt(a) * zn + math.sqrt(1 - a) * e
        ec = (m.eps_np(x, t, c) - e) ** 2
        er = np.stack([(m.eps_np(x, t, r) - e) ** 2 for r in reduced])
        vec = vec + ec - er.mean(0)
        disc = disc + er.reshape(len(reduced), len(zn), -1).sum(-1).T - ec.reshape(len(zn), -1).sum(-1)[:, None]
        lik = lik - ec.reshape(len(zn), -1).sum(-1)
    return vec / len(ts), disc / len(ts), lik / len(ts)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(2)
    return (torch.randn(4, *SHAPE, generator=g, dtype=torch.float64),
            torch.randn(4, M, generator=g, dtype=torch.float64))


def test_clid_terms_match_the_formulas_with_the_null_condition(data):
    z, c = data
    m = CondLinear()
    noise = noise_table(4)
    got = clid_terms(m, z, 450, c, noise_fn=noise)
    vec, disc, lik = by_hand(m, z, c.numpy(), [np.zeros((4, M))], [440, 450, 460], noise)
    np.testing.assert_allclose(got.vector.numpy(), vec, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.discrepancy.numpy(), disc, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.likelihood.numpy(), lik, rtol=1e-12, atol=1e-12)
    # the vector's plain sum is −mean_i D_i: the threshold statistic without masks
    np.testing.assert_allclose(got.vector.reshape(4, -1).sum(1).numpy(), -disc.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clid(m, z, 450, c, noise_fn=noise), got.vector, rtol=0, atol=0)
    # and with a mask it sums the kept dims' discrepancy only (the signed statistic, p = 1)
    mask = torch.rand(z.shape) > 0.5
    kept = (vec * mask.numpy()).reshape(4, -1).sum(1)
    np.testing.assert_allclose(statistic(got.vector, 1, mask, signed=True).numpy(), kept, rtol=1e-12, atol=1e-14)
    bank = torch.stack([mask.reshape(4, -1), ~mask.reshape(4, -1), torch.ones(4, D, dtype=torch.bool)], 1)
    np.testing.assert_allclose(statistic_bank(got.vector, 1, bank.double(), signed=True).numpy(),
                               np.stack([kept, vec.reshape(4, -1).sum(1) - kept, -disc.mean(1)], 1), rtol=1e-12, atol=1e-13)
    with pytest.raises(InputError, match="p must be 1"):
        statistic(got.vector, 2, signed=True)


def test_clid_with_perturbed_conditions(data):
    z, c = data
    m = CondLinear()
    ids = ["a", "b", "c", "d"]
    pert = gaussian_conditions(c, ids, seed=7)
    rms = c.pow(2).mean(1, keepdim=True).sqrt()
    for sc, p in zip((0.5, 0.7, 0.9), pert):
        xi = randn_per_sample((M,), ids, 7, f"clid/cond-noise={sc}", dtype=torch.float64)
        torch.testing.assert_close(p, c + sc * rms * xi, rtol=1e-14, atol=1e-14)
    noise = noise_table(4)
    got = clid_terms(m, z, 300, c, perturbed=pert, noise_fn=noise, offsets=(-10, 0, 10))
    reduced = [p.numpy() for p in pert] + [np.zeros((4, M))]
    vec, disc, lik = by_hand(m, z, c.numpy(), reduced, [290, 300, 310], noise)
    assert got.discrepancy.shape == (4, 4)
    np.testing.assert_allclose(got.vector.numpy(), vec, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.discrepancy.numpy(), disc, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.likelihood.numpy(), lik, rtol=1e-12, atol=1e-12)
    assert m.calls == 3 * 5  # M + K·N = 3 + 4·3 queries, as the paper counts them


def test_class_conditional_model_uses_its_null_label(data):
    z, _ = data
    m = ClassLinear()
    labels = torch.tensor([0, 1, 2, 1])
    noise = noise_table(4)
    got = clid_terms(m, z, 450, labels, noise_fn=noise)
    onehot = np.eye(M)[labels.numpy()]
    vec, disc, lik = by_hand(m, z, onehot, [np.zeros((4, M))], [440, 450, 460], noise)
    np.testing.assert_allclose(got.vector.numpy(), vec, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.discrepancy.numpy(), disc, rtol=1e-12, atol=1e-12)


def test_keyed_noise_is_batch_independent_and_the_sweep_agrees(data):
    z, c = data
    m = CondLinear()
    ids = [5, 6, 7, 8]
    full = clid(m, z, 200, c, sample_ids=ids, seed=3)
    torch.testing.assert_close(clid(m, z[2:], 200, c[2:], sample_ids=ids[2:], seed=3), full[2:], rtol=1e-13, atol=1e-13)
    out = list(attack_sweep(m, z, {"clid": [200]}, attacks=("clid",), cond=c, sample_ids=ids, seed=3))
    assert [(a, t) for a, t, _ in out] == [("clid", 200)]
    torch.testing.assert_close(out[0][2], full, rtol=0, atol=0)


def test_threshold_form_is_robust_scaling_with_alpha_fitted_on_calibration():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 200
    member = np.arange(n) < 100
    disc = rng.normal(size=(n, 2)) + member[:, None] * 0.8
    lik = rng.normal(size=n) * 3 + member * 0.5
    ev = rng.normal(size=(50, 2)), rng.normal(size=50)
    scores, alpha = clid_threshold_scores(disc, lik, member, *ev)

    def scale(a, ref):
        q1, med, q3 = np.percentile(ref, [25, 50, 75])
        return (a - med) / (q3 - q1)

    dm, dme = disc.mean(1), ev[0].mean(1)
    grid = np.linspace(0, 1, 21)
    aucs = [roc_auc_score(member, a * scale(dm, dm) + (1 - a) * scale(lik, lik)) for a in grid]
    assert alpha == pytest.approx(grid[int(np.argmax(aucs))])
    np.testing.assert_allclose(scores, alpha * scale(dme, dm) + (1 - alpha) * scale(ev[1], lik), rtol=1e-12)
    with pytest.raises(InputError, match="members and non-members"):
        clid_threshold_scores(disc, lik, np.ones(n, bool), *ev)


def test_clid_errors(data):
    z, c = data
    m = CondLinear()
    with pytest.raises(InputError, match="conditional model"):
        clid(m, z, 450, None, sample_ids=[1, 2, 3, 4])
    with pytest.raises(InputError, match="sample_ids"):
        clid(m, z, 450, c)
    with pytest.raises(InputError, match="must lie in"):
        clid(m, z, 5, c, sample_ids=[1, 2, 3, 4])
    with pytest.raises(InputError, match="must lie in"):
        clid_timesteps(995, (-10, 0, 10), T)

    class NoNull(CondLinear):
        uncond = None

    with pytest.raises(InputError, match="null condition"):
        clid(NoNull(), z, 450, c, sample_ids=[1, 2, 3, 4])
    clid(NoNull(), z, 450, c, sample_ids=[1, 2, 3, 4], null_cond=torch.zeros(4, M, dtype=torch.float64))
    with pytest.raises(InputError, match="class labels cannot"):
        gaussian_conditions(torch.tensor([1, 2]), [1, 2])


def test_registered_spec():
    spec = ATTACKS["clid"]
    assert spec.fn is clid and spec.display_name == "CLiD" and "perturbation" in spec.needs
    assert spec.calls_per_t == 6  # 3 timesteps × (condition + null)


def test_clid_through_a_class_conditional_latent_diffusion_model():
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_autoencoder_kl, tiny_scheduler, tiny_unet2d

    m = LatentDiffusion(tiny_unet2d(in_channels=4, sample_size=8, block_out_channels=(8, 16), num_class_embeds=11),
                        tiny_scheduler(), vae=tiny_autoencoder_kl(attention=False), null_label=10)
    z = m.encode(torch.rand(3, 3, 16, 16) * 2 - 1)
    labels = m.encode_cond([1, 5, 7])
    ids = ["p", "q", "r"]
    got = clid_terms(m, z, 450, labels, sample_ids=ids, seed=0)
    # by hand with the adapter's own calls: the null condition is label 10
    null = torch.full((3,), 10)
    vec = 0
    for t in (440, 450, 460):
        e = randn_per_sample(z.shape[1:], ids, 0, f"clid/t={t}")
        a = float(m.alphas_cumprod[t])
        x = math.sqrt(a) * z + math.sqrt(1 - a) * e
        vec = vec + (m.eps(x, t, labels) - e) ** 2 - (m.eps(x, t, null) - e) ** 2
    torch.testing.assert_close(got.vector, vec / 3, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="conditional model"):
        clid(m, z, 450, None, sample_ids=ids)
