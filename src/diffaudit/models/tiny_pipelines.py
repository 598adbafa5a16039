"""Tiny random pipeline folders of every supported family, built in code (no network), as
diffusers' own fast tests build theirs, and written with `save_pretrained(safe_serialization=True)`.

`save_tiny_pipeline(directory, family)` writes one; each builder seeds torch so the same call
gives the same weights. Tokenizers are learned offline from a few captions: CLIP's BPE
(`models.tiny`) and a T5 Unigram tokenizer (`tiny_t5_text`).
"""
from __future__ import annotations

from pathlib import Path

from .library_logs import quiet_libraries
from .tiny import DEFAULT_CAPTIONS, _seeded, tiny_autoencoder_kl, tiny_clip_text, tiny_unet2d_condition


def tiny_t5_tokenizer(captions=DEFAULT_CAPTIONS, vocab_size: int = 64, max_length: int = 32):
    """A T5TokenizerFast from the `tokenizers` library's Unigram trainer (pad 0, </s> 1, <unk> 2,
    as T5's); "$A </s>" post-processing, as T5 appends the end-of-sequence token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(list(captions), trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           model_max_length=max_length, extra_ids=0)


def tiny_t5_text(captions=DEFAULT_CAPTIONS, d_model: int = 32, max_length: int = 32, seed: int = 0):
    """(T5EncoderModel, T5TokenizerFast): one layer, 4 heads, relative attention (no length limit)."""
    from transformers import T5Config, T5EncoderModel

    tok = tiny_t5_tokenizer(captions, max_length=max_length)
    _seeded(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
                   eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0)
    return T5EncoderModel(cfg).eval(), tok


def _vp_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  steps_offset=1, timestep_spacing="leading")


def tiny_sdxl(image_size: int = 16, captions=DEFAULT_CAPTIONS, seed: int = 0, force_zeros_for_empty_prompt=True):
    """StableDiffusionXLPipeline: two CLIP encoders (16 + 16 = cross-attention 32), pooled 16."""
    from diffusers import StableDiffusionXLPipeline

    te1, tok1 = tiny_clip_text(captions, hidden_size=16, seed=seed + 2)
    te2, tok2 = tiny_clip_text(captions, hidden_size=16, seed=seed + 3, projection_dim=16)
    unet = tiny_unet2d_condition(sample_size=image_size // 2, cross_attention_dim=32, seed=seed + 1,
                                 addition_embed_type="text_time", addition_time_embed_dim=8,
                                 projection_class_embeddings_input_dim=6 * 8 + 16, use_linear_projection=True)
    vae = tiny_autoencoder_kl(sample_size=image_size, scaling_factor=0.13025, seed=seed)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                     unet=unet, scheduler=_vp_scheduler(), add_watermarker=False,
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)


def tiny_dit(image_size: int = 16, num_classes: int = 4, learned_sigma: bool = True, seed: int = 0):
    """DiTPipeline: class-conditional transformer, patch 2, one layer; learned σ doubles the output."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    _seeded(seed + 1)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                        out_channels=8 if learned_sigma else 4, num_layers=1, norm_num_groups=4,
                                        sample_size=image_size // 2, patch_size=2, num_embeds_ada_norm=num_classes)
    vae = tiny_autoencoder_kl(sample_size=image_size, seed=seed)
    sched = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2, clip_sample=False)
    return DiTPipeline(transformer=transformer.eval(), vae=vae, scheduler=sched,
                       id2label={i: f"class {i}" for i in range(num_classes)})


def tiny_pixart(image_size: int = 16, captions=DEFAULT_CAPTIONS, sigma: bool = False, seed: int = 0):
    """PixArtAlphaPipeline (or Σ): T5 encoder (32), cross-attention transformer, learned σ."""
    import diffusers

    text_encoder, tokenizer = tiny_t5_text(captions, seed=seed + 2)
    _seeded(seed + 1)
    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, norm_num_groups=4,
        cross_attention_dim=16, caption_channels=32, sample_size=image_size // 2, patch_size=2)
    vae = tiny_autoencoder_kl(sample_size=image_size, seed=seed)
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2)
    cls = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer.eval(), scheduler=sched)


def _flow_scheduler(**kw):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **kw)


