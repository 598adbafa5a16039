"""`LatentDiffusion`: one interface over diffusers VAEs/VQ/UNets, SD pipelines and pixel space.

Conventions (SPEC §0, docs/contracts.md):
- `encode(x)` = s·(E(x) − shift) with s the VAE's scaling factor (posterior mean by default).
  VQModel: the *pre-quantization* latent (diffusers' `VQModel.encode(x).latents`, which is
  also what CompVis LDMs train their UNet on); quantization happens in `decode`.
- `decode(z)` = D(z/s + shift), float32 and differentiable. VQModel: quantize, then decode
  (diffusers' `VQModel.decode`). The geometry of a VQ decoder is taken *after* quantization
  (SPEC §5, App. E): use `geometry_decode` at the point `geometry_point(z)`, which for VQ are
  `decode_quantized` (no quantizer) at `quantize(z)`; for the others, `decode` at z.
- `eps(z_t, t, cond)` runs the UNet in its dtype and returns float32 ε̂;
  `v_prediction` is converted: ε = √ᾱ_t·v + √(1−ᾱ_t)·z_t.
- Pixel space (no VAE): encode/decode are the identity, scaling factor 1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .._checks import check_batched, check_finite
from ..errors import InputError, ModelError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def parse_dtype(dtype) -> torch.dtype:
    """torch dtype from 'float32' | 'float16' | 'bfloat16' (or a torch.dtype)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise InputError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")


def _place(module, device, dtype):
    """Move a module; cast only when needed (diffusers warns on every dtype cast)."""
    module = module.to(device)
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module = module.to(dtype)
    return module.eval().requires_grad_(False)


def _make_jvp_safe(vae) -> None:
    """Let geometry's forward-mode JVP through the VAE's attention (SPEC §3), if geometry offers it."""
    try:
        from ..geometry import prepare_decoder_for_jvp
    except ImportError:
        return
    prepare_decoder_for_jvp(vae)


