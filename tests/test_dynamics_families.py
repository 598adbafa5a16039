"""Memorization dynamics on every text-conditioned family (Kim, Kim & Lee, arXiv 2509.25705;
docs/models.md §Dynamics): end-to-end runs through the CLI on the tiny pipeline folders, the flow
Euler sampler against diffusers' own FlowMatchEulerDiscreteScheduler loop over the raw transformer,
the SDXL DDIM step against the hand formula over the raw UNet, the flow decomposition schedule
(1−σ, σ), and one-line refusals of the families the dynamics cannot sample from prompts."""
import json

import numpy as np
import pytest
import torch

from diffaudit.analysis import dynamics as dyn
from diffaudit.errors import ModelError
from diffaudit.models import LatentDiffusion
from diffaudit.models.tiny import save_tiny_model_folder
from diffaudit.models.tiny_pipelines import save_tiny_pipeline

diffusers = pytest.importorskip("diffusers")
CAPS = ["a red shirt", "an ankle boot"]
# family -> (tiny builder, its kwargs), path kind
FAMILIES = {"sd": ("text", {}, "vp"), "sdxl": ("sdxl", {}, "vp"), "pixart-alpha": ("pixart", {}, "vp"),
            "pixart-sigma": ("pixart", {"sigma": True}, "vp"), "sd3": ("sd3", {}, "flow"),
            "flux": ("flux", {}, "flow")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyn-families")
    out = {}
    for fam, (builder, kw, _) in FAMILIES.items():
        out[fam] = (save_tiny_model_folder(root / fam, kind="text") if builder == "text"
                    else save_tiny_pipeline(root / fam, builder, **kw))
    return out


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("dyn-prompts")
    rng = np.random.default_rng(0)
    lines = []
    for i, cap in enumerate(CAPS):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
        lines.append(json.dumps({"prompt": cap, "image": f"{i}.png", "memorized": i == 0}))
    (d / "p.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cli_run_on_every_text_family(family, folders, prompts, tmp_path, capsys):
    """2 prompts × 2 seeds × 3 steps through `diffaudit dynamics`; the recorded schedule is the
    family's (DDIM ᾱ or the pipeline's σ grid) and the decomposition theory is its (a, b)."""
    from diffaudit.cli import main

    out = tmp_path / "rep"
    main(["dynamics", "--model", str(folders[family]), "--prompts", str(prompts / "p.jsonl"), "--images", str(prompts),
          "--seeds", "2", "--steps", "3", "--delays", "1", "--guidance", "4", "--out", str(out), "--no-progress"])
    assert "2 prompts analysed" in capsys.readouterr().out
    m = LatentDiffusion.from_pretrained(folders[family])
    assert m.family == family
    kind = FAMILIES[family][2]
    for pid in ("p0", "p1"):
        r = json.loads((out / "prompts" / f"{pid}.json").read_text())
        assert r["schedule"] == kind and len(r["timesteps"]) == 3 and len(r["loss"]["loss_c"]) == 10
        g = r["guided"]
        if kind == "flow":
            sig = m.sampling_sigmas(3)  # starts at σ = 1 (pure noise), ends at 0
            assert sig[0] == 1 and sig[-1] == 0
            np.testing.assert_allclose(r["sigmas_out"], sig[1:].numpy(), rtol=0, atol=1e-12)
            np.testing.assert_allclose(r["timesteps"], (sig[:-1] * 1000).numpy(), rtol=1e-12)
            np.testing.assert_allclose(g["w0_theory"], 1 - sig[1:].numpy(), atol=1e-12)
            np.testing.assert_allclose(g["wT_theory"], sig[1:].numpy(), atol=1e-12)
        else:
            a = np.asarray(r["alphas_out"])
            np.testing.assert_allclose(g["w0_theory"], np.sqrt(a), atol=1e-12)
            np.testing.assert_allclose(g["wT_theory"], np.sqrt(1 - a), atol=1e-12)
        for run in ("guided", "unguided"):
            x = r[run]
            assert len(x["w0_mean"]) == 3 and all(np.isfinite(x[k]) for k in ("D0", "DT", "diversity_final"))
            assert np.isfinite(x["wen_curve"]).all() and min(x["wen_curve"]) > 0
            # D0 is the sum of the curves' differences
            assert x["D0"] == pytest.approx(float(np.sum(np.subtract(x["w0_mean"], x["w0_theory"]))), rel=1e-9, abs=1e-12)
        assert r["delayed"]["1"]["severity"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 2 and summary["detectors"]["D0_guided"]["n_pos"] == 1


def _flow_reference(m, pipe_call, steps, noise, w, sigmas_kwargs):
    """The pipeline's own loop: a fresh FlowMatchEulerDiscreteScheduler from the folder, its
    set_timesteps as the pipeline calls it, scheduler.step on v̂_u + w (v̂_c − v̂_u)."""
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(m.source / "scheduler")
    sched.set_timesteps(**sigmas_kwargs)
    x, lat, vcs = noise.clone(), [noise.clone()], []
    for t in sched.timesteps:
        with torch.no_grad():
            vc, vu = pipe_call(x, t, cond=True), pipe_call(x, t, cond=False)
        x = sched.step(vu + w * (vc - vu), t, x).prev_sample
        lat.append(x)
        vcs.append(vc)
    return torch.stack(lat), torch.stack(vcs), sched.sigmas.double()


def test_flow_euler_sd3_equals_the_scheduler_loop_over_the_raw_transformer(folders):
    m = LatentDiffusion.from_pretrained(folders["sd3"])
    pipe = m.text_pipeline
    pe, ne, pp, npool = pipe.encode_prompt(prompt=[CAPS[0]], prompt_2=None, prompt_3=None, do_classifier_free_guidance=True,
                                           num_images_per_prompt=1, device="cpu")
    tr = m.denoiser

    def call(x, t, cond):
        e, p = (pe, pp) if cond else (ne, npool)
        n = x.shape[0]
        return tr(hidden_states=x, timestep=t.expand(n), encoder_hidden_states=e.expand(n, -1, -1),
                  pooled_projections=p.expand(n, -1)).sample

    noise = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(3))
    traj = dyn.sample_trajectories(m, m.encode_cond([CAPS[0]]), m.uncond(1), noise, 3, 4.0)
    ref, vcs, sig = _flow_reference(m, call, 3, noise, 4.0, {"num_inference_steps": 3})  # StableDiffusion3Pipeline
    assert traj.path is dyn.FLOW and sig[0] == 1
    torch.testing.assert_close(traj.levels_in, sig[:-1]) and torch.testing.assert_close(traj.levels_out, sig[1:])
    torch.testing.assert_close(traj.pred_c, vcs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traj.latents, ref, rtol=1e-5, atol=1e-5)
    # each recorded step is x + (σ' − σ)·v̂_cfg of the recorded predictions
    for i in range(3):
        v = traj.pred_u[i] + 4.0 * (traj.pred_c[i] - traj.pred_u[i])
        step = traj.latents[i].double() + (sig[i + 1] - sig[i]) * v.double()
        torch.testing.assert_close(traj.latents[i + 1].double(), step, rtol=1e-6, atol=1e-6)
    # x̂0 = x − σ v̂ and ε̂ = x + (1−σ) v̂ (the VP-equivalent's ε̂, docs/models.md §Flow matching)
    s1 = float(sig[1])
    torch.testing.assert_close(traj.x0("c")[1], traj.latents[1] - s1 * traj.pred_c[1])
    torch.testing.assert_close(traj.eps("u")[1], traj.latents[1] + (1 - s1) * traj.pred_u[1])


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flow_euler_flux_equals_the_pipeline_loop(folders, tmp_path, guidance_embeds):
    """FLUX: true CFG on v̂ (FluxPipeline's true_cfg_scale, negative prompt ""), the guidance
    embedding at model.guidance in both passes, σ = linspace(1, 1/N) shifted by μ of the token count."""
    import numpy as np
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    d = folders["flux"] if guidance_embeds else save_tiny_pipeline(tmp_path / "flux-ng", "flux", guidance_embeds=False)
    m = LatentDiffusion.from_pretrained(d)
    pipe = m.text_pipeline
    pos = pipe.encode_prompt(prompt=[CAPS[1]], prompt_2=None, device="cpu", num_images_per_prompt=1)
    neg = pipe.encode_prompt(prompt=[""], prompt_2=None, device="cpu", num_images_per_prompt=1)
    tr = m.denoiser
    c, h, w = m.latent_shape

    def call(x, t, cond):
        e, p, txt = pos if cond else neg
        n = x.shape[0]
        tokens = FluxPipeline._pack_latents(x, n, c, h, w)
        ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32)
        g = torch.full((n,), 3.5) if guidance_embeds else None
        out = tr(hidden_states=tokens, timestep=t.expand(n) / 1000, guidance=g, pooled_projections=p.expand(n, -1),
                 encoder_hidden_states=e.expand(n, -1, -1), txt_ids=txt, img_ids=ids).sample
        return FluxPipeline._unpack_latents(out, h * 2, w * 2, 2)

    cfg = m.scheduler.config
    mu = calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    noise = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(4))
    traj = dyn.sample_trajectories(m, m.encode_cond([CAPS[1]]), m.uncond(1), noise, 3, 2.5)
    ref, vcs, sig = _flow_reference(m, call, 3, noise, 2.5, {"sigmas": np.linspace(1.0, 1 / 3, 3), "mu": mu})
    torch.testing.assert_close(traj.levels_in, sig[:-1]) and torch.testing.assert_close(traj.levels_out, sig[1:])
    torch.testing.assert_close(traj.pred_c, vcs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traj.latents, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,dynamic", [("sd3", False), ("sd3", True), ("flux", True)])
def test_sampling_sigmas_are_the_ones_the_pipeline_itself_visits(folders, family, dynamic):
    """`sampling_sigmas(N)` against the σ the diffusers pipeline's own __call__ leaves on its
    scheduler after an N-step generation (SD3 with its static shift and with dynamic shifting)."""
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    m = LatentDiffusion.from_pretrained(folders[family])
    pipe = DiffusionPipeline.from_pretrained(folders[family], local_files_only=True)
    if family == "sd3" and dynamic:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=True)
        m.scheduler = FlowMatchEulerDiscreteScheduler.from_config(m.scheduler.config, use_dynamic_shifting=True)
    assert bool(pipe.scheduler.config.use_dynamic_shifting) == dynamic
    with torch.no_grad():
        pipe(prompt=CAPS[0], num_inference_steps=3, height=16, width=16, output_type="latent", guidance_scale=1.0)
    torch.testing.assert_close(m.sampling_sigmas(3), pipe.scheduler.sigmas.double())