def tiny_sd3(image_size: int = 16, captions=DEFAULT_CAPTIONS, seed: int = 0):
    """StableDiffusion3Pipeline: CLIP-L and CLIP-G stand-ins (16 each, projections 16), T5 (32),
    a 16-channel-style VAE reduced to 4 channels, with SD3's scaling and shift factors."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    te1, tok1 = tiny_clip_text(captions, hidden_size=16, seed=seed + 2, projection_dim=16)
    te2, tok2 = tiny_clip_text(captions, hidden_size=16, seed=seed + 3, projection_dim=16)
    te3, tok3 = tiny_t5_text(captions, seed=seed + 4)
    _seeded(seed + 1)
    transformer = SD3Transformer2DModel(sample_size=image_size // 2, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
                                        pos_embed_max_size=image_size)
    vae = tiny_autoencoder_kl(sample_size=image_size, scaling_factor=1.5305, seed=seed)
    vae.register_to_config(shift_factor=0.0609)
    return StableDiffusion3Pipeline(transformer=transformer.eval(), scheduler=_flow_scheduler(shift=3.0), vae=vae,
                                    text_encoder=te1, tokenizer=tok1, text_encoder_2=te2, tokenizer_2=tok2,
                                    text_encoder_3=te3, tokenizer_3=tok3)


def tiny_flux(image_size: int = 16, captions=DEFAULT_CAPTIONS, guidance_embeds: bool = True, seed: int = 0):
    """FluxPipeline: CLIP (pooled 16), T5 (32), packed 2×2 latent patches (4 channels → 16)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    te1, tok1 = tiny_clip_text(captions, hidden_size=16, seed=seed + 2)
    te2, tok2 = tiny_t5_text(captions, seed=seed + 3)
    _seeded(seed + 1)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 4, 8))
    vae = tiny_autoencoder_kl(sample_size=image_size, scaling_factor=0.3611, seed=seed)
    vae.register_to_config(shift_factor=0.1159)
    sched = _flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    return FluxPipeline(scheduler=sched, vae=vae, text_encoder=te1, tokenizer=tok1, text_encoder_2=te2,
                        tokenizer_2=tok2, transformer=transformer.eval())


BUILDERS = {"sdxl": tiny_sdxl, "dit": tiny_dit, "pixart": tiny_pixart, "sd3": tiny_sd3, "flux": tiny_flux}


def save_tiny_pipeline(directory, family: str, **kwargs) -> Path:
    """Write a tiny pipeline folder of `family` (sdxl, dit, pixart, sd3, flux) and return its path."""
    directory = Path(directory)
    if family not in BUILDERS:
        raise ValueError(f"unknown tiny pipeline family {family!r}: {', '.join(BUILDERS)}")
    pipe = BUILDERS[family](**kwargs)
    with quiet_libraries():  # no "Writing model shards" bars in test logs
        pipe.save_pretrained(directory, safe_serialization=True)
    return directory


__all__ = ["BUILDERS", "save_tiny_pipeline", "tiny_t5_text", "tiny_t5_tokenizer"]


def inject_tiny_lora(module, targets, r: int, alpha: int, seed: int) -> dict:
    """LoRA layers with random A and B (B ≠ 0, unlike a fresh LoRA) injected by peft into `module`;
    returns their peft state dict (keys "<module>.lora_A.weight" / "lora_B.weight")."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    _seeded(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=False, target_modules=list(targets))
    inject_adapter_in_model(config, module)
    module.peft_config = {"default": config}
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(module).items()}


UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def save_tiny_lora(base, out, text: bool = True, seed: int = 0, rank: int = 4, alpha: int = 8):
    """A LoRA for the pipeline folder `base` (SD 1.x / SDXL: UNet attention, and CLIP attention of
    the first text encoder with `text`), made by peft and saved by the pipeline's
    `save_lora_weights` as diffusers' training scripts do. Returns (file, layers) with layers
    {"unet" | "text_encoder": (peft state dict, α/r)} for fusing by hand."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    with quiet_libraries():
        pipe = DiffusionPipeline.from_pretrained(base, local_files_only=True, use_safetensors=True)
    unet = inject_tiny_lora(pipe.unet, UNET_LORA_TARGETS, rank, alpha, seed)
    kw = {"unet_lora_layers": convert_state_dict_to_diffusers(unet),
          "unet_lora_adapter_metadata": pipe.unet.peft_config["default"].to_dict()}
    layers = {"unet": (unet, alpha / rank), "text_encoder": (None, 1.0)}
    if text:
        te = inject_tiny_lora(pipe.text_encoder, CLIP_LORA_TARGETS, 2, 2, seed + 1)
        kw["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(te)
        kw["text_encoder_lora_adapter_metadata"] = pipe.text_encoder.peft_config["default"].to_dict()
        layers["text_encoder"] = (te, 1.0)
    with quiet_libraries():
        type(pipe).save_lora_weights(out, safe_serialization=True, **kw)
    return Path(out) / "pytorch_lora_weights.safetensors", layers
