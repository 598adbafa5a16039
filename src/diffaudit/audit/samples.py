"""The samples an audit scores: members followed by held-out, loaded lazily by index."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DataError


@dataclass
class SampleSet:
    """Members followed by held-out samples, loaded lazily by index.

    `load(indices) -> (images [B,C,H,W] float32 in [-1,1], conditions or None)`; conditions are
    captions (list of str) or class labels (LongTensor), whatever the model's `encode_cond` takes.
    """

    keys: list[str]
    member: np.ndarray  # bool [N]
    load: Callable[[Sequence[int]], tuple[torch.Tensor, object]]
    captions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_tensors(cls, members: torch.Tensor, heldout: torch.Tensor, member_keys=None, heldout_keys=None,
                     member_cond=None, heldout_cond=None) -> "SampleSet":
        images = torch.cat([members, heldout]).float()
        n_m, n_h = len(members), len(heldout)
        keys = [str(k) for k in (member_keys or [f"member/{i}" for i in range(n_m)])]
        keys += [str(k) for k in (heldout_keys or [f"heldout/{i}" for i in range(n_h)])]
        cond = None
        if member_cond is not None:
            if isinstance(member_cond, torch.Tensor):
                cond = torch.cat([member_cond, heldout_cond])
            else:
                cond = list(member_cond) + list(heldout_cond)

        def load(idx):
            idx = list(idx)
            c = None
            if cond is not None:
                c = cond[torch.as_tensor(idx)] if isinstance(cond, torch.Tensor) else [cond[i] for i in idx]
            return images[idx], c

        member = np.zeros(n_m + n_h, dtype=bool)
        member[:n_m] = True
        captions = cond if isinstance(cond, list) else None
        return cls(keys=keys, member=member, load=load, captions=captions)

    @classmethod
    def from_splits(cls, members, heldout, image_shape=None, cond: str = "auto", conditioning: str = "none",
                    crop: str = "center") -> "SampleSet":
        """Samples from two checked split files (`diffaudit.data.load_split_pair`).

        image_shape (C, H, W), e.g. `model.image_shape`, sets the size and channels images are
        converted to. cond: "auto" uses captions for a text model and labels for a class model.
        """
        want = {"auto": {"text": "caption", "class": "label"}.get(conditioning), "none": None,
                "caption": "caption", "label": "label"}[cond]
        size = channels = None
        if image_shape is not None:
            channels, size = int(image_shape[0]), (int(image_shape[1]), int(image_shape[2]))
        src = members.open(size=size, channels=channels, crop=crop)
        items = [(k, h) for k, h in zip(members.keys, members.hashes)] + \
                [(k, h) for k, h in zip(heldout.keys, heldout.hashes)]
        member = np.zeros(len(items), dtype=bool)
        member[: len(members)] = True

        def load(idx):
            xs, conds = [], []
            for i in idx:
                key, sha = items[i]
                x, meta, got = src.load(key)
                if got != sha:
                    raise DataError(f"{src.name(key)}: content changed since the split was made (sha256 mismatch)")
                if want is not None and want not in meta:
                    raise DataError(f"{src.name(key)}: has no {want} (add it to the metadata, or use cond='none')")
                xs.append(x)
                conds.append(meta.get(want) if want else None)
            c = None
            if want == "caption":
                c = conds
            elif want == "label":
                c = torch.tensor(conds, dtype=torch.long)
            return torch.stack(xs), c

        captions = None
        if want == "caption":
            captions = [src.meta(k).get("caption", "") for k, _ in items]
        return cls(keys=[k for k, _ in items], member=member, load=load, captions=captions)
