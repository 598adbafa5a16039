"""The table that chooses a model family (docs/models.md §Families).

A family is chosen from data only: the pipeline class in a folder's `model_index.json`, or the
denoiser's class (a folder's `_class_name`, or the class of an in-memory module) and the config
values listed in `match`. The first row that fits wins, so a refinement (SDXL: a
`UNet2DConditionModel` with `addition_embed_type = "text_time"`) comes before its base row.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import ModelError


@dataclass(frozen=True)
class Family:
    name: str
    adapter_path: str  # "module:Class" under diffaudit.models.families (imported on use)
    denoiser: str  # diffusers class of the denoiser
    folder: str  # pipeline component / folder name of the denoiser
    pipelines: tuple[str, ...] = ()  # diffusers pipeline classes that hold this family
    match: dict = field(default_factory=dict)  # denoiser config values that must hold
    conditioning: str = ""  # what it is conditioned on (for docs and messages)

    def adapter(self):
        module, name = self.adapter_path.split(":")
        return getattr(importlib.import_module(f"diffaudit.models.families.{module}"), name)

    def fits(self, class_name: str, config) -> bool:
        return class_name == self.denoiser and all(config.get(k) == v for k, v in self.match.items())


FAMILIES: tuple[Family, ...] = (
    Family("unet", "unet:UNetModel", "UNet2DModel", "unet",
           ("DDPMPipeline", "DDIMPipeline", "LDMPipeline"), conditioning="none or class labels"),
    Family("sdxl", "sdxl:SDXLModel", "UNet2DConditionModel", "unet", ("StableDiffusionXLPipeline",),
           match={"addition_embed_type": "text_time"}, conditioning="captions (two CLIP encoders, pooled, size ids)"),
    Family("sd", "unet:StableDiffusionModel", "UNet2DConditionModel", "unet",
           ("StableDiffusionPipeline",), match={"addition_embed_type": None},
           conditioning="captions (CLIP), an embedding, or class labels"),
    Family("dit", "dit:DiTModel", "DiTTransformer2DModel", "transformer", ("DiTPipeline",),
           conditioning="class labels (null label = num_embeds_ada_norm)"),
    Family("pixart-alpha", "pixart:PixArtAlphaModel", "PixArtTransformer2DModel", "transformer",
           ("PixArtAlphaPipeline",), conditioning="captions (T5, attention mask)"),
    Family("pixart-sigma", "pixart:PixArtSigmaModel", "PixArtTransformer2DModel", "transformer",
           ("PixArtSigmaPipeline",), conditioning="captions (T5, attention mask)"),
    Family("sd3", "sd3:SD3Model", "SD3Transformer2DModel", "transformer", ("StableDiffusion3Pipeline",),
           conditioning="captions (CLIP-L, CLIP-G, T5; pooled projections)"),
    Family("flux", "flux:FluxModel", "FluxTransformer2DModel", "transformer", ("FluxPipeline",),
           conditioning="captions (CLIP pooled, T5; guidance embedding)"),
)


def _mro_names(obj) -> list[str]:
    return [c.__name__ for c in type(obj).__mro__]


def family_of(denoiser) -> Family:
    """The family of an in-memory denoiser module (its class or a base class, and its config)."""
    config = getattr(denoiser, "config", {}) or {}
    for name in _mro_names(denoiser):
        for fam in FAMILIES:
            if fam.fits(name, config):
                return fam
    raise ModelError(f"denoiser {type(denoiser).__name__} is not supported "
                     f"(supported: {', '.join(sorted({f.denoiser for f in FAMILIES}))})")


def family_for_config(class_name: str, config: dict, folder: str, where: str) -> Family:
    """The family of the denoiser in `folder` ("unet" | "transformer") from its config.json
    (`where` names the file in errors)."""
    for fam in FAMILIES:
        if fam.folder == folder and fam.fits(class_name, config):
            return fam
    what = "UNet" if folder == "unet" else folder
    supported = ", ".join(sorted({f.denoiser for f in FAMILIES if f.folder == folder}))
    raise ModelError(f"{where}: not a diffusers {what} config (_class_name {class_name!r}; supported: {supported})")


def family_for_pipeline(pipeline_class: str, where: str) -> Family:
    """The family of a pipeline folder from model_index.json's `_class_name`."""
    for fam in FAMILIES:
        if pipeline_class in fam.pipelines:
            return fam
    supported = ", ".join(p for f in FAMILIES for p in f.pipelines)
    raise ModelError(f"{where}: pipeline {pipeline_class} is not supported (supported: {supported})")


def denoiser_folders() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.folder for f in FAMILIES))
