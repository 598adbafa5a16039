"""`LatentDiffusion`: the base adapter every model family subclasses (docs/models.md).

The shared part lives here: the first stage (VAE / VQ / identity), the schedule, shape and
timestep checks, the condition dispatch, and the ε̂ entry point. A family subclass (in
`models.families`) says only how its denoiser is called, as k-diffusion's `external.py`
wrappers override how ε̂ is obtained; `models.registry.FAMILIES` chooses the subclass from the
denoiser's class and config. `LatentDiffusion(...)` and `LatentDiffusion.from_pretrained(...)`
return an instance of the right subclass.

Conventions (docs/contracts.md §Models):
- `encode(x)` = s·(E(x) − shift) with s the VAE's scaling factor (posterior mean by default).
  VQModel: the *pre-quantization* latent (diffusers' `VQModel.encode(x).latents`, what CompVis
  LDMs train their UNet on); quantization happens in `decode`.
- `decode(z)` = D(z/s + shift), float32 and differentiable. The geometry of a VQ decoder is taken
  *after* quantization (arXiv:2511.20592 App. E): `geometry_decode` at `geometry_point(z)`.
- `eps(z_t, t, cond)` runs the denoiser in its dtype and returns float32 ε̂; v-prediction is
  converted (ε = √ᾱ_t·v + √(1−ᾱ_t)·z_t), a flow model goes through its VP-equivalent.
- Pixel space (no VAE): encode/decode are the identity, scaling factor 1.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from .._checks import check_batched, check_finite
from ..diffusion import check_timesteps
from ..errors import InputError, ModelError
from .conditioning import Conditioning
from .first_stage import FirstStage
from .placement import parse_dtype, place
from .schedules import schedule_of
from .text import build_pipeline, fix_tokenizer_limits

# pipeline components an adapter may hold besides denoiser, scheduler and first stage
TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")


def _denoiser_arg(args, kwargs):
    picked = [v for v in (args[0] if args else None, kwargs.get("denoiser"), kwargs.get("unet"),
                          kwargs.get("transformer")) if v is not None]
    if len(picked) != 1:
        raise InputError("pass exactly one denoiser (denoiser=, unet= or transformer=)")
    return picked[0]


class LatentDiffusion(Conditioning):
    """A (latent) diffusion model as the attacks and the geometry see it (`models.contract`)."""

    family = "base"  # the registry's name for the family (set by each subclass)
    schedule_kinds: tuple[str, ...] = ("vp",)  # schedules (models.schedules) the family accepts
    denoiser_folder = "unet"  # the pipeline component (and folder) that holds the denoiser
    pipeline_class: str | None = None  # diffusers pipeline whose encode_prompt the family uses

    def __new__(cls, *args, **kwargs):
        if cls is LatentDiffusion:  # pick the family subclass from the denoiser (registry table)
            from .registry import family_of

            cls = family_of(_denoiser_arg(args, kwargs)).adapter()
        return super().__new__(cls)

    def __init__(self, denoiser=None, scheduler=None, vae=None, text_encoder=None, tokenizer=None, *,
                 unet=None, transformer=None, pipeline=None, device="cpu", dtype="float32",
                 null_label: int | None = None, info: dict | None = None, source=None, **components):
        unknown = sorted(set(components) - set(TEXT_COMPONENTS))
        if unknown:
            raise InputError(f"unknown model components: {', '.join(unknown)}")
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.source = source  # folder the model came from, for messages and manifests
        self.info = dict(info or {})
        self.loras: list[tuple[str, float]] = []  # (file, scale) of every LoRA applied, for the weights hash
        self.null_label = null_label if null_label is not None else self.info.get("null_label")
        self.denoiser = place(_denoiser_arg((denoiser,), {"unet": unet, "transformer": transformer}),
                              self.device, self.dtype)
        if scheduler is None:
            raise InputError("a scheduler is needed (it defines alphas_cumprod)")
        self.scheduler = scheduler
        self.schedule = schedule_of(scheduler, self._where("scheduler"))
        if self.schedule.kind not in self.schedule_kinds:
            raise ModelError(f"{self._where('scheduler')}: {self.schedule.scheduler_class} is a {self.schedule.kind} "
                             f"scheduler; the {self.family} family expects a {' or '.join(self.schedule_kinds)} one")
        self.prediction_type = self.schedule.prediction_type
        self.alphas_cumprod = self.schedule.alphas_cumprod.to(self.device)
        # The first stage and the text encoders stay float32: geometry is computed in float32.
        self.first_stage = FirstStage(vae, self.device)
        self.vae = self.first_stage.vae
        self.kind = self.first_stage.kind
        self.scaling_factor, self.shift_factor = self.first_stage.scaling_factor, self.first_stage.shift_factor
        text = {"text_encoder": text_encoder, "tokenizer": tokenizer, **components}
        for name in TEXT_COMPONENTS:
            part = text.get(name)
            if part is not None and isinstance(part, torch.nn.Module):
                part = place(part, self.device, torch.float32)
            setattr(self, name, part)
        fix_tokenizer_limits([(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2),
                              (self.tokenizer_3, self.text_encoder_3)])
        self.pipeline = pipeline
        self.conditioning = self._resolve_conditioning()

    # -- construction --
    @classmethod
    def from_pretrained(cls, directory, device="cpu", dtype="float32", variant=None, lora=None,
                        **kwargs) -> "LatentDiffusion":
        """Load a model folder (component folders or a diffusers pipeline folder); never the hub.

        lora: [(path, scale), ...] LoRA files applied through diffusers' `load_lora_weights`.
        """
        from .loading import load_folder

        dtype = parse_dtype(dtype)
        parts = load_folder(directory, variant, denoiser_dtype=dtype)
        family = parts.pop("family")
        adapter = family.adapter()
        if not issubclass(adapter, cls):
            raise ModelError(f"{directory}: a {family.name} model folder, not a {cls.__name__}")
        model = adapter(**parts, device=device, dtype=dtype, source=Path(directory), **kwargs)
        if lora:
            from .lora import apply_loras

            apply_loras(model, lora)
        return model

    def _where(self, part: str) -> str:
        return str(Path(self.source) / part) if self.source is not None else part

    @property
    def unet(self):
        """The denoiser (the name predates transformer families)."""
        return self.denoiser

    @property
    def text_pipeline(self):
        """The diffusers pipeline prompts go through (built over this model's modules if the
        model was not loaded from a pipeline folder)."""
        if self.pipeline is None:
            parts = {"vae": self.vae, self.denoiser_folder: self.denoiser,
                     "scheduler": copy.deepcopy(self.scheduler),  # pipelines may rewrite their scheduler's config
                     **{k: getattr(self, k) for k in TEXT_COMPONENTS}}
            self.pipeline = build_pipeline(self.pipeline_class, parts)
        return self.pipeline

    # -- shapes --
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of the latents the denoiser denoises."""
        cfg = self.denoiser.config
        size = cfg.get("sample_size")
        if size is None and self.vae is not None:
            size = self.vae.config.get("sample_size", 0) // self.downsampling
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(cfg["in_channels"]), int(h), int(w))

    @property
    def downsampling(self) -> int:
        """Spatial factor between image and latent (1 in pixel space)."""
        return self.first_stage.downsampling

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images `encode` expects."""
        return self.first_stage.image_shape(self.latent_shape)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    # -- first stage (models.first_stage) --
    @property
    def is_vq(self) -> bool:
        return self.kind == "vq"

    def encode(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """z = s·(E(x) − shift) for images x in [-1, 1] [N, C, H, W] (posterior mean unless `sample`)."""
        check_batched(x, "images", min_dim=4)
        if tuple(x.shape[1:]) != self.image_shape:
            raise InputError(f"images have shape {tuple(x.shape[1:])}, the model expects {self.image_shape}")
        return self.first_stage.encode(x, sample, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = D(z/s + shift), float32, differentiable w.r.t. z (VQ: quantizes first)."""
        return self.first_stage.decode(z)

    def decode_quantized(self, zq: torch.Tensor) -> torch.Tensor:
        """VQ decoder *after* quantization: D(zq/s) with the quantizer skipped (App. E)."""
        return self.first_stage.decode_quantized(zq)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entries of a (scaled) VQ latent, in the same scaling; identity otherwise."""
        return self.first_stage.quantize(z)

    @property
    def geometry_decode(self):
        """The decoder the geometry differentiates (VQ: after quantization, App. E)."""
        return self.decode_quantized if self.is_vq else self.decode

    def geometry_point(self, z: torch.Tensor) -> torch.Tensor:
        """Where to evaluate `geometry_decode` for the latent z (VQ: its quantized latent)."""
        return self.quantize(z) if self.is_vq else z

    # -- noise prediction --
    def _timesteps(self, t, n: int) -> torch.Tensor:
        return check_timesteps(t, n, self.num_train_timesteps, self.device, what="timesteps")

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The denoiser's raw output for input x (its dtype) at timesteps t (float32 out)."""
        raise NotImplementedError

    def _eps(self, z_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """ε̂ from the raw output (VP families; `families.flow` overrides this)."""
        c = z_t.shape[1]
        out = self._predict(z_t.to(self.dtype), t, cond)
        if out.shape[1] == 2 * c:  # learned variance: [ε, σ] stacked on channels
            out = out[:, :c]
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * z_t
        return out

    def eps(self, z_t: torch.Tensor, t, cond=None, ids=None) -> torch.Tensor:
        """ε̂_θ(z_t, t, c) in float32 on z_t's device; NaN/Inf → NonFiniteError naming `ids`."""
        check_batched(z_t, "z_t", min_dim=4)
        n = z_t.shape[0]
        if tuple(z_t.shape[1:]) != self.latent_shape:
            raise InputError(f"z_t has shape {tuple(z_t.shape[1:])}, the denoiser expects {self.latent_shape}")
        t = self._timesteps(t, n)
        cond = self._condition(cond, n)
        with torch.no_grad():
            out = self._eps(z_t.to(self.device, torch.float32), t, cond)
        # without ids, name batch rows: bare indices would read as sample ids
        check_finite(out, "denoiser", ids if ids is not None else [f"batch row {i}" for i in range(n)])
        return out.to(z_t.device)

    def eps_with_grad(self, z_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """ε̂ with autograd through `denoiser`'s parameters, for gradient attacks (GSA,
        docs/attacks.md): no checks, so torch.func can trace it per sample. t: a LongTensor on the
        model's device; cond as `encode_cond` or `uncond` return it."""
        return self._eps(z_t.to(self.device, torch.float32), t, cond)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.kind}, {type(self.denoiser).__name__}, cond={self.conditioning}, "
                f"latent={self.latent_shape}, s={self.scaling_factor}, dtype={self.dtype}, device={self.device})")
