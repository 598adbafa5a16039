"""diffaudit.models: tiny diffusers models saved to disk and reloaded through LatentDiffusion.

Every value is checked against a direct call of the diffusers/transformers component.
"""
import json
import shutil

import pytest
import torch

from diffaudit.errors import InputError, ModelError, NonFiniteError
from diffaudit.models import LatentDiffusion
from diffaudit.models.tiny import (save_tiny_model_folder, tiny_autoencoder_kl, tiny_scheduler,
                                   tiny_unet2d, write_tiny_clip_tokenizer_files)

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {k: save_tiny_model_folder(root / k, k) for k in ("latent", "pixel", "class", "vq")}


def _images(model, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.image_shape, generator=g) * 2 - 1


def test_latent_folder_matches_direct_diffusers_calls(folders):
    d = folders["latent"]
    m = LatentDiffusion.from_pretrained(d)
    vae = diffusers.AutoencoderKL.from_pretrained(d / "vae")
    unet = diffusers.UNet2DModel.from_pretrained(d / "unet")
    x = _images(m)
    z = m.encode(x)
    assert m.scaling_factor == pytest.approx(0.18215) and m.latent_shape == (4, 8, 8)
    with torch.no_grad():
        ref_z = vae.encode(x).latent_dist.mean * 0.18215
        ref_x = vae.decode(ref_z / 0.18215).sample
        t = torch.tensor([3, 700])
        ref_eps = unet(ref_z, t).sample
    torch.testing.assert_close(z, ref_z)
    torch.testing.assert_close(m.decode(z).detach(), ref_x)
    torch.testing.assert_close(m.eps(z, t), ref_eps)
    assert m.decode(z.requires_grad_(True)).requires_grad  # differentiable for the geometry
    # posterior sample: seeded, differs from the mean
    s1 = m.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    s2 = m.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, z)
    ref_ac = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0).float()
    torch.testing.assert_close(m.alphas_cumprod, ref_ac)


def test_pixel_space_is_identity(folders):
    m = LatentDiffusion.from_pretrained(folders["pixel"])
    x = _images(m)
    assert m.scaling_factor == 1.0 and m.latent_shape == m.image_shape == (3, 16, 16)
    torch.testing.assert_close(m.encode(x), x)
    torch.testing.assert_close(m.decode(x), x)
    assert m.eps(x, 10).shape == x.shape and m.uncond(2) is None


def test_class_conditional(folders):
    d = folders["class"]
    m = LatentDiffusion.from_pretrained(d)
    unet = diffusers.UNet2DModel.from_pretrained(d / "unet")
    z = m.encode(_images(m))
    labels = m.encode_cond([1, 7])
    t = torch.tensor([50, 50])
    with torch.no_grad():
        ref = unet(z, t, class_labels=torch.tensor([1, 7])).sample
    torch.testing.assert_close(m.eps(z, t, labels), ref)
    assert not torch.allclose(m.eps(z, t, m.encode_cond([2, 2])), ref)
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        m.encode_cond([10, 0])
    with pytest.raises(ModelError, match="null condition"):
        m.uncond(2)
    with pytest.raises(ModelError, match="not class-conditional"):
        LatentDiffusion.from_pretrained(folders["latent"]).encode_cond([1])


def test_half_precision_unet_float32_everything_else(folders):
    ref = LatentDiffusion.from_pretrained(folders["latent"])
    m = LatentDiffusion.from_pretrained(folders["latent"], dtype="bfloat16")
    assert next(m.unet.parameters()).dtype == torch.bfloat16
    assert next(m.vae.parameters()).dtype == torch.float32
    z = m.encode(_images(m))
    assert z.dtype == torch.float32 and m.decode(z).dtype == torch.float32
    e, e_ref = m.eps(z, 100), ref.eps(z, 100)
    assert e.dtype == torch.float32
    assert (e - e_ref).abs().max() < 0.05 * e_ref.abs().max()  # bf16 keeps ~3 digits
    with pytest.raises(InputError, match="dtype"):
        LatentDiffusion.from_pretrained(folders["latent"], dtype="int8")


def test_v_prediction_is_converted_to_eps(tmp_path):
    d = save_tiny_model_folder(tmp_path / "v", "latent", prediction_type="v_prediction")
    m = LatentDiffusion.from_pretrained(d)
    unet = diffusers.UNet2DModel.from_pretrained(d / "unet")
    zt = torch.randn(3, *m.latent_shape)
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        v = unet(zt, t).sample
    a = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(m.eps(zt, t), a.sqrt() * v + (1 - a).sqrt() * zt)


