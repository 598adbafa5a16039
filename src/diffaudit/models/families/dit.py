"""DiT (Peebles & Xie, arXiv:2212.09748): a class-conditional `DiTTransformer2DModel`.

As `DiTPipeline` calls it: `transformer(latents, timestep=t, class_labels=y)` at the integer
timestep; with learned σ (out_channels = 2·in_channels) ε̂ is the first C channels (the base
class splits them). The null label for classifier-free guidance is `num_embeds_ada_norm` (the
extra row of the label table; DiTPipeline passes 1000, ImageNet's class count).
"""
from __future__ import annotations

from ..adapter import LatentDiffusion


class DiTModel(LatentDiffusion):
    family = "dit"
    denoiser_folder = "transformer"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.null_label is None:
            self.null_label = int(self.denoiser.config["num_embeds_ada_norm"])

    def _resolve_conditioning(self) -> str:
        return "label"

    @property
    def num_classes(self) -> int:
        """Rows of the label table: the classes and the null label."""
        return int(self.denoiser.config["num_embeds_ada_norm"]) + 1

    def _predict(self, x, t, cond):
        return self.denoiser(x, timestep=t, class_labels=cond).sample.float()
