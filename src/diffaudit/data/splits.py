"""Member / held-out split files (docs/contracts.md §Data; every malformed input is refused).

A split file is JSON: {"format", "role" (members|heldout), "seed", "source" {"spec", "options"?},
"items": [{"key", "sha256"}], "skipped_duplicates"?}. `sha256` is the hash of the *decoded
native pixels* (`Pixels.sha256`: dtype, shape and values before any resize), not of file bytes:
the same picture saved twice, under two names or formats, is recognised as one sample, which is
what the member/held-out overlap check needs. Every malformed input is a DataError.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write_bytes
from ..errors import DataError
from .sources import Source, open_source

FORMAT = "diffaudit.split/1"
ROLES = ("members", "heldout")
_HEX = set("0123456789abcdef")


@dataclass
class Split:
    role: str
    seed: int
    source: dict
    keys: list[str]
    hashes: list[str]
    path: Path | None = None
    root: Path | None = None  # replaces the source's PATH when the data moved
    extra: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.keys)

    def to_json(self) -> dict:
        return {"format": FORMAT, "role": self.role, "seed": self.seed, "source": self.source,
                "items": [{"key": k, "sha256": h} for k, h in zip(self.keys, self.hashes)], **self.extra}

    def digest(self) -> str:
        """sha256 of role, source and items: what a run's manifest records."""
        body = json.dumps({"role": self.role, "source": self.source.get("spec"),
                           "items": [[k, h] for k, h in zip(self.keys, self.hashes)]}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def open(self, size=None, channels=None, crop="center") -> Source:
        """The source this split was drawn from, converting images to `size`/`channels`."""
        return open_source(self.source["spec"], root=self.root, size=size, channels=channels, crop=crop,
                           options=self.source.get("options"))


def make_split(source: Source, n_members: int, n_heldout: int, seed: int = 0) -> tuple[Split, Split]:
    """Random disjoint member and held-out sets of the given sizes, seeded.

    Items are taken in a seeded random order; an item whose pixels equal an earlier one is
    skipped, so no picture can be both a member and held out.
    """
    for name, n in (("members", n_members), ("heldout", n_heldout)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"number of {name} must be a positive integer, got {n!r}")
    keys = list(source.keys())
    need = n_members + n_heldout
    if need > len(keys):
        raise DataError(f"{source.spec}: {need} items requested but the source has {len(keys)}")
    order = np.random.default_rng(seed).permutation(len(keys))
    chosen, hashes, seen, skipped = [], [], set(), 0
    for i in order:
        if len(chosen) == need:
            break
        key = keys[int(i)]
        sha = source.pixels(key).sha256()
        if sha in seen:
            skipped += 1
            continue
        seen.add(sha)
        chosen.append(key)
        hashes.append(sha)
    if len(chosen) < need:
        raise DataError(f"{source.spec}: only {len(chosen)} distinct images, {need} requested")
    desc, extra = source.describe(), {"skipped_duplicates": skipped} if skipped else {}
    m = Split("members", seed, desc, chosen[:n_members], hashes[:n_members], extra=dict(extra))
    h = Split("heldout", seed, desc, chosen[n_members:], hashes[n_members:], extra=dict(extra))
    return m, h


def write_split(split: Split, path) -> Path:
    """Atomic write (temp file, fsync, rename)."""
    path = Path(path)
    atomic_write_bytes(path, _dumps(split.to_json()).encode())
    split.path = path
    return path


def _dumps(data: dict) -> str:
    """Readable and compact: header fields indented, one item per line."""
    head = {k: v for k, v in data.items() if k != "items"}
    items = ",\n  ".join(json.dumps(it) for it in data["items"])
    return json.dumps(head, indent=1)[:-2] + f',\n "items": [\n  {items}\n ]\n}}\n'


def make_split_files(spec: str, n_members: int, n_heldout: int, seed: int, out_dir, **source_kw) -> tuple[Path, Path]:
    """`diffaudit split`: members.json and heldout.json in `out_dir`."""
    m, h = make_split(open_source(spec, **source_kw), n_members, n_heldout, seed)
    out = Path(out_dir)
    return write_split(m, out / "members.json"), write_split(h, out / "heldout.json")


def read_split(path) -> Split:
    """Parse and validate a split file (no data access); anything malformed → DataError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except OSError as e:
        raise DataError(f"{path}: unreadable split file ({type(e).__name__})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DataError(f"{path}: not a JSON split file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a split file is a JSON object")
    known = {"format", "role", "seed", "source", "items", "skipped_duplicates"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise DataError(f"{path}: unknown keys {unknown[:5]} (expected {sorted(known)})")
    if data.get("format") != FORMAT:
        raise DataError(f"{path}: not a diffaudit split file (format {str(data.get('format'))[:40]!r}, expected {FORMAT!r})")
    role, seed, source, items = data.get("role"), data.get("seed"), data.get("source"), data.get("items")
    if role not in ROLES:
        raise DataError(f"{path}: role must be 'members' or 'heldout', got {str(role)[:40]!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{path}: seed must be an integer")
    if not (isinstance(source, dict) and isinstance(source.get("spec"), str) and source["spec"]
            and set(source) <= {"spec", "options"} and isinstance(source.get("options", {}), dict)):
        raise DataError(f"{path}: source must be an object with a spec string (and optional options)")
    if not isinstance(items, list):
        raise DataError(f"{path}: items must be a list")
    if not items:
        raise DataError(f"{path}: the split lists no items")
    keys, hashes, seen = [], [], set()
    for i, it in enumerate(items):
        if not (isinstance(it, dict) and set(it) == {"key", "sha256"} and isinstance(it["key"], str) and it["key"]
                and isinstance(it["sha256"], str) and len(it["sha256"]) == 64 and set(it["sha256"]) <= _HEX):
            raise DataError(f"{path}: item {i} must be {{\"key\": str, \"sha256\": 64 hex digits}}")
        if it["key"] in seen:
            raise DataError(f"{path}: item {it['key']!r} is listed twice")
        seen.add(it["key"])
        keys.append(it["key"])
        hashes.append(it["sha256"])
    extra = {"skipped_duplicates": data["skipped_duplicates"]} if "skipped_duplicates" in data else {}
    return Split(role, seed, source, keys, hashes, path=path, extra=extra)


def load_split(path, root=None, verify: bool = True, expect_role: str | None = None) -> Split:
    """Read a split file and check it against the data.

    Every key must name an item of the source (folder keys may not escape the data root, by
    `..`, absolute paths or symlinks); with `verify`, every item is decoded and its pixel hash
    compared with the file's (a changed image → DataError naming it).
    """
    split = read_split(path)
    split.root = Path(root) if root is not None else None
    if expect_role is not None and split.role != expect_role:
        raise DataError(f"{split.path}: is a {split.role} split, expected {expect_role}")
    src = split.open()
    for key, sha in zip(split.keys, split.hashes):
        try:
            src.check_key(key)
        except DataError as e:  # name the split file that lists the bad key too
            raise DataError(f"{e} (listed in {split.path})") from None
        if verify and src.pixels(key).sha256() != sha:
            raise DataError(f"{src.name(key)}: content changed since the split was made (sha256 mismatch, "
                            f"split {split.path})")
    return split


def check_disjoint(members: Split, heldout: Split) -> None:
    """No image may be both a member and held out (same key or same pixel hash) → DataError."""
    if members.source.get("spec") != heldout.source.get("spec"):
        raise DataError(f"{members.path} and {heldout.path} come from different sources "
                        f"({members.source.get('spec')} vs {heldout.source.get('spec')})")
    by_hash = dict(zip(members.hashes, members.keys))
    for key, sha in zip(heldout.keys, heldout.hashes):
        if sha in by_hash or key in members.keys:
            other = by_hash.get(sha, key)
            raise DataError(f"overlapping splits: held-out item {key!r} ({heldout.path}) has the same content as "
                            f"member {other!r} ({members.path})")


def load_split_pair(members_path, heldout_path, root=None, verify: bool = True) -> tuple[Split, Split]:
    """Both split files of an audit, checked for roles, hashes and overlap."""
    m = load_split(members_path, root, verify, expect_role="members")
    h = load_split(heldout_path, root, verify, expect_role="heldout")
    check_disjoint(m, h)
    return m, h


@dataclass
class Batch:
    keys: list[str]
    images: torch.Tensor  # [B, C, H, W] float32 in [-1, 1]
    captions: list[str] | None
    labels: torch.Tensor | None  # LongTensor [B]
    hashes: list[str]


def iter_batches(split: Split, batch_size: int = 16, image_shape=None, size=None, channels=None, crop="center",
                 need: str | None = None, check_hashes: bool = True):
    """Batches of a split in file order; `image_shape` (C, H, W), e.g. `model.image_shape`, sets
    size and channels. `need`="caption"|"label" makes a missing caption/label a DataError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
    if image_shape is not None:
        channels, size = int(image_shape[0]), (int(image_shape[1]), int(image_shape[2]))
    src = split.open(size=size, channels=channels, crop=crop)
    for start in range(0, len(split), batch_size):
        keys = split.keys[start:start + batch_size]
        imgs, metas, hashes = [], [], []
        for key, want in zip(keys, split.hashes[start:start + batch_size]):
            x, meta, sha = src.load(key)
            if check_hashes and sha != want:
                raise DataError(f"{src.name(key)}: content changed since the split was made (sha256 mismatch)")
            if need and need not in meta:
                raise DataError(f"{src.name(key)}: has no {need} (add it to the metadata)")
            imgs.append(x)
            metas.append(meta)
            hashes.append(sha)
        caps = [m.get("caption") for m in metas]
        labs = [m.get("label") for m in metas]
        yield Batch(list(keys), torch.stack(imgs),
                    caps if all(c is not None for c in caps) else None,
                    torch.tensor(labs, dtype=torch.long) if all(v is not None for v in labs) else None,
                    hashes)