def test_other_prediction_types_are_refused(tmp_path):
    d = save_tiny_model_folder(tmp_path / "s", "pixel", prediction_type="sample")
    with pytest.raises(ModelError, match="prediction_type 'sample'"):
        LatentDiffusion.from_pretrained(d)


def test_vq_decode_quantized_is_differentiable(folders):
    m = LatentDiffusion.from_pretrained(folders["vq"])
    z = m.encode(_images(m))
    zq = m.geometry_point(z)
    assert m.is_vq and m.geometry_decode == m.decode_quantized
    assert not torch.allclose(zq, z)  # encode gives the pre-quantization latent
    torch.testing.assert_close(m.decode(z).detach(), m.decode_quantized(zq).detach())
    torch.testing.assert_close(m.quantize(zq), zq)  # codebook entries are fixed points
    # J·v by autograd equals central differences of the post-quantization decoder
    v = torch.randn_like(zq)
    _, jv = torch.autograd.functional.jvp(m.decode_quantized, zq, v)
    h = 1e-3
    fd = (m.decode_quantized(zq + h * v) - m.decode_quantized(zq - h * v)).detach() / (2 * h)
    assert jv.abs().max() > 0
    assert (jv - fd).norm() / jv.norm() < 1e-2  # float32 differences: relative in norm


