"""LoRA through diffusers' load_lora_weights: eps with a LoRA equals eps of the base model with the
LoRA fused into its weights by hand (W + scale·(α/r)·B·A); scale 0 is the base exactly; kohya keys
give the same model; a LoRA for another architecture, or a pickled one, is refused in one line."""
import pytest
import torch

from diffaudit.errors import InputError, ModelError
from diffaudit.models import LatentDiffusion
from diffaudit.models.lora import parse_lora_arg
from diffaudit.models.tiny import save_tiny_model_folder
from diffaudit.models.tiny_pipelines import UNET_LORA_TARGETS, inject_tiny_lora, save_tiny_lora, save_tiny_pipeline

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
CAPS = ["a red shirt", "an ankle boot"]
T = torch.tensor([5, 700])


def fuse_by_hand(model, layers, scale):
    """W ← W + scale·(α/r)·B·A on the model's own modules."""
    for comp, module in (("unet", model.denoiser), ("text_encoder", model.text_encoder)):
        state, ratio = layers[comp]
        if state is None:
            continue
        mods = dict(module.named_modules())
        for key in [k for k in state if k.endswith("lora_A.weight")]:
            name = key[: -len(".lora_A.weight")]
            A, B = state[key], state[f"{name}.lora_B.weight"]
            with torch.no_grad():
                mods[name].weight += scale * ratio * (B @ A)
    return model


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = save_tiny_model_folder(root / "base", "text")
    file, layers = save_tiny_lora(base, root / "lora")
    return base, file, layers


def _eps(m, seed=0):
    z = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(seed))
    return m.eps(z, T, m.encode_cond(CAPS))


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_lora_equals_the_base_with_the_lora_fused_by_hand(sd, scale):
    base, file, layers = sd
    m = LatentDiffusion.from_pretrained(base, lora=[(file, scale)])
    assert m.loras == [(str(file), scale)]
    ref = fuse_by_hand(LatentDiffusion.from_pretrained(base), layers, scale)
    torch.testing.assert_close(m.encode_cond(CAPS), ref.encode_cond(CAPS), rtol=1e-5, atol=1e-6)  # the text-encoder part
    torch.testing.assert_close(_eps(m), _eps(ref), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_eps(m), _eps(LatentDiffusion.from_pretrained(base)), atol=1e-3)


def test_sdxl_lora_equals_the_fused_sdxl(tmp_path):
    base = save_tiny_pipeline(tmp_path / "sdxl", "sdxl")
    file, layers = save_tiny_lora(base, tmp_path / "lora")
    m = LatentDiffusion.from_pretrained(base, lora=[(file, 0.7)])
    ref = fuse_by_hand(LatentDiffusion.from_pretrained(base), layers, 0.7)
    torch.testing.assert_close(_eps(m), _eps(ref), rtol=1e-5, atol=1e-5)


def test_scale_zero_is_the_base_exactly(sd):
    base, file, _ = sd
    assert torch.equal(_eps(LatentDiffusion.from_pretrained(base, lora=[(file, 0.0)])),
                       _eps(LatentDiffusion.from_pretrained(base)))


def test_two_loras_add_and_the_list_is_recorded(sd, tmp_path):
    base, file, layers = sd
    file2, layers2 = save_tiny_lora(base, tmp_path / "lora2", text=False, seed=5)
    m = LatentDiffusion.from_pretrained(base, lora=[(file, 1.0), (file2, 0.25)])
    assert m.loras == [(str(file), 1.0), (str(file2), 0.25)]
    ref = fuse_by_hand(fuse_by_hand(LatentDiffusion.from_pretrained(base), layers, 1.0), layers2, 0.25)
    torch.testing.assert_close(_eps(m), _eps(ref), rtol=1e-5, atol=1e-5)


