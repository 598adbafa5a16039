"""models.schedules: every supported scheduler maps to a schedule by the table; any other is one
clear ModelError naming the folder and the class, never a guessed DDPM schedule."""
import json
import shutil

import pytest
import torch

from diffaudit.errors import ModelError
from diffaudit.models import LatentDiffusion
from diffaudit.models.schedules import FLOW_SCHEDULERS, VP_SCHEDULERS, flow_alphas_cumprod, schedule_of
from diffaudit.models.tiny import save_tiny_model_folder

diffusers = pytest.importorskip("diffusers")

BETAS = {  # the β schedules of DDPM (linear) and Stable Diffusion (scaled_linear), by hand
    "linear": lambda T: torch.linspace(1e-4, 2e-2, T, dtype=torch.float64),
    "scaled_linear": lambda T: torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2,
}


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("sched") / "pixel", "pixel")


def _with_scheduler(src, dst, config: dict):
    shutil.copytree(src, dst)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                                  "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "LMSDiscreteScheduler"])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_vp_schedulers_give_the_cumulative_product_of_their_betas(name, beta_schedule):
    assert name in VP_SCHEDULERS
    kw = {"beta_start": 1e-4, "beta_end": 2e-2} if beta_schedule == "linear" else {"beta_start": 0.00085, "beta_end": 0.012}
    sched = getattr(diffusers, name)(num_train_timesteps=500, beta_schedule=beta_schedule, **kw)
    s = schedule_of(sched, "here")
    ref = torch.cumprod(1 - BETAS[beta_schedule](500), 0).float()
    assert s.kind == "vp" and s.prediction_type == "epsilon" and s.num_train_timesteps == 500
    torch.testing.assert_close(s.alphas_cumprod, ref, rtol=1e-6, atol=1e-7)


def test_flow_schedule_is_the_vp_equivalent_on_the_unshifted_grid():
    for name in sorted(FLOW_SCHEDULERS):
        s = schedule_of(getattr(diffusers, name)(num_train_timesteps=400, shift=3.0), "here")
        sigma = torch.arange(400, dtype=torch.float64) / 400
        ref = ((1 - sigma) / ((1 - sigma) ** 2 + sigma ** 2).sqrt()) ** 2  # √ᾱ = (1−σ)/s(σ)
        assert s.kind == "flow" and s.prediction_type == "flow_prediction"
        torch.testing.assert_close(s.alphas_cumprod, ref, rtol=1e-14, atol=0)  # the shift does not enter the grid
        assert s.alphas_cumprod[0] == 1 and (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    torch.testing.assert_close(flow_alphas_cumprod(4), torch.tensor([1.0, 0.9, 0.5, 0.1], dtype=torch.float64))  # σ = 0, ¼, ½, ¾


def test_made_up_scheduler_class_is_one_line_naming_folder_and_class(pixel, tmp_path):
    d = _with_scheduler(pixel, tmp_path / "m", {"_class_name": "MadeUpScheduler", "num_train_timesteps": 1000})
    with pytest.raises(ModelError) as e:
        LatentDiffusion.from_pretrained(d)
    msg = str(e.value)
    assert "\n" not in msg and f"{d / 'scheduler'}" in msg and "MadeUpScheduler" in msg


@pytest.mark.parametrize("name", ["EDMEulerScheduler", "ScoreSdeVeScheduler"])
def test_scheduler_without_a_mappable_schedule_is_refused(pixel, tmp_path, name):
    """These diffusers schedulers have no alphas_cumprod; they used to get a DDPM schedule
    built from their config."""
    cfg = dict(getattr(diffusers, name)().config)
    d = _with_scheduler(pixel, tmp_path / "m", {"_class_name": name, **cfg})
    with pytest.raises(ModelError, match=rf"m/scheduler: scheduler {name} has no schedule diffaudit can map") as e:
        LatentDiffusion.from_pretrained(d)
    assert "\n" not in str(e.value)


def test_flow_scheduler_with_a_vp_family_and_unsupported_options_are_refused(pixel, tmp_path):
    d = _with_scheduler(pixel, tmp_path / "f", {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000})
    with pytest.raises(ModelError, match="FlowMatchEulerDiscreteScheduler is a flow scheduler; the unet family expects a vp one"):
        LatentDiffusion.from_pretrained(d)
    with pytest.raises(ModelError, match="invert_sigmas"):
        schedule_of(diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True), "here")
    with pytest.raises(ModelError, match="prediction_type 'flow_prediction' of UniPCMultistepScheduler"):
        schedule_of(diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"), "here")