def test_text_pipeline_with_captions_from_metadata(tmp_path):
    pytest.importorskip("transformers")
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffaudit.data import FolderSource

    d = save_tiny_model_folder(tmp_path / "sd", "text")
    assert json.loads((d / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    # a classic SD folder keeps vocab.json + merges.txt instead of tokenizer.json: load that layout too
    shutil.rmtree(d / "tokenizer")
    write_tiny_clip_tokenizer_files(d / "tokenizer")
    (d / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    m = LatentDiffusion.from_pretrained(d)
    assert m.conditioning == "caption"
    # captions come from an image folder's metadata.jsonl (HF imagefolder convention)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    rows = []
    for i, cap in enumerate(["a red shirt", "an ankle boot"]):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(imgs / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": cap}))
    (imgs / "metadata.jsonl").write_text("\n".join(rows))
    items = list(FolderSource(imgs))
    captions = [meta["caption"] for _, _, meta in items]
    assert captions == ["a red shirt", "an ankle boot"]
    cond = m.encode_cond(captions)
    tok = CLIPTokenizer.from_pretrained(d / "tokenizer")
    enc = CLIPTextModel.from_pretrained(d / "text_encoder")
    with torch.no_grad():
        ref = enc(tok(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids)[0]
    torch.testing.assert_close(cond, ref)
    x = torch.stack([img for _, img, _ in items])
    z = m.encode(x)
    unet = diffusers.UNet2DConditionModel.from_pretrained(d / "unet")
    with torch.no_grad():
        ref_eps = unet(z, torch.tensor([20, 20]), encoder_hidden_states=ref).sample
    torch.testing.assert_close(m.eps(z, 20, cond), ref_eps)
    assert m.uncond(2).shape == cond.shape
    torch.testing.assert_close(m.eps(z, 20), m.eps(z, 20, m.uncond(2)))  # None means the null caption


def test_components_in_memory_and_input_checks():
    m = LatentDiffusion(unet=tiny_unet2d(), scheduler=tiny_scheduler(), vae=tiny_autoencoder_kl())
    z = torch.randn(2, 4, 8, 8)
    assert m.eps(z, torch.tensor([1, 2])).shape == z.shape
    with pytest.raises(InputError, match="expects"):
        m.eps(torch.randn(2, 4, 4, 4), 1)
    with pytest.raises(InputError, match=r"\[0, 1000\)"):
        m.eps(z, 1000)
    with pytest.raises(InputError, match="expects"):
        m.encode(torch.zeros(1, 1, 16, 16))
    with torch.no_grad():
        m.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="img-a, img-b"):
        m.eps(z, 5, ids=["img-a", "img-b"])


def test_bad_model_folders_name_the_path(tmp_path, folders):
    with pytest.raises(ModelError, match="does not exist"):
        LatentDiffusion.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty: no unet/"):
        LatentDiffusion.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    shutil.copytree(folders["latent"], bad)
    (bad / "vae" / "config.json").write_text(json.dumps({"_class_name": "BertModel", "hidden_size": 8}))
    with pytest.raises(ModelError, match=r"vae/config.json: not a diffusers VAE config"):
        LatentDiffusion.from_pretrained(bad)
    (bad / "vae" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"vae/config.json: unreadable"):
        LatentDiffusion.from_pretrained(bad)
    shutil.rmtree(bad / "vae")
    (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"bad/unet: cannot load UNet weights"):
        LatentDiffusion.from_pretrained(bad)


def test_pickled_weights_are_refused_before_loading(tmp_path, folders, pickle_payload):
    """Only safetensors load: a folder with pickled weights alone is refused naming the file,
    whether the pickle is a plain state dict or carries code (which never runs)."""
    d = tmp_path / "pickled"
    shutil.copytree(folders["pixel"], d)
    st = d / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    state = load_file(st)
    st.unlink()
    torch.save(state, d / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickled/unet: cannot load UNet weights \(pickled weights refused: "
                                         r"diffusion_pytorch_model.bin is a pickle"):
        LatentDiffusion.from_pretrained(d)
    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": pickle_payload(marker)}, d / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickled/unet: cannot load UNet weights \(pickled weights refused"):
        LatentDiffusion.from_pretrained(d)
    assert not marker.exists()
    # a .bin next to the safetensors is ignored (use_safetensors=True), not refused
    from safetensors.torch import save_file

    save_file(state, st)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(LatentDiffusion.from_pretrained(d).eps(x, 3),
                               LatentDiffusion.from_pretrained(folders["pixel"]).eps(x, 3))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["latent", "vq"])
def test_geometry_through_the_adapter_matches_the_full_jacobian(folders, kind):
    """Forward-mode JVP works through the adapter's decoder (attention made jvp-safe) and the
    randomized top singular values equal those of the full Jacobian (VQ: after quantization)."""
    geometry = pytest.importorskip("diffaudit.geometry")
    m = LatentDiffusion.from_pretrained(folders[kind])
    z = m.geometry_point(m.encode(_images(m)))
    sv = geometry.singular_values(m.geometry_decode, z, rank=4, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        J = torch.autograd.functional.jacobian(lambda u: m.geometry_decode(u[None])[0], z[i], vectorize=True).reshape(-1, z[i].numel())
        torch.testing.assert_close(sv[i], torch.linalg.svdvals(J)[:4], rtol=2e-3, atol=1e-5)


def test_condition_unet_with_class_embedding_only():
    from diffaudit.models.tiny import tiny_unet2d_condition

    unet = tiny_unet2d_condition(num_class_embeds=5)
    m = LatentDiffusion(unet=unet, scheduler=tiny_scheduler(), null_label=4)
    assert m.conditioning == "label" and m.encode(torch.zeros(1, 4, 8, 8)).shape == (1, 4, 8, 8)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([7, 9])
    with torch.no_grad():
        ref = unet(z, t, encoder_hidden_states=torch.zeros(2, 1, 32), class_labels=torch.tensor([0, 3])).sample
    torch.testing.assert_close(m.eps(z, t, m.encode_cond([0, 3])), ref)
    torch.testing.assert_close(m.uncond(2), torch.tensor([4, 4]))


def test_pickled_text_encoder_is_refused(tmp_path, pickle_payload):
    pytest.importorskip("transformers")
    d = save_tiny_model_folder(tmp_path / "sd", "text")
    (d / "text_encoder" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"text_model.embeddings.token_embedding.weight": pickle_payload(marker)}, d / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"sd/text_encoder: cannot load text encoder \(pickled weights refused"):
        LatentDiffusion.from_pretrained(d)
    assert not marker.exists()


def test_text_encoder_weights_missing_from_the_checkpoint_are_an_error(tmp_path):
    """transformers would leave them at random initialization (and only log it)."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    d = save_tiny_model_folder(tmp_path / "sd", "text")
    st = d / "text_encoder" / "model.safetensors"
    state = load_file(st)
    state.pop(next(k for k in state if k.endswith("final_layer_norm.weight")))
    save_file(state, st, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"weights missing from the checkpoint.*final_layer_norm"):
        LatentDiffusion.from_pretrained(d)
