"""The samples an audit scores: members followed by held-out, loaded lazily by index."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
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
    # {conversion name: number of samples} applied on the way to the model (resize, alpha …)
    conversions: dict[str, int] = field(default_factory=dict)
    # sha256 of the content (pixels, conditions, conversion settings); None: hashed on demand
    content_sha256: str | None = None

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
        return cls(keys=keys, member=member, load=load, captions=captions, content_sha256=_content_hash(images, cond))

    @classmethod
    def from_splits(cls, members, heldout, image_shape=None, cond: str = "auto", conditioning: str = "none",
                    crop: str = "center", resize: bool = False) -> "SampleSet":
        """Samples from two checked split files (`diffaudit.data.load_split_pair`).

        image_shape (C, H, W), e.g. `model.image_shape`, sets the size and channels images are
        converted to. cond: "auto" uses captions for a text model and labels for a class model.
        Images of different sizes are refused (naming them) unless `resize`; every conversion
        applied is counted in `conversions` (`diffaudit.data.survey`).
        """
        from ..data import survey

        want = {"auto": {"caption": "caption", "label": "label", "text": "caption", "class": "label"}.get(conditioning), "none": None,
                "caption": "caption", "label": "label"}[cond]
        size = channels = None
        if image_shape is not None:
            channels, size = int(image_shape[0]), (int(image_shape[1]), int(image_shape[2]))
        src = members.open(size=size, channels=channels, crop=crop)
        items = [(k, h) for k, h in zip(members.keys, members.hashes)] + \
                [(k, h) for k, h in zip(heldout.keys, heldout.hashes)]
        member = np.zeros(len(items), dtype=bool)
        member[: len(members)] = True
        conversions = survey(src, [k for k, _ in items], resize=resize)

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

        metas = [src.meta(k).get(want) for k, _ in items] if want else None
        captions = [m if m is not None else "" for m in metas] if want == "caption" else None
        content = hashlib.sha256(json.dumps([items, src.spec, size, channels, crop, want, metas],
                                            default=str).encode()).hexdigest()
        return cls(keys=[k for k, _ in items], member=member, load=load, captions=captions,
                   conversions=conversions, content_sha256=content)


def _content_hash(images: torch.Tensor, cond) -> str:
    h = hashlib.sha256(f"{images.dtype} {tuple(images.shape)}".encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    if isinstance(cond, torch.Tensor):
        h.update(f"{cond.dtype} {tuple(cond.shape)}".encode())
        h.update(cond.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif cond is not None:
        h.update(json.dumps(list(cond), default=str).encode())
    return h.hexdigest()


def content_hash(samples: SampleSet, batch: int = 256) -> str:
    """`samples.content_sha256`, or the hash of every sample loaded (for a SampleSet built by hand)."""
    if samples.content_sha256 is not None:
        return samples.content_sha256
    h = hashlib.sha256()
    for s in range(0, len(samples), batch):
        x, c = samples.load(range(s, min(len(samples), s + batch)))
        h.update(_content_hash(torch.as_tensor(x), c).encode())
    return h.hexdigest()


def stratified_subset(keys: Sequence[str], member: np.ndarray, n: int, seed: int, purpose: str) -> np.ndarray:
    """bool [N]: `n` samples (0 or ≥ N: all), members and held-out in proportion to their counts
    (each class at least one), each class's picked by the smallest keyed draws (`diffaudit.rng`):
    the subset depends on the keys, the seed and the purpose only, never on order or chunking."""
    from ..rng import derive_seed

    member = np.asarray(member, dtype=bool)
    N = len(keys)
    if n <= 0 or n >= N:
        return np.ones(N, dtype=bool)
    u = np.array([derive_seed(seed, k, purpose) for k in keys], dtype=np.float64)
    keep = np.zeros(N, dtype=bool)
    n_m = int(round(n * member.sum() / N))
    n_m = min(max(n_m, 1), n - 1)
    for cls, want in ((True, n_m), (False, n - n_m)):
        idx = np.flatnonzero(member == cls)
        keep[idx[np.argsort(u[idx], kind="stable")[:want]]] = True
    return keep


def cond_kind(cond) -> str | None:
    """What a batch of conditions is: "caption", "label", "embedding", or None (unconditional)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return "embedding" if cond.is_floating_point() else "label"
    return "caption"


def conditioning_used(cond, config, model) -> bool:
    """Whether the attacks condition the model on `cond`: the samples carry conditions, the config
    does not switch them off, and the model can encode them (else it is queried unconditionally)."""
    return cond is not None and config.cond != "none" and hasattr(model, "encode_cond")


def resolved_conditioning(samples: SampleSet, config, model) -> str:
    """The conditioning an audit actually used: "caption", "label", "embedding" or "none"."""
    _, cond = samples.load([0])
    return cond_kind(cond) if conditioning_used(cond, config, model) else "none"