def test_sdxl_ddim_step_equals_the_hand_formula_over_the_raw_unet(folders):
    m = LatentDiffusion.from_pretrained(folders["sdxl"])
    pipe = m.text_pipeline
    pe, ne, pp, npool = pipe.encode_prompt(prompt=[CAPS[0]], device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=True)
    ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=torch.float32,
                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert ne.abs().max() == 0  # force_zeros_for_empty_prompt: the null condition is zeros
    sched = diffusers.DDIMScheduler.from_config(m.scheduler.config, clip_sample=False)  # DDIM's default clips x̂0
    sched.set_timesteps(3)
    ac = sched.alphas_cumprod.double()
    T, w = 1000, 5.0
    noise = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(5))
    traj = dyn.sample_trajectories(m, m.encode_cond([CAPS[0]]), m.uncond(1), noise, 3, w)
    assert traj.path is dyn.VP and traj.timesteps.tolist() == sched.timesteps.tolist()
    x = noise.double()
    for i, t in enumerate(sched.timesteps):
        with torch.no_grad():
            def eps(e, p):
                return m.denoiser(traj.latents[i], t, encoder_hidden_states=e.expand(2, -1, -1),
                                  added_cond_kwargs={"text_embeds": p.expand(2, -1), "time_ids": ids.expand(2, -1)}).sample
            ec, eu = eps(pe, pp), eps(ne, npool)
        torch.testing.assert_close(traj.pred_c[i], ec, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(traj.pred_u[i], eu, rtol=1e-5, atol=1e-5)
        e = (eu + w * (ec - eu)).double()
        a = ac[int(t)]
        prev = int(t) - T // 3
        a2 = ac[prev] if prev >= 0 else torch.tensor(float(sched.final_alpha_cumprod), dtype=torch.float64)
        x0 = (traj.latents[i].double() - (1 - a).sqrt() * e) / a.sqrt()
        x = a2.sqrt() * x0 + (1 - a2).sqrt() * e  # DDIM, η = 0 (arXiv 2010.02502, Eq. 12)
        torch.testing.assert_close(traj.latents[i + 1].double(), x, rtol=1e-5, atol=1e-5)
        lit = sched.step(e.float(), t, traj.latents[i], eta=0.0).prev_sample
        torch.testing.assert_close(traj.latents[i + 1], lit, rtol=1e-5, atol=1e-5)


def test_ddim_on_a_linspace_grid_steps_to_the_next_visited_timestep():
    """PixArt's DPM-Solver config spaces timesteps by linspace: each step maps to the next
    timestep of the grid (where the next ε̂ is taken), not DDIMScheduler.step's t − T//N."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = dict(DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2).config)
    ac = DPMSolverMultistepScheduler.from_config(cfg).alphas_cumprod
    ts, a_in, a_out = dyn.ddim_schedule(ac, 4, cfg)
    assert ts.tolist() == [999, 666, 333, 0]
    assert torch.equal(a_out[:-1], a_in[1:]) and a_out[-1] == 1.0


class FlowOracle:
    """A flow model whose velocity field knows one image x: cond 1 → v = (x_σ − x)/σ (x̂₀ = x),
    cond 0 → v = x_σ/σ (x̂₀ = 0, the 'data mean'); σ grid k/S."""

    class schedule:
        kind = "flow"

    def __init__(self, x):
        self.x, self.latent_shape = x, tuple(x.shape)
        self.alphas_cumprod = torch.ones(1000)

    def velocity(self, z, sigma, cond):
        s = sigma.double().view(-1, 1, 1, 1)
        x0 = cond.double().view(-1, 1, 1, 1) * self.x.double()
        return ((z.double() - x0) / s).float()

    def sampling_sigmas(self, steps):
        return torch.linspace(1, 0, steps + 1, dtype=torch.float64)

    def encode_cond(self, captions):
        return torch.ones(len(captions), 1)

    def uncond(self, n):
        return torch.zeros(n, 1)


def test_flow_decomposition_uses_one_minus_sigma_and_sigma():
    g = torch.Generator().manual_seed(6)
    x, zT = torch.randn(1, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    sig = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.1, 0.0], dtype=torch.float64)
    lat = torch.stack([((1 - s) * x.double() + s * zT.double()).float() for s in sig])  # exactly on the path
    S = len(sig) - 1
    traj = dyn.Trajectory(sig[:-1] * 1000, sig[:-1], sig[1:], torch.ones(S, dtype=torch.float64), lat,
                          torch.zeros(S, *zT.shape), torch.zeros(S, *zT.shape), dyn.FLOW)
    dec = dyn.decompose_trajectory(traj, x)
    assert abs(dec["D0"]) < 1e-6 and abs(dec["DT"]) < 1e-6  # float32 latents, float64 fit
    torch.testing.assert_close(dec["w0_theory"], 1 - sig[1:]) and torch.testing.assert_close(dec["wT_theory"], sig[1:])
    torch.testing.assert_close(dec["w0_mean"], 1 - sig[1:], rtol=0, atol=1e-6)
    vp = dyn.decompose_trajectory(dyn.Trajectory(traj.timesteps.long(), 1 - sig[:-1], 1 - sig[1:], traj.guidance, lat,
                                                 traj.pred_c, traj.pred_u), x)
    assert abs(vp["D0"]) > 0.1  # read against (√ᾱ, √(1−ᾱ)) the same latents deviate
    # the sampler: a perfect velocity field stays exactly on (1−σ, σ); no first-step offset
    orc = FlowOracle(x[0])
    t1 = dyn.sample_trajectories(orc, orc.encode_cond(["m"]), orc.uncond(1), zT, 5, 1.0)
    d1 = dyn.decompose_trajectory(t1, x)
    assert abs(d1["D0"]) < 1e-5 and abs(d1["DT"]) < 1e-5 and (t1.final - x).abs().max() < 1e-5
    div = dyn.diversity_curves(t1)["diversity_norm"]
    torch.testing.assert_close(div[:-1], torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-5)
    # guidance overshoots x̂0 by w in flow too; the guidance direction points at z_x; k_c = 1
    t7 = dyn.sample_trajectories(orc, orc.encode_cond(["m"]), orc.uncond(1), zT, 5, 7.5)
    al = dyn.alignment_curves(t7, x)
    torch.testing.assert_close(al["k_g"], torch.full_like(al["k_g"], 7.5), rtol=0, atol=1e-3)
    torch.testing.assert_close(al["k_c"], torch.ones_like(al["k_c"]), rtol=0, atol=1e-4)
    torch.testing.assert_close(al["cos_guidance"], torch.ones_like(al["cos_guidance"]), rtol=0, atol=1e-5)
    assert dyn.decompose_trajectory(t7, x)["D0"] > 1.0
    # Wen on v̂: ‖v̂_c − v̂_u‖ = ‖x‖/σ per seed (the ε̂ difference would be 0 at σ = 1)
    wen = dyn.wen_curve(t7)
    torch.testing.assert_close(wen, x.double().norm() / t7.levels_in, rtol=1e-5, atol=0)
    # loss view: the rectified-flow loss ‖(ε − x) − v̂‖² is 0 for the oracle's conditional field
    lv = dyn.denoising_losses(orc, x[0], orc.encode_cond(["m"]), orc.uncond(1), [100, 500, 900], 7.5, zT)
    assert lv["loss_c"].abs().max() < 1e-9
    torch.testing.assert_close(lv["k_g"].double(), torch.full((3,), 7.5, dtype=torch.float64), rtol=0, atol=1e-3)


def test_vp_equivalent_ddim_is_the_flow_euler_run_on_the_t_over_T_grid(folders, monkeypatch):
    """docs/models.md: a DDIM step of the VP-equivalent between grid points t/T is the flow Euler
    step, so `sample_ddim` over `eps` and the flow sampler over `velocity` agree there."""
    m = LatentDiffusion.from_pretrained(folders["sd3"])
    grid = torch.tensor([0.75, 0.5, 0.25, 0.0, 0.0], dtype=torch.float64)  # DDIM (no config): t = 750, 500, 250, 0
    monkeypatch.setattr(m, "sampling_sigmas", lambda steps: grid)
    noise = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(7))
    c, u = m.encode_cond([CAPS[0]]), m.uncond(1)
    vp = dyn.sample_ddim(m, c, u, noise, 4, 3.0)
    s = ((1 - grid) ** 2 + grid ** 2).sqrt().view(-1, 1, 1, 1, 1)
    flow = dyn.sample_trajectories(m, c, u, (noise.double() * s[0, 0]).float(), 4, 3.0)
    assert vp.timesteps.tolist() == [750, 500, 250, 0]
    torch.testing.assert_close(flow.latents.double() / s, vp.latents.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flow.eps("c"), vp.eps("c"), rtol=1e-4, atol=1e-4)  # ε̂ is the same in both coordinates
    torch.testing.assert_close(flow.x0("g"), vp.x0("g"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,words", [("dit", "class-conditional"), ("latent", "unconditional")])
def test_families_without_text_are_one_line(kind, words, tmp_path, capsys):
    from diffaudit.cli import main

    d = save_tiny_pipeline(tmp_path / kind, "dit") if kind == "dit" else save_tiny_model_folder(tmp_path / kind, kind=kind)
    m = LatentDiffusion.from_pretrained(d)
    with pytest.raises(ModelError, match=f"this {m.family} model is {words}"):
        dyn.path_of(m)
    (tmp_path / "p.txt").write_text("a caption\n")
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as e:
        main(["dynamics", "--model", str(d), "--prompts", str(tmp_path / "p.txt"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and words in err and m.family in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before anything is written
