"""Pipeline folders of every family, built tiny in code, loaded through diffaudit: `eps` equals a
hand computation from the raw components (tokenizers, text encoders, denoiser, loaded directly
with transformers / diffusers) for the same inputs, conditioning included."""
import json

import pytest
import torch

from diffaudit.errors import InputError, ModelError
from diffaudit.models import DiffusionModel, LatentDiffusion
from diffaudit.models.tiny_pipelines import save_tiny_pipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
CAPS = ["a red shirt", "an ankle boot"]
T = torch.tensor([3, 640])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pipelines")


def _latents(m, seed=0):
    return torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(seed))


def _clip(folder, sub_tok, sub_enc, captions, with_projection=False):
    """(penultimate hidden states, pooled output / text_embeds) of a CLIP encoder, by hand."""
    tok = transformers.CLIPTokenizer.from_pretrained(folder / sub_tok)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    enc = cls.from_pretrained(folder / sub_enc)
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = enc(ids, output_hidden_states=True)
    return out.hidden_states[-2], (out.text_embeds if with_projection else out.pooler_output)


def _t5(folder, sub_tok, sub_enc, captions, max_length, masked=True):
    """T5 states, by hand; PixArt passes the attention mask to T5, SD3 and FLUX do not."""
    tok = transformers.T5TokenizerFast.from_pretrained(folder / sub_tok)
    enc = transformers.T5EncoderModel.from_pretrained(folder / sub_enc)
    b = tok(captions, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
            return_tensors="pt")
    with torch.no_grad():
        return enc(b.input_ids, attention_mask=b.attention_mask if masked else None)[0], b.attention_mask


def test_sdxl(root):
    d = save_tiny_pipeline(root / "sdxl", "sdxl")
    m = LatentDiffusion.from_pretrained(d)
    assert type(m).__name__ == "SDXLModel" and isinstance(m, DiffusionModel) and m.conditioning == "caption"
    h1, _ = _clip(d, "tokenizer", "text_encoder", CAPS)
    h2, pooled = _clip(d, "tokenizer_2", "text_encoder_2", CAPS, with_projection=True)
    unet = diffusers.UNet2DConditionModel.from_pretrained(d / "unet")
    z = _latents(m)
    time_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)  # original = target = the image size, crop (0, 0)
    with torch.no_grad():
        ref = unet(z, T, encoder_hidden_states=torch.cat([h1, h2], -1),
                   added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        null = unet(z, T, encoder_hidden_states=torch.zeros(2, 16, 32),  # force_zeros_for_empty_prompt
                    added_cond_kwargs={"text_embeds": torch.zeros(2, 16), "time_ids": time_ids}).sample
    torch.testing.assert_close(m.eps(z, T, m.encode_cond(CAPS)), ref)
    torch.testing.assert_close(m.eps(z, T), null)
    m.original_size = (32, 24)  # micro-conditions are settable
    with torch.no_grad():
        ref2 = unet(z, T, encoder_hidden_states=torch.cat([h1, h2], -1),
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.tensor([[32.0, 24, 0, 0, 16, 16]] * 2)}).sample
    torch.testing.assert_close(m.eps(z, T, m.encode_cond(CAPS)), ref2)
    with pytest.raises(InputError, match="does not fit"):
        m.eps(z, T, torch.zeros(2, 7))


def test_sdxl_without_zeroed_negative_prompt_uses_the_empty_caption(root):
    d = save_tiny_pipeline(root / "sdxl-nz", "sdxl", force_zeros_for_empty_prompt=False)
    m = LatentDiffusion.from_pretrained(d)
    torch.testing.assert_close(m.uncond(2), m.encode_cond(["", ""]))


def test_dit(root):
    d = save_tiny_pipeline(root / "dit", "dit", num_classes=4)
    m = LatentDiffusion.from_pretrained(d)
    assert type(m).__name__ == "DiTModel" and m.conditioning == "label" and m.null_label == 4
    tr = diffusers.DiTTransformer2DModel.from_pretrained(d / "transformer")
    z = _latents(m)
    with torch.no_grad():
        ref = tr(z, timestep=T, class_labels=torch.tensor([1, 3])).sample[:, :4]  # learned σ: ε is the first C channels
        null = tr(z, timestep=T, class_labels=torch.tensor([4, 4])).sample[:, :4]
    torch.testing.assert_close(m.eps(z, T, m.encode_cond([1, 3])), ref)
    torch.testing.assert_close(m.eps(z, T), null)
    with pytest.raises(InputError, match=r"\[0, 5\)"):
        m.encode_cond([5, 0])
    with pytest.raises(ModelError, match="has no text encoder"):
        m.encode_cond(CAPS)


