"""diffaudit.train: β-VAE loss, saving in diffusers format, determinism, resume (arXiv 2511.20592 App. H)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from diffaudit.errors import ConfigError, InputError
from diffaudit.train import build_vae, get_preset, kl_per_element, train_ldm, vae_loss

N = 24


@pytest.fixture(scope="module")
def digits16():
    d = load_digits()
    x = torch.tensor(d.images[:N], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 1
    return x.clamp(-1, 1), torch.tensor(d.target[:N])


def tiny(**kw):
    """The digits preset shortened to a few steps with small batches."""
    base = dict(vae_steps=3, unet_steps=3, vae_batch=8, unet_batch=8, checkpoint_every=2)
    return get_preset("digits").with_overrides(**(base | kw))


def weights(folder):
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_vae_loss_matches_hand_computation(digits16):
    x = digits16[0][:3]
    torch.manual_seed(1)
    vae = build_vae(tiny(), in_channels=1)
    beta = 0.37
    # Posterior mean: recon and KL by hand, KL through torch.distributions (independent formula).
    got = vae_loss(vae, x, beta, sample=False)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(x))
        mu, logvar = moments.chunk(2, dim=1)
        recon = (vae.decode(mu).sample - x).abs().mean()
        std = (0.5 * logvar).exp()
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu, std), torch.distributions.Normal(0.0, 1.0)
        ).mean()
    assert torch.allclose(got["recon"], recon, atol=1e-6)
    assert torch.allclose(got["kl"], kl, atol=1e-6)
    assert torch.allclose(got["loss"], recon + beta * kl, atol=1e-6)
    assert torch.allclose(kl_per_element(mu, logvar).mean(), kl, atol=1e-6)
    # Sampled z: the reparameterisation with the same global draw.
    torch.manual_seed(5)
    got_s = vae_loss(vae, x, beta, sample=True)
    torch.manual_seed(5)
    with torch.no_grad():
        z = mu + std * torch.randn(mu.shape)
        recon_s = (vae.decode(z).sample - x).abs().mean()
    assert torch.allclose(got_s["recon"], recon_s, atol=1e-6)


def test_vae_init_logvar_shifts_only_the_posterior_log_variance(digits16):
    x = digits16[0][:4]
    torch.manual_seed(2)
    plain = build_vae(tiny(vae_init_logvar=None), in_channels=1)
    torch.manual_seed(2)
    low = build_vae(tiny(vae_init_logvar=-5.0), in_channels=1)
    c = plain.config.latent_channels
    with torch.no_grad():
        a, b = plain.encode(x).latent_dist, low.encode(x).latent_dist
        shift = (-5.0 - plain.quant_conv.bias[c:]).view(1, c, 1, 1)
    assert torch.equal(a.mean, b.mean)
    assert torch.allclose(b.logvar, a.logvar + shift, atol=1e-5)
    # The digits preset starts its encoder there (the latent-usage fix recorded in presets.py).
    assert torch.equal(build_vae(get_preset("digits"), 1).quant_conv.bias[c:], torch.full((c,), -5.0))


def test_train_saves_diffusers_layout_and_reloads(digits16, tmp_path):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    x, _ = digits16
    meta = train_ldm(x, tiny(), tmp_path, seed=0, progress=False, split_info={"members": "m.json"})
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    unet = UNet2DModel.from_pretrained(tmp_path / "unet")
    sched = DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    assert vae.config.scaling_factor == 1.0 and unet.config.in_channels == 4
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "linear"
    expected = torch.linspace(1e-4, 2e-2, 1000)
    assert torch.allclose(sched.betas, expected)
    assert torch.allclose(sched.alphas_cumprod, torch.cumprod(1 - expected, 0))
    with torch.no_grad():
        z = vae.encode(x[:2]).latent_dist.mean
        assert z.shape == (2, 4, 8, 8)
        assert unet(z, torch.tensor([0, 999])).sample.shape == z.shape
        assert vae.decode(z).sample.shape == (2, 1, 16, 16)
    on_disk = json.loads((tmp_path / "diffaudit.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert on_disk["steps"] == {"vae": 3, "unet": 3} and on_disk["split"] == {"members": "m.json"}
    assert set(on_disk["final_losses"]["vae"]) == {"loss", "recon", "kl"}
    assert on_disk["final_losses"]["unet"]["loss"] > 0


def test_reload_through_adapter(digits16, tmp_path):
    models = pytest.importorskip("diffaudit.models")
    x, _ = digits16
    train_ldm(x, tiny(), tmp_path, seed=0, progress=False)
    ld = models.LatentDiffusion.from_pretrained(tmp_path)
    z = ld.encode(x[:2])
    assert z.shape == (2, 4, 8, 8)
    assert ld.eps(z, torch.tensor([0, 10])).shape == z.shape
    assert ld.decode(z).shape == (2, 1, 16, 16)
    assert len(ld.alphas_cumprod) == 1000


def test_same_seed_same_weights_and_seed_matters(digits16, tmp_path):
    x, _ = digits16
    p = tiny(hflip=True)  # flips draw randomness too
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        train_ldm(x, p, tmp_path / name, seed=seed, progress=False)
    for part in ("vae", "unet"):
        assert_same_weights(tmp_path / "a" / part, tmp_path / "b" / part)
    wa, wc = weights(tmp_path / "a" / "unet"), weights(tmp_path / "c" / "unet")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


class Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(digits16, tmp_path):
    x, _ = digits16
    p = tiny(vae_steps=5, unet_steps=5)
    train_ldm(x, p, tmp_path / "full", seed=3, progress=False)

    def stop_at(stage_, step_):
        def cb(stage, step, losses):
            if stage == stage_ and step == step_:
                raise Interrupt

        return cb

    run = tmp_path / "run"
    with pytest.raises(Interrupt):  # stops inside the VAE stage, after its step-2 checkpoint
        train_ldm(x, p, run, seed=3, progress=False, callback=stop_at("vae", 2))
    with pytest.raises(Interrupt):  # resumes the VAE, stops inside the UNet stage
        train_ldm(x, p, run, seed=3, progress=False, callback=stop_at("unet", 3))
    seen = []
    train_ldm(x, p, run, seed=3, progress=False, callback=lambda s, i, l: seen.append((s, i)))
    assert seen == [("unet", 4)]  # the finished VAE stage is skipped; the UNet resumes at step 4
    for part in ("vae", "unet"):
        assert_same_weights(tmp_path / "full" / part, run / part)
    # Training further on a finished run equals training that long from the start.
    train_ldm(x, p.with_overrides(unet_steps=7), run, seed=3, progress=False)
    train_ldm(x, p.with_overrides(unet_steps=7), tmp_path / "full7", seed=3, progress=False)
    assert_same_weights(tmp_path / "full7" / "unet", run / "unet")
    with pytest.raises(ConfigError, match="already ran 7 steps"):
        train_ldm(x, p, run, seed=3, progress=False)
    with pytest.raises(ConfigError, match="different settings"):
        train_ldm(x, p, run, seed=4, progress=False)


def test_class_conditional_and_vq(digits16, tmp_path):
    from diffusers import UNet2DModel, VQModel

    x, y = digits16
    meta = train_ldm(x, tiny(), tmp_path / "cond", labels=y, class_conditional=True, progress=False)
    unet = UNet2DModel.from_pretrained(tmp_path / "cond" / "unet")
    n_cls = int(y.max()) + 1
    assert meta["null_label"] == n_cls and unet.config.num_class_embeds == n_cls + 1
    models = pytest.importorskip("diffaudit.models")
    assert models.LatentDiffusion.from_pretrained(tmp_path / "cond").uncond(2).tolist() == [n_cls, n_cls]
    with torch.no_grad():
        out = unet(torch.zeros(2, 4, 8, 8), torch.tensor([5, 5]), class_labels=torch.tensor([0, n_cls])).sample
    assert not torch.allclose(out[0], out[1])  # the label reaches the prediction
    vq = get_preset("digits-vq").with_overrides(vae_steps=2, unet_steps=2, vae_batch=8, unet_batch=8)
    meta = train_ldm(x, vq, tmp_path / "vq", progress=False)
    vae = VQModel.from_pretrained(tmp_path / "vq" / "vae")
    assert vae.config.num_vq_embeddings == 256 and meta["latent_shape"] == [4, 8, 8]


def test_bad_inputs(digits16, tmp_path):
    x, y = digits16
    with pytest.raises(InputError, match="needs 16x16"):
        train_ldm(torch.zeros(4, 1, 8, 8), tiny(), tmp_path / "a", progress=False)
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        train_ldm(x * 3, tiny(), tmp_path / "b", progress=False)
    with pytest.raises(InputError, match="needs labels"):
        train_ldm(x, tiny(), tmp_path / "c", class_conditional=True, progress=False)
    with pytest.raises(InputError, match="labels must be"):
        train_ldm(x, tiny(), tmp_path / "d", labels=y[:3], class_conditional=True, progress=False)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="unknown preset field"):
        get_preset("digits").with_overrides(widthh=3)


def test_paper_presets_have_app_h_settings():
    c = get_preset("cifar10-paper")
    assert (c.beta_kl, c.vae_lr, c.vae_weight_decay, c.unet_batch) == (1e-2, 2e-4, 1e-4, 128)
    assert c.unet_config["block_out_channels"] == [128, 256, 256, 256] and c.unet_config["dropout"] == 0.1
    assert c.steps("unet", 25000) == 2048 * 196 and c.steps("vae", 25000) == 120 * 196
    e = get_preset("celeba-paper")
    assert e.beta_kl == 1e-3 and e.unet_config["block_out_channels"] == [224, 448, 672, 896]
    assert e.unet_batch == 256 and e.hflip
    vae = build_vae(c, in_channels=3)
    with torch.no_grad():
        assert vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean.shape == (1, 4, 8, 8)


def test_cli_train_from_split(tmp_path, capsys):
    from diffaudit.cli import main
    from diffaudit.data import make_split_files

    m, h = make_split_files("digits", 16, 16, 0, tmp_path / "split")
    args = ["train", "--members", str(m), "--out", str(tmp_path / "model"), "--vae-steps", "2",
            "--unet-steps", "2", "--no-progress"]
    main(args)
    meta = json.loads((tmp_path / "model" / "diffaudit.json").read_text())
    assert meta["n_members"] == 16 and meta["split"]["members"]["path"] == str(m)
    assert "trained digits on 16 members" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # a held-out split is refused with one line
        main(["train", "--members", str(h), "--out", str(tmp_path / "m2")])
    assert e.value.code == 2 and "heldout split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --data must name the split's source
        main(["train", "--members", str(m), "--data", "fashion-mnist", "--out", str(tmp_path / "m3")])
    assert e.value.code == 2 and "differs from the source" in capsys.readouterr().err
