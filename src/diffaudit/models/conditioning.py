"""How a model is conditioned: captions, class labels, an embedding, or nothing.

`Conditioning` is the part of `LatentDiffusion` that turns what the data carries (captions or
labels, `encode_cond`) into what `eps` takes, and gives the null condition of classifier-free
guidance (`uncond`). A family overrides the hooks: `_resolve_conditioning` ("caption" | "label" |
"embedding" | "none"), `_encode_captions`, `_null_caption_cond`, `_check_embedding`, `num_classes`.
"""
from __future__ import annotations

import torch

from ..errors import InputError, ModelError


class Conditioning:
    """Mixin of `LatentDiffusion` (uses its `device`, `denoiser_folder`, `null_label`, `_where`)."""

    def _resolve_conditioning(self) -> str:
        return "none"

    def encode_cond(self, values):
        """Captions → the family's text condition; class labels → LongTensor [N]; a float
        tensor passes through (an embedding already in the family's layout)."""
        if isinstance(values, torch.Tensor):
            if values.is_floating_point():
                return values.to(self.device)
            return self._labels(values)
        values = list(values)
        if values and all(isinstance(v, str) for v in values):
            if self.conditioning != "caption":
                raise ModelError(f"{self._where('text_encoder')}: this model has no text encoder; got captions")
            return self._encode_captions(values)
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return self._labels(torch.tensor(values))
        raise InputError("conditions must be all captions (str) or all class labels (int)")

    def _labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.conditioning != "label":
            raise ModelError(f"{self._where(self.denoiser_folder)}: this model is not class-conditional; got class labels")
        n = self.num_classes
        labels = labels.to(torch.long).flatten()
        if n is not None and ((labels < 0) | (labels >= n)).any():
            raise InputError(f"class labels must lie in [0, {n}), got {labels.min().item()}..{labels.max().item()}")
        return labels.to(self.device)

    @property
    def num_classes(self) -> int | None:
        return None

    def _encode_captions(self, captions: list[str]) -> torch.Tensor:
        raise ModelError(f"{self._where('text_encoder')}: this model has no text encoder; got captions")

    def _null_caption_cond(self, n: int) -> torch.Tensor:
        return self._encode_captions([""] * n)

    def uncond(self, n: int):
        """The null condition for n samples (classifier-free guidance): the pipeline's negative
        (empty) prompt, the null class label (`null_label`, e.g. from diffaudit.json), or None
        for unconditional models."""
        if self.conditioning == "caption":
            return self._null_caption_cond(n)
        if self.conditioning == "none":
            return None
        if self.conditioning == "label" and self.null_label is not None:
            return torch.full((n,), int(self.null_label), dtype=torch.long, device=self.device)
        raise ModelError(f"{self._where(self.denoiser_folder)}: no null condition is known for this "
                         f"{'class' if self.conditioning == 'label' else self.conditioning}-conditioned model")

    def _condition(self, cond, n: int):
        """The checked condition for n rows (None: the null condition)."""
        if self.conditioning == "none":
            return None
        if cond is None:
            cond = self.uncond(n)
        if self.conditioning == "label":
            return self._labels(torch.as_tensor(cond))
        self._check_embedding(cond, n)
        return cond.to(self.device)

    def _check_embedding(self, cond, n: int) -> None:
        if not (isinstance(cond, torch.Tensor) and cond.is_floating_point() and cond.dim() == 3 and cond.shape[0] == n):
            raise InputError(f"text condition must be an embedding [N={n}, L, D] from encode_cond(captions)")