@pytest.mark.parametrize("sigma", [False, True])
def test_pixart(root, sigma):
    d = save_tiny_pipeline(root / f"pixart-{sigma}", "pixart", sigma=sigma)
    m = LatentDiffusion.from_pretrained(d)
    assert type(m).__name__ == ("PixArtSigmaModel" if sigma else "PixArtAlphaModel") and m.conditioning == "caption"
    max_len = 300 if sigma else 120  # the pipelines' default max_sequence_length
    emb, mask = _t5(d, "tokenizer", "text_encoder", CAPS, max_len)
    emb0, mask0 = _t5(d, "tokenizer", "text_encoder", ["", ""], max_len)
    tr = diffusers.PixArtTransformer2DModel.from_pretrained(d / "transformer")
    z = _latents(m)
    none = {"resolution": None, "aspect_ratio": None}
    with torch.no_grad():
        ref = tr(z, encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=T, added_cond_kwargs=none).sample[:, :4]
        null = tr(z, encoder_hidden_states=emb0, encoder_attention_mask=mask0, timestep=T, added_cond_kwargs=none).sample[:, :4]
    cond = m.encode_cond(CAPS)
    assert cond.shape == (2, max_len, 33) and mask.sum() < mask.numel()  # the mask is really used
    torch.testing.assert_close(m.eps(z, T, cond), ref)
    torch.testing.assert_close(m.eps(z, T), null)


def _flow_by_hand(z_vp, t, velocity):
    sigma = (t.double() / 1000).view(-1, 1, 1, 1)
    s = ((1 - sigma) ** 2 + sigma ** 2).sqrt()
    x = (z_vp * s).float()
    return x + (1 - sigma).float() * velocity(x, sigma.flatten())


