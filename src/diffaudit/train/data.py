"""Loading a member split's images for training (the CLI's glue to diffaudit.data)."""
from __future__ import annotations

from pathlib import Path

import torch


def load_split_images(members_path, resolution: int, data_root=None, need_labels: bool = False,
                      expect_source: str | None = None):
    """(images [N, C, r, r] in [-1, 1], labels or None, split_info) of a member split.

    Hashes are verified against the split file as the images are read (diffaudit.data).
    `expect_source`: a source spec the split must have been drawn from (the CLI's --data).
    """
    from ..data import iter_batches, read_split
    from ..errors import DataError

    split = read_split(members_path)
    if split.role != "members":
        raise DataError(f"{members_path}: is a {split.role} split; train on the members split")
    if expect_source is not None and expect_source != split.source["spec"]:
        raise DataError(f"--data {expect_source} differs from the source of {members_path} ({split.source['spec']})")
    split.root = Path(data_root) if data_root is not None else None
    imgs, labs = [], []
    for b in iter_batches(split, batch_size=256, size=resolution, need="label" if need_labels else None):
        imgs.append(b.images)
        labs.append(b.labels)
    labels = torch.cat(labs) if need_labels else None
    info = {"members": {"path": str(members_path), "sha256": split.digest(), "n": len(split)}}
    return torch.cat(imgs), labels, info
