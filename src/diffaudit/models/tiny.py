"""Tiny random diffusers models built from configs, for tests and benchmarks (no network).

Each builder seeds torch so two calls with the same arguments give the same weights.
`save_tiny_model_folder` writes the model-folder layout of docs/contracts.md.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

# Captions the tiny BPE vocabulary is learned from (any caption still tokenizes: byte fallback).
DEFAULT_CAPTIONS = (
    "a photo of a digit zero", "a photo of a digit one", "a handwritten two", "a drawing of a three",
    "a red shirt", "a blue shoe", "an ankle boot", "a bag on a table",
)


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_autoencoder_kl(in_channels: int = 3, latent_channels: int = 4, block_out_channels=(8, 16),
                        sample_size: int = 16, scaling_factor: float = 0.18215,
                        attention: bool = True, seed: int = 0):
    """AutoencoderKL with len(block_out_channels)-1 downsamplings (default 16² → 8²).

    `attention=True` keeps the mid-block attention of real SD VAEs (the hard case for
    forward-mode JVP, docs/method.md); pass False for a purely convolutional decoder.
    """
    from diffusers import AutoencoderKL

    _seeded(seed)
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=sample_size,
        scaling_factor=scaling_factor, mid_block_add_attention=attention,
    ).eval()


def tiny_vq_model(in_channels: int = 3, latent_channels: int = 3, block_out_channels=(8, 16),
                  sample_size: int = 16, num_vq_embeddings: int = 32, scaling_factor: float = 1.0,
                  attention: bool = False, seed: int = 0):
    """VQModel (App. E) with a small codebook; scaling factor 1 like CompVis' VQ first stages."""
    from diffusers import VQModel

    _seeded(seed)
    n = len(block_out_channels)
    return VQModel(
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=1,
        latent_channels=latent_channels, sample_size=sample_size, num_vq_embeddings=num_vq_embeddings,
        norm_num_groups=4, vq_embed_dim=latent_channels, scaling_factor=scaling_factor,
        mid_block_add_attention=attention,
    ).eval()


def tiny_unet2d(in_channels: int = 4, sample_size: int = 8, block_out_channels=(16, 32),
                num_class_embeds: int | None = None, attention: bool = False, seed: int = 0):
    """UNet2DModel (unconditional, or class-conditional with `num_class_embeds`)."""
    from diffusers import UNet2DModel

    _seeded(seed)
    down = ("DownBlock2D", "AttnDownBlock2D" if attention else "DownBlock2D")
    up = ("AttnUpBlock2D" if attention else "UpBlock2D", "UpBlock2D")
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=1,
        down_block_types=down, up_block_types=up, norm_num_groups=8, attention_head_dim=8,
        add_attention=attention, num_class_embeds=num_class_embeds,
    ).eval()


def tiny_unet2d_condition(in_channels: int = 4, sample_size: int = 8, block_out_channels=(16, 32),
                          cross_attention_dim: int = 32, num_class_embeds: int | None = None,
                          seed: int = 0, **config):
    """UNet2DConditionModel with cross-attention (captions) and optional class embedding;
    `config` adds UNet2DConditionModel arguments (e.g. SDXL's addition_embed_type)."""
    from diffusers import UNet2DConditionModel

    _seeded(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
        num_class_embeds=num_class_embeds, **config,
    ).eval()


def tiny_scheduler(prediction_type: str = "epsilon", num_train_timesteps: int = 1000):
    """DDPM linear β in [1e-4, 2e-2] (arXiv 2511.20592 App. H)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear",
                         beta_start=1e-4, beta_end=2e-2, prediction_type=prediction_type,
                         clip_sample=False, steps_offset=1)  # what SD pipelines expect; avoids their warnings


# -- a CLIP tokenizer written offline (docs/method.md, pitfalls) --

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _learn_merges(captions, n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE on the words of `captions` (CLIP marks word ends with `</w>`)."""
    words = Counter(w for c in captions for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", c.lower()))
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _count = pairs.most_common(1)[0]
        merges.append((a, b))
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def write_tiny_clip_tokenizer_files(directory, captions=DEFAULT_CAPTIONS, n_merges: int = 40) -> Path:
    """Write vocab.json + merges.txt (first line `#version: 0.2`) in CLIP's format."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = _learn_merges(captions, n_merges)
    vocab_list += ["".join(m) for m in merges if "".join(m) not in vocab_list]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return directory


def tiny_clip_text(captions=DEFAULT_CAPTIONS, hidden_size: int = 32, max_length: int = 16, seed: int = 0,
                   projection_dim: int | None = None):
    """(CLIPTextModel, CLIPTokenizer) built fully offline, ids consistent with the tiny vocab;
    with `projection_dim` a CLIPTextModelWithProjection (SDXL's second, SD3's encoders)."""
    import tempfile

    from ..errors import MissingExtraError  # noqa: F401  (require_extra raises it)
    from .._checks import require_extra

    transformers = require_extra("transformers", "text")
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_clip_tokenizer_files(tmp, captions)
        # from_pretrained reads the classic vocab.json/merges.txt layout (real SD folders have it)
        tok = transformers.CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length, local_files_only=True)
    _seeded(seed)
    cfg = transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **({"projection_dim": projection_dim} if projection_dim else {}),
    )
    cls = transformers.CLIPTextModelWithProjection if projection_dim else transformers.CLIPTextModel
    return cls(cfg).eval(), tok


def save_tiny_model_folder(directory, kind: str = "latent", image_size: int = 16, image_channels: int = 3,
                           prediction_type: str = "epsilon", num_classes: int = 10, captions=DEFAULT_CAPTIONS,
                           seed: int = 0) -> Path:
    """Write a tiny model folder in the layout of docs/contracts.md and return its path.

    kind: "latent" (AutoencoderKL + UNet2DModel), "pixel" (UNet2DModel, no vae/),
    "class" (AutoencoderKL + class-conditional UNet2DModel), "vq" (VQModel + UNet2DModel),
    "text" (a StableDiffusionPipeline folder: CLIP text encoder + tokenizer, model_index.json).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    latent = image_size // 2
    sched = tiny_scheduler(prediction_type)
    if kind == "pixel":
        unet = tiny_unet2d(in_channels=image_channels, sample_size=image_size, seed=seed)
        vae = None
    elif kind in ("latent", "class"):
        vae = tiny_autoencoder_kl(in_channels=image_channels, sample_size=image_size, seed=seed)
        unet = tiny_unet2d(in_channels=4, sample_size=latent, seed=seed + 1,
                           num_class_embeds=num_classes if kind == "class" else None)
    elif kind == "vq":
        vae = tiny_vq_model(in_channels=image_channels, sample_size=image_size, seed=seed)
        unet = tiny_unet2d(in_channels=3, sample_size=latent, seed=seed + 1)
    elif kind == "text":
        from diffusers import StableDiffusionPipeline

        vae = tiny_autoencoder_kl(in_channels=image_channels, sample_size=image_size, seed=seed)
        unet = tiny_unet2d_condition(in_channels=4, sample_size=latent, seed=seed + 1)
        text_encoder, tokenizer = tiny_clip_text(captions, seed=seed + 2)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(directory, safe_serialization=True)
        return directory
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: latent, pixel, class, vq or text")
    if vae is not None:
        vae.save_pretrained(directory / "vae", safe_serialization=True)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    sched.save_pretrained(directory / "scheduler")
    return directory