def test_sd3(root):
    d = save_tiny_pipeline(root / "sd3", "sd3")
    m = LatentDiffusion.from_pretrained(d)
    assert type(m).__name__ == "SD3Model" and m.prediction_type == "flow_prediction" and m.conditioning == "caption"
    vae = diffusers.AutoencoderKL.from_pretrained(d / "vae")
    x = torch.rand(2, *m.image_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref_z = (vae.encode(x).latent_dist.mean - 0.0609) * 1.5305  # SD3's shift and scaling factors
    torch.testing.assert_close(m.encode(x), ref_z)
    torch.testing.assert_close(m.decode(ref_z).detach(), vae.decode(ref_z / 1.5305 + 0.0609).sample.detach())

    def embeds(captions):
        h1, p1 = _clip(d, "tokenizer", "text_encoder", captions, with_projection=True)
        h2, p2 = _clip(d, "tokenizer_2", "text_encoder_2", captions, with_projection=True)
        t5, _ = _t5(d, "tokenizer_3", "text_encoder_3", captions, 256, masked=False)
        clip = torch.nn.functional.pad(torch.cat([h1, h2], -1), (0, t5.shape[-1] - 32))
        return torch.cat([clip, t5], dim=-2), torch.cat([p1, p2], -1)

    tr = diffusers.SD3Transformer2DModel.from_pretrained(d / "transformer")
    z = _latents(m)

    def velocity(captions):
        e, p = embeds(captions)
        return lambda x, sigma: tr(hidden_states=x, timestep=(sigma * 1000).float(), encoder_hidden_states=e,
                                   pooled_projections=p).sample

    with torch.no_grad():
        ref = _flow_by_hand(z, T, velocity(CAPS))
        null = _flow_by_hand(z, T, velocity(["", ""]))
    torch.testing.assert_close(m.eps(z, T, m.encode_cond(CAPS)), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.eps(z, T), null, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flux(root, guidance_embeds):
    d = save_tiny_pipeline(root / f"flux-{guidance_embeds}", "flux", guidance_embeds=guidance_embeds)
    m = LatentDiffusion.from_pretrained(d)
    assert type(m).__name__ == "FluxModel" and m.latent_shape == (4, 8, 8) and m.shift_factor == pytest.approx(0.1159)
    _, pooled = _clip(d, "tokenizer", "text_encoder", CAPS)
    t5, _ = _t5(d, "tokenizer_2", "text_encoder_2", CAPS, 512, masked=False)
    tr = diffusers.FluxTransformer2DModel.from_pretrained(d / "transformer")
    z = _latents(m)

    def velocity(x, sigma):
        n, c, h, w = x.shape
        tokens = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w // 4, 4 * c)
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
        out = tr(hidden_states=tokens, timestep=sigma.float(), encoder_hidden_states=t5, pooled_projections=pooled,
                 guidance=torch.full((n,), 3.5) if guidance_embeds else None, txt_ids=torch.zeros(512, 3),
                 img_ids=img_ids).sample
        return out.reshape(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)

    with torch.no_grad():
        ref = _flow_by_hand(z, T, velocity)
    torch.testing.assert_close(m.eps(z, T, m.encode_cond(CAPS)), ref, rtol=1e-5, atol=1e-5)
    if guidance_embeds:  # the guidance value reaches the network
        m.guidance = 1.0
        assert not torch.allclose(m.eps(z, T, m.encode_cond(CAPS)), ref)


def test_reduced_precision_pipeline_keeps_vae_and_text_in_float32(root):
    d = save_tiny_pipeline(root / "sdxl-bf16", "sdxl")
    ref = LatentDiffusion.from_pretrained(d)
    m = LatentDiffusion.from_pretrained(d, dtype="bfloat16")
    assert next(m.denoiser.parameters()).dtype == torch.bfloat16
    assert next(m.vae.parameters()).dtype == torch.float32 and next(m.text_encoder_2.parameters()).dtype == torch.float32
    z, c = _latents(m), ref.encode_cond(CAPS)
    torch.testing.assert_close(m.encode_cond(CAPS), c)
    e, e_ref = m.eps(z, T, c), ref.eps(z, T, c)
    assert (e - e_ref).abs().max() < 0.05 * e_ref.abs().max()


def test_mismatched_pipeline_and_denoiser_is_one_line(root, tmp_path):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(save_tiny_pipeline(root / "sdxl-mis", "sdxl"), d)
    index = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelError, match=r"a StableDiffusionPipeline folder, but unet/config.json holds a sdxl denoiser"):
        LatentDiffusion.from_pretrained(d)


def test_sd3_without_t5_uses_zeros_for_it(root, tmp_path):
    import shutil

    d = tmp_path / "sd3-no-t5"
    shutil.copytree(save_tiny_pipeline(root / "sd3-t5", "sd3"), d)
    index = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": [None, None], "tokenizer_3": [None, None]}))
    shutil.rmtree(d / "text_encoder_3")
    m = LatentDiffusion.from_pretrained(d)
    assert m.text_encoder_3 is None and m.conditioning == "caption"
    emb, pooled = m._split(m.encode_cond(CAPS))
    assert emb.shape == (2, 16 + 256, 32) and (emb[:, 16:] == 0).all() and pooled.abs().sum() > 0


def test_unet_pipeline_folders_and_a_transformer_component_folder(root, tmp_path):
    """DDPMPipeline (pixel) and LDMPipeline (its VQ first stage is `vqvae/`) folders load through
    diffusers; a DiT in a component folder (transformer/ vae/ scheduler/) loads part by part."""
    from diffaudit.models.tiny import tiny_scheduler, tiny_unet2d, tiny_vq_model

    diffusers.DDPMPipeline(unet=tiny_unet2d(in_channels=3, sample_size=16), scheduler=tiny_scheduler()).save_pretrained(tmp_path / "ddpm")
    m = LatentDiffusion.from_pretrained(tmp_path / "ddpm")
    assert m.kind == "pixel" and m.family == "unet" and m.image_shape == (3, 16, 16)
    vq, unet = tiny_vq_model(), tiny_unet2d(in_channels=3, sample_size=8)
    diffusers.LDMPipeline(vqvae=vq, unet=unet, scheduler=diffusers.DDIMScheduler()).save_pretrained(tmp_path / "ldm")
    m = LatentDiffusion.from_pretrained(tmp_path / "ldm")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert m.kind == "vq" and m.image_shape == (3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x), vq.encode(x).latents)
        torch.testing.assert_close(m.eps(m.encode(x), T), unet(vq.encode(x).latents, T).sample)
    pipe = diffusers.DiffusionPipeline.from_pretrained(save_tiny_pipeline(root / "dit-c", "dit"))
    for part in ("transformer", "vae", "scheduler"):
        getattr(pipe, part).save_pretrained(tmp_path / "dit-components" / part)
    m = LatentDiffusion.from_pretrained(tmp_path / "dit-components")
    z = _latents(m)
    with torch.no_grad():
        ref = pipe.transformer(z, timestep=T, class_labels=torch.tensor([0, 2])).sample[:, :4]
    torch.testing.assert_close(m.eps(z, T, m.encode_cond([0, 2])), ref)


def test_the_docs_table_lists_every_family():
    from pathlib import Path

    from diffaudit.models.registry import FAMILIES

    doc = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    table = doc.split("## Supported families")[1].split("\n\n")[1]
    for fam in FAMILIES:
        assert f"`{fam.name}`" in table and f"`{fam.denoiser}`" in table, fam.name
        assert all(f"`{p}`" in table for p in fam.pipelines), fam.name