class LatentDiffusion:
    """A (latent) diffusion model as the attacks and the geometry see it (docs/contracts.md)."""

    def __init__(self, unet, scheduler, vae=None, text_encoder=None, tokenizer=None, *, device="cpu",
                 dtype="float32", null_label: int | None = None, info: dict | None = None, source=None):
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.source = source  # folder the model came from, for messages and manifests
        self.info = dict(info or {})
        self.null_label = null_label if null_label is not None else self.info.get("null_label")
        self.unet = _place(unet, self.device, self.dtype)
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ModelError(f"{self._where('scheduler')}: prediction_type {self.prediction_type!r} is not supported "
                             f"(only epsilon and v_prediction map to ε)")
        self.alphas_cumprod = self._alphas_cumprod(scheduler).to(self.device)
        # The VAE and the text encoder stay float32: geometry is computed in float32 (issue 3).
        self.vae = None if vae is None else _place(vae, self.device, torch.float32)
        if self.vae is not None:
            _make_jvp_safe(self.vae)
        self.text_encoder = None if text_encoder is None else _place(text_encoder, self.device, torch.float32)
        self.tokenizer = tokenizer
        self.is_vq = self.vae is not None and type(self.vae).__name__ == "VQModel"
        cfg = self.vae.config if self.vae is not None else {}
        self.scaling_factor = float(cfg.get("scaling_factor", 1.0) or 1.0) if self.vae is not None else 1.0
        self.shift_factor = float(cfg.get("shift_factor") or 0.0) if self.vae is not None else 0.0
        self.conditioning = self._conditioning()

    # -- construction --
    @classmethod
    def from_pretrained(cls, directory, device="cpu", dtype="float32", variant=None, **kwargs) -> "LatentDiffusion":
        """Load a model folder (component folders or a full SD pipeline folder); never the hub."""
        from .loading import load_folder

        dtype = parse_dtype(dtype)
        return cls(**load_folder(directory, variant, unet_dtype=dtype), device=device, dtype=dtype, source=Path(directory), **kwargs)

    def _where(self, part: str) -> str:
        return str(Path(self.source) / part) if self.source is not None else part

    @staticmethod
    def _alphas_cumprod(scheduler) -> torch.Tensor:
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:  # schedulers without the table: DDPM from the same β config
            from diffusers import DDPMScheduler

            ac = DDPMScheduler.from_config(scheduler.config).alphas_cumprod
        return torch.as_tensor(ac, dtype=torch.float32).clone()

    def _conditioning(self) -> str:
        cfg = self.unet.config
        cross = type(self.unet).__name__ == "UNet2DConditionModel"
        if cross and self.text_encoder is not None:
            return "text"
        if cfg.get("num_class_embeds") is not None or cfg.get("class_embed_type") is not None:
            return "class"
        if cross:
            return "embedding"  # cross-attention without text encoder: cond is a [N, L, D] tensor
        return "none"

    # -- shapes --
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of the latents the UNet denoises."""
        cfg = self.unet.config
        size = cfg.get("sample_size")
        if size is None and self.vae is not None:
            size = self.vae.config.get("sample_size", 0) // self.downsampling
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(cfg["in_channels"]), int(h), int(w))

    @property
    def downsampling(self) -> int:
        """Spatial factor between image and latent (1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images `encode` expects."""
        c, h, w = self.latent_shape
        if self.vae is None:
            return (c, h, w)
        f = self.downsampling
        return (int(self.vae.config["in_channels"]), h * f, w * f)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    # -- VAE --
    def encode(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """z = s·(E(x) − shift) for images x in [-1, 1] [N, C, H, W] (posterior mean unless `sample`)."""
        check_batched(x, "images", min_dim=4)
        if tuple(x.shape[1:]) != self.image_shape:
            raise InputError(f"images have shape {tuple(x.shape[1:])}, the model expects {self.image_shape}")
        x = x.to(self.device, torch.float32)
        if self.vae is None:
            return x.clone()
        with torch.no_grad():
            out = self.vae.encode(x)
            if self.is_vq:
                h = out.latents
            elif sample:
                h = out.latent_dist.sample(generator=generator)
            else:
                h = out.latent_dist.mean
        return (h - self.shift_factor) * self.scaling_factor

    def _unscale(self, z: torch.Tensor) -> torch.Tensor:
        check_batched(z, "z", min_dim=4)
        return z.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = D(z/s + shift), float32, differentiable w.r.t. z (VQ: quantizes first)."""
        if self.vae is None:
            return z.to(self.device, torch.float32)
        return self.vae.decode(self._unscale(z)).sample

    def decode_quantized(self, zq: torch.Tensor) -> torch.Tensor:
        """VQ decoder *after* quantization: D(zq/s) with the quantizer skipped (App. E)."""
        if not self.is_vq:
            return self.decode(zq)
        return self.vae.decode(self._unscale(zq), force_not_quantize=True).sample

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entries of a (scaled) VQ latent, in the same scaling; identity otherwise."""
        if not self.is_vq:
            return z
        with torch.no_grad():
            zq = self.vae.quantize(self._unscale(z))[0]
        return zq * self.scaling_factor

    @property
    def geometry_decode(self):
        """The decoder the geometry differentiates (VQ: after quantization, SPEC §5)."""
        return self.decode_quantized if self.is_vq else self.decode

    def geometry_point(self, z: torch.Tensor) -> torch.Tensor:
        """Where to evaluate `geometry_decode` for the latent z (VQ: its quantized latent)."""
        return self.quantize(z) if self.is_vq else z

    # -- conditioning --
    def encode_cond(self, values):
        """Captions → CLIP embeddings [N, L, D] (float32); class labels → LongTensor [N]."""
        if isinstance(values, torch.Tensor):
            if values.is_floating_point():
                return values.to(self.device)
            return self._labels(values)
        values = list(values)
        if values and all(isinstance(v, str) for v in values):
            return self._embed_captions(values)
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return self._labels(torch.tensor(values))
        raise InputError("conditions must be all captions (str) or all class labels (int)")

    def _labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.conditioning != "class":
            raise ModelError(f"{self._where('unet')}: this model is not class-conditional; got class labels")
        n = self.unet.config.get("num_class_embeds")
        labels = labels.to(torch.long).flatten()
        if n is not None and ((labels < 0) | (labels >= n)).any():
            raise InputError(f"class labels must lie in [0, {n}), got {labels.min().item()}..{labels.max().item()}")
        return labels.to(self.device)

    def _embed_captions(self, captions: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None or self.text_encoder is None:
            raise ModelError(f"{self._where('text_encoder')}: this model has no text encoder; got captions")
        max_len = self.tokenizer.model_max_length
        if not max_len or max_len > 10_000:  # "very large" sentinel of tokenizers without a limit
            max_len = self.text_encoder.config.max_position_embeddings
        ids = self.tokenizer(list(captions), padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            return self.text_encoder(ids)[0].float()

    def uncond(self, n: int):
        """The null condition for n samples (classifier-free guidance): empty captions, the null
        class label (`null_label`, e.g. from diffaudit.json), or None for unconditional models."""
        if self.conditioning == "text":
            return self._embed_captions([""] * n)
        if self.conditioning == "none":
            return None
        if self.conditioning == "class" and self.null_label is not None:
            return torch.full((n,), int(self.null_label), dtype=torch.long, device=self.device)
        raise ModelError(f"{self._where('unet')}: no null condition is known for this {self.conditioning}-conditioned model")

    # -- noise prediction --
    def _timesteps(self, t, n: int) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point():
            raise InputError("timesteps must be integers")
        t = t.to(torch.long)
        if t.dim() == 0:
            t = t.expand(n)
        if tuple(t.shape) != (n,):
            raise InputError(f"timesteps must have shape [{n}], got {tuple(t.shape)}")
        if ((t < 0) | (t >= self.num_train_timesteps)).any():
            raise InputError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t.min().item()}..{t.max().item()}")
        return t.to(self.device)

    def _unet_kwargs(self, cond, n: int) -> dict:
        if self.conditioning == "none":
            return {}
        if cond is None:
            cond = self.uncond(n)
        if self.conditioning == "class":
            cond = self._labels(torch.as_tensor(cond))
            kw = {"class_labels": cond}
            if type(self.unet).__name__ == "UNet2DConditionModel":  # class embedding only, no text
                kw["encoder_hidden_states"] = torch.zeros(n, 1, self.unet.config["cross_attention_dim"],
                                                          device=self.device, dtype=self.dtype)
            return kw
        if not (isinstance(cond, torch.Tensor) and cond.is_floating_point() and cond.dim() == 3 and cond.shape[0] == n):
            raise InputError(f"text condition must be an embedding [N={n}, L, D] from encode_cond(captions)")
        return {"encoder_hidden_states": cond.to(self.device, self.dtype)}

    def eps(self, z_t: torch.Tensor, t, cond=None, ids=None) -> torch.Tensor:
        """ε̂_θ(z_t, t, c) in float32 on z_t's device; NaN/Inf → NonFiniteError naming `ids`."""
        check_batched(z_t, "z_t", min_dim=4)
        n = z_t.shape[0]
        if tuple(z_t.shape[1:]) != self.latent_shape:
            raise InputError(f"z_t has shape {tuple(z_t.shape[1:])}, the UNet expects {self.latent_shape}")
        t = self._timesteps(t, n)
        x = z_t.to(self.device, self.dtype)
        with torch.no_grad():
            out = self.unet(x, t, **self._unet_kwargs(cond, n)).sample.float()
        if out.shape[1] == 2 * z_t.shape[1]:  # learned variance: [ε, v] stacked on channels
            out = out[:, : z_t.shape[1]]
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * z_t.to(self.device, torch.float32)
        # without ids, name batch rows: bare indices would read as sample ids
        check_finite(out, "UNet", ids if ids is not None else [f"batch row {i}" for i in range(n)])
        return out.to(z_t.device)

    def __repr__(self) -> str:
        kind = "pixel" if self.vae is None else type(self.vae).__name__
        return (f"LatentDiffusion({kind}, {type(self.unet).__name__}, cond={self.conditioning}, "
                f"latent={self.latent_shape}, s={self.scaling_factor}, dtype={self.dtype}, device={self.device})")
