"""Flow matching in the VP core, on an analytic velocity field.

Data x₀ ~ N(μ, c²I), x_σ = (1−σ)x₀ + σε. The exact velocity E[ε − x₀ | x_σ] is Gaussian
conditioning in closed form; through the adapter the VP-equivalent ε̂ must be the exact
E[ε | x_vp] of VP coordinates with the adapter's own ᾱ_t, and SimA / Loss / PIA / SecMI through
the adapter must equal the same attacks written out by hand in flow coordinates (x_σ, v,
Euler steps), which never touch ᾱ.
"""
import pytest
import torch

from diffaudit.attacks import attack_sweep, loss, pia, secmi, sima
from diffaudit.models.families.flow import FlowMatchingModel

diffusers = pytest.importorskip("diffusers")

C, H, T = 2, 4, 1000
C2 = 0.25 ** 2  # data variance c²


def mu():
    return torch.linspace(-1.0, 1.5, C * H * H).reshape(C, H, H)


def v_exact(x, sigma):
    """E[ε − x₀ | x_σ = x] for x₀ ~ N(μ, c²I): (σ − (1−σ)c²)/V · (x − (1−σ)μ) − μ, V = (1−σ)²c² + σ²."""
    s = sigma.double().view(-1, 1, 1, 1)
    V = (1 - s) ** 2 * C2 + s ** 2
    return ((s - (1 - s) * C2) / V * (x.double() - (1 - s) * mu()) - mu()).float()


class GaussianVelocity(torch.nn.Module):
    """The exact velocity as a network that takes diffusers' timestep σ·T."""

    config = {"in_channels": C, "sample_size": H}

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, timestep):
        self.calls.append(timestep.clone())
        return v_exact(x, timestep.double() / T)


@pytest.fixture
def model():
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=3.0)
    return FlowMatchingModel(GaussianVelocity(), sched)


def sig(t):
    return torch.as_tensor(t, dtype=torch.float64) / T


def s_of(sigma):
    return ((1 - sigma) ** 2 + sigma ** 2).sqrt()


def x0_batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mu() + C2 ** 0.5 * torch.randn(n, C, H, H, generator=g)


def test_alphas_cumprod_and_eps_are_the_vp_equivalent(model):
    t = torch.tensor([0, 1, 250, 500, 999])
    sigma = sig(t)
    torch.testing.assert_close(model.alphas_cumprod[t].sqrt(), (1 - sigma) / s_of(sigma), rtol=1e-14, atol=0)
    torch.testing.assert_close((1 - model.alphas_cumprod[t]).sqrt(), sigma / s_of(sigma), rtol=1e-9, atol=0)
    assert model.conditioning == "none" and model.prediction_type == "flow_prediction" and model.kind == "pixel"
    z_vp = torch.randn(5, C, H, H, generator=torch.Generator().manual_seed(1))
    got = model.eps(z_vp, t)
    # E[ε | x_vp] for x_vp = a·x₀ + b·ε with a = √ᾱ_t, b = √(1−ᾱ_t), from the adapter's ᾱ alone
    ac = model.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    a, b = ac.sqrt(), (1 - ac).sqrt()
    ref = b / (a ** 2 * C2 + b ** 2) * (z_vp.double() - a * mu())
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-5)
    # the network saw x_σ = s·x_vp at timestep σ·T (the scheduler's timesteps, as SD3's pipeline passes)
    torch.testing.assert_close(model.denoiser.calls[-1], (sigma * T).float())


def test_eps_predicts_the_noise_of_flow_samples(model):
    """Monte Carlo: x_σ from data, ε̂ of its VP form regresses onto the true ε (E[(ε − ε̂)·ε̂] = 0)."""
    n = 4000
    g = torch.Generator().manual_seed(3)
    x0 = mu() + C2 ** 0.5 * torch.randn(n, C, H, H, generator=g)
    e = torch.randn(n, C, H, H, generator=g)
    t = torch.full((n,), 600)
    sigma = sig(t).view(-1, 1, 1, 1)
    x_sigma = ((1 - sigma) * x0 + sigma * e).float()
    eh = model.eps(x_sigma / s_of(sigma).float(), t)
    assert abs(float(((e - eh) * eh).mean())) < 0.02
    assert float(((e - eh) ** 2).mean()) < float((e ** 2).mean())


def test_attacks_through_the_adapter_equal_flow_coordinates_by_hand(model):
    z = x0_batch()
    n = z.shape[0]
    t = torch.tensor([0, 90, 250, 500, 880])
    sigma = sig(t).view(-1, 1, 1, 1)
    s = s_of(sigma)
    f = lambda x, sg: v_exact(x, sg.flatten())  # noqa: E731
    close = dict(rtol=2e-5, atol=2e-5)
    # SimA: the model at the clean latent read as x_vp → x_σ = s·z, ε̂ = x_σ + (1−σ)v̂
    xs = (s * z).float()
    torch.testing.assert_close(sima(model, z, t), (xs + (1 - sigma).float() * f(xs, sigma)), **close)
    # Loss: noise − ε̂(x_t) = (1−σ)·((noise − z) − v̂(x_σ)), x_σ = (1−σ)z + σ·noise
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    xs = ((1 - sigma) * z + sigma * noise).float()
    ref = (1 - sigma).float() * ((noise - z) - f(xs, sigma))
    torch.testing.assert_close(loss(model, z, t, noise), ref, **close)
    # PIA: ε₀ = z + v̂(z, 0); x_σ = (1−σ)z + σε₀; ε₀ − ε̂ = (1−σ)(ε₀ − z − v̂(x_σ))
    e0 = z + f(z, torch.zeros(n))
    xs = ((1 - sigma) * z + sigma * e0).float()
    torch.testing.assert_close(pia(model, z, t), (1 - sigma).float() * (e0 - z - f(xs, sigma)), **close)
    # SecMI: DDIM in VP is the flow Euler step x_σ' = x_σ + (σ'−σ)·v̂; result back in VP units (÷ s)
    interval = 10
    ref = []
    for i in range(n):
        x, cur, tt = z[i:i + 1], 0, int(t[i])
        while cur < tt:
            nxt = min(cur + interval, tt)
            x = x + (nxt - cur) / T * f(x, sig([cur]))
            cur = nxt
        up = tt + interval
        x_on = x + interval / T * f(x, sig([tt]))
        back = x_on - interval / T * f(x_on, sig([up]))
        ref.append((back - x) / float(s_of(sig(tt))))
    torch.testing.assert_close(secmi(model, z, t, interval=interval), torch.cat(ref), rtol=1e-4, atol=1e-5)


def test_the_sweep_the_audit_runs_agrees(model):
    z = x0_batch(3, seed=2)
    grid = {"sima": [0, 300], "pia": [300], "secmi": [0, 300]}
    for name, t, vec in attack_sweep(model, z, grid, attacks=tuple(grid), sample_ids=["a", "b", "c"]):
        fn = {"sima": sima, "pia": pia, "secmi": secmi}[name]
        torch.testing.assert_close(vec, fn(model, z, torch.full((3,), t)), rtol=1e-5, atol=1e-6)