def test_kohya_keys_give_the_same_model(sd, tmp_path):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    base, file, layers = sd
    unet_state, ratio = layers["unet"]
    kohya = {f"lora_unet_{k}": v for k, v in convert_state_dict_to_kohya(unet_state).items()}
    alphas = [k for k in kohya if k.endswith(".alpha")]
    assert alphas and all(k.replace(".alpha", ".lora_up.weight") in kohya for k in alphas)
    kohya.update({k: torch.tensor(8.0) for k in alphas})  # kohya files carry α per module (here α = 8, r = 4)
    save_file({k: v.contiguous() for k, v in kohya.items()}, tmp_path / "kohya.safetensors")
    m = LatentDiffusion.from_pretrained(base, lora=[(tmp_path / "kohya.safetensors", 1.0)])
    ref = fuse_by_hand(LatentDiffusion.from_pretrained(base), {**layers, "text_encoder": (None, 1.0)}, 1.0)
    torch.testing.assert_close(_eps(m), _eps(ref), rtol=1e-5, atol=1e-5)


def test_lora_for_another_architecture_is_refused(sd, tmp_path):
    base, _, _ = sd
    flux = save_tiny_pipeline(tmp_path / "flux", "flux")
    pipe = diffusers.DiffusionPipeline.from_pretrained(flux)
    from diffusers.utils import convert_state_dict_to_diffusers

    state = inject_tiny_lora(pipe.transformer, ["to_q", "to_k"], 2, 2, 0)
    diffusers.FluxPipeline.save_lora_weights(tmp_path / "flux-lora", transformer_lora_layers=convert_state_dict_to_diffusers(state))
    with pytest.raises(ModelError, match="matches no module of this sd model") as e:
        LatentDiffusion.from_pretrained(base, lora=[(tmp_path / "flux-lora" / "pytorch_lora_weights.safetensors", 1.0)])
    assert "\n" not in str(e.value)
    # a LoRA for a UNet of the same layout but other widths: shape mismatch
    from diffaudit.models.tiny import tiny_unet2d_condition

    wide = tiny_unet2d_condition(block_out_channels=(32, 64))
    state = inject_tiny_lora(wide, UNET_LORA_TARGETS, 4, 4, 1)
    diffusers.StableDiffusionPipeline.save_lora_weights(tmp_path / "wide", unet_lora_layers=convert_state_dict_to_diffusers(state))
    with pytest.raises(ModelError, match=r"wide/pytorch_lora_weights.safetensors: cannot load LoRA \(") as e:
        LatentDiffusion.from_pretrained(base, lora=[(tmp_path / "wide" / "pytorch_lora_weights.safetensors", 1.0)])
    assert "\n" not in str(e.value)


def test_lora_with_weights_for_missing_modules_is_refused(sd, tmp_path):
    from safetensors.torch import load_file, save_file

    base, file, _ = sd
    state = load_file(file)
    down = next(k for k in state if k.endswith("lora.down.weight"))
    up = down[: -len("lora.down.weight")] + "lora.up.weight"
    state["unet.mid_block.no_such_block.to_q.lora.down.weight"] = state[down].clone()
    state["unet.mid_block.no_such_block.to_q.lora.up.weight"] = state[up].clone()
    save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(ModelError, match=r"extra.safetensors: part of the LoRA matches no module .*no_such_block"):
        LatentDiffusion.from_pretrained(base, lora=[(tmp_path / "extra.safetensors", 1.0)])


def test_bad_lora_files_and_arguments(sd, tmp_path):
    base, file, _ = sd
    pickled = tmp_path / "lora.bin"
    torch.save({"x": torch.zeros(1)}, pickled)
    with pytest.raises(ModelError, match=r"lora.bin: LoRA weights refused: diffaudit loads .safetensors only"):
        LatentDiffusion.from_pretrained(base, lora=[(pickled, 1.0)])
    with pytest.raises(ModelError, match="LoRA file does not exist"):
        LatentDiffusion.from_pretrained(base, lora=[(tmp_path / "nope.safetensors", 1.0)])
    with pytest.raises(InputError, match="LoRA scale must be a number"):
        LatentDiffusion.from_pretrained(base, lora=[(file, "x")])
    with pytest.raises(ModelError, match="not supported for the unet family"):
        LatentDiffusion.from_pretrained(save_tiny_model_folder(tmp_path / "px", "pixel"), lora=[(file, 1.0)])
    assert parse_lora_arg("a/b.safetensors") == (tmp_path.__class__("a/b.safetensors"), 1.0)
    assert parse_lora_arg("a/b.safetensors:0.5") == (tmp_path.__class__("a/b.safetensors"), 0.5)
    assert parse_lora_arg("c:/x:y.safetensors") == (tmp_path.__class__("c:/x:y.safetensors"), 1.0)
