"""Image sources: each yields `(key, image [C, H, W] float32 in [-1, 1], meta)` (docs/contracts.md).

Spec strings (for the CLI and split files): `digits`, `fashion-mnist`, `folder:PATH`,
`npz:PATH` (.npz or .npy), `idx:PATH` (an IDX images file or a folder of them), `hf:PATH`
(a `datasets` dataset saved with `save_to_disk`; `hf:PATH::split` picks a split).
Keys are strings: a relative path for folders, an index (`"12"`, or `"train:12"` for a folder
of IDX files) otherwise. Pixels are hashed before the transform (`Pixels.sha256`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import DataError
from .idx import idx_labels_for, read_idx
from .images import (DEFAULT_MAX_PIXELS, ImageInfo, Pixels, Transform, array_pixels, is_image_file, read_image,
                     read_image_info)

FASHION_MNIST_DIR = Path(os.environ.get("DIFFAUDIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


class Source:
    """Random access by key plus iteration; `load` decodes once for image, meta and hash."""

    kind = "source"

    def __init__(self, transform: Transform | None = None):
        self.transform = transform or Transform()
        self._first: tuple | None = None  # (key, shape) of the first image, for mixed-size errors
        self.options: dict = {}

    # subclasses define: keys(), pixels(key), meta(key), location
    def keys(self) -> list[str]:
        raise NotImplementedError

    def meta(self, key: str) -> dict:
        return {}

    def name(self, key: str) -> str:
        return f"{self.spec}[{key}]"

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.location}"

    def describe(self) -> dict:
        """What a split file records to reopen this source."""
        return {"spec": self.spec, **({"options": dict(self.options)} if self.options else {})}

    def check_key(self, key) -> None:
        """DataError unless `key` names an item of this source."""
        if not isinstance(key, str) or key not in self._keyset():
            raise DataError(f"{self.spec}: no item {key!r}")

    def _keyset(self):
        if not hasattr(self, "_keys_cache"):
            self._keys_cache = set(self.keys())
        return self._keys_cache

    def probe(self, key: str) -> ImageInfo:
        """Native size, channels and decoding conversions of one item (file sources: header only)."""
        self.check_key(key)
        return self.pixels(key).info

    def load(self, key: str) -> tuple[torch.Tensor, dict, str]:
        """(image, meta, sha256 of the native pixels) of one item."""
        self.check_key(key)
        px = self.pixels(key)
        x = self.transform(px.to_tensor(), self.name(key))
        self._check_shape(key, x)
        return x, self.meta(key), px.sha256()

    def _check_shape(self, key: str, x: torch.Tensor) -> None:
        if self._first is None:
            self._first = (key, tuple(x.shape))
        elif tuple(x.shape) != self._first[1]:
            k0, s0 = self._first
            raise DataError(f"{self.name(key)}: image is {_shape(x.shape)} but {self.name(k0)} is {_shape(s0)}; "
                            "mixed image sizes or channels need a size/channels to convert to")

    def __iter__(self):
        for key in self.keys():
            x, meta, _ = self.load(key)
            yield key, x, meta

    def __len__(self) -> int:
        return len(self.keys())


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s)


class FolderSource(Source):
    """Image files under `root` (recursive, hidden files skipped, symlinked folders not followed)."""

    kind = "folder"

    def __init__(self, root, transform=None, caption_column=None, label_column=None, max_pixels=DEFAULT_MAX_PIXELS):
        super().__init__(transform)
        from .metadata import read_metadata

        self.location = Path(root).absolute()
        if not self.location.is_dir():
            raise DataError(f"{self.location}: image folder does not exist")
        self.root = self.location.resolve()
        self.max_pixels = max_pixels
        found = []
        for dirpath, dirnames, filenames in os.walk(self.location, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in filenames:
                p = Path(dirpath) / f
                if not f.startswith(".") and is_image_file(p):
                    found.append(p.relative_to(self.location).as_posix())
        self._keys = sorted(found)
        if not self._keys:
            raise DataError(f"{self.location}: no image files found")
        self.options = {k: v for k, v in (("caption_column", caption_column), ("label_column", label_column)) if v}
        self._meta = read_metadata(self.location, self._keys, caption_column, label_column)

    def keys(self):
        return self._keys

    def name(self, key):
        return str(self.location / key)

    def path_of(self, key) -> Path:
        """The file of `key`, refusing keys that escape the root (`..`, absolute, symlinks out)."""
        if not isinstance(key, str) or not key or "\x00" in key or "\\" in key:
            raise DataError(f"{self.location}: invalid item key {key!r}")
        rel = PurePosixPath(key)
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{key!r} escapes the data root {self.location}")
        path = self.location / rel
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):  # symlink loops
            raise DataError(f"{path}: cannot resolve the path") from None
        if not resolved.is_relative_to(self.root):
            raise DataError(f"{path}: links outside the data root {self.location}")
        if not resolved.is_file():
            raise DataError(f"{path}: file missing")
        return path

    def check_key(self, key):
        self.path_of(key)

    def pixels(self, key):
        return read_image(self.path_of(key), max_pixels=self.max_pixels)

    def probe(self, key):
        return read_image_info(self.path_of(key), max_pixels=self.max_pixels)

    def meta(self, key):
        return dict(self._meta.get(key, {}))


class _IndexedSource(Source):
    """Items of an in-memory array (N first); keys are decimal indices."""

    def _init_array(self, images: np.ndarray, labels, lo: float, hi: float):
        self.images, self.labels, self.lo, self.hi = images, labels, lo, hi
        if len(images) == 0:
            raise DataError(f"{self.spec}: contains no images")
        if labels is not None and len(labels) != len(images):
            raise DataError(f"{self.spec}: {len(labels)} labels for {len(images)} images")

    def keys(self):
        return [str(i) for i in range(len(self.images))]

    def check_key(self, key):
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key
                and int(key) < len(self.images)):
            raise DataError(f"{self.spec}: no item {key!r} (keys are indices 0..{len(self.images) - 1})")

    def pixels(self, key):
        return array_pixels(np.asarray(self.images[int(key)]), self.lo, self.hi, self.name(key))

    def meta(self, key):
        return {} if self.labels is None else {"label": int(self.labels[int(key)])}


class IdxSource(_IndexedSource):
    """IDX images (MNIST / Fashion-MNIST format, gzipped or not) with their labels file if present.

    PATH is one `*-images-idx3-ubyte[.gz]` file (keys "0", "1", …) or a folder of them
    (keys "train:0", "t10k:0", …: the file-name prefix before `-images`).
    """

    kind = "idx"

    def __init__(self, path, transform=None):
        super().__init__(transform)
        self.location = Path(path).absolute()
        if self.location.is_dir():
            files = sorted(p for p in self.location.iterdir() if "-images-idx" in p.name and p.is_file())
            if not files:
                raise DataError(f"{self.location}: no *-images-idx3-ubyte[.gz] files")
            self._prefixes = [p.name.split("-images-idx")[0] for p in files]
        elif self.location.is_file():
            files, self._prefixes = [self.location], [None]
        else:
            raise DataError(f"{self.location}: IDX file or folder does not exist")
        parts, labels = [], []
        for f in files:
            imgs = read_idx(f)
            if imgs.ndim != 3 or imgs.dtype != np.uint8:
                raise DataError(f"{f}: expected uint8 images [N, H, W], got {imgs.dtype} {imgs.shape}")
            parts.append(imgs)
            labels.append(idx_labels_for(f, len(imgs)))
        if len({p.shape[1:] for p in parts}) > 1:
            raise DataError(f"{self.location}: IDX files hold images of different sizes")
        self._offsets = np.cumsum([0] + [len(p) for p in parts])
        lab = None if any(v is None for v in labels) else np.concatenate(labels)
        self._init_array(np.concatenate(parts)[..., None], lab, 0.0, 255.0)

    def keys(self):
        if self._prefixes == [None]:
            return super().keys()
        return [f"{p}:{i}" for p, n in zip(self._prefixes, np.diff(self._offsets)) for i in range(n)]

    def _index(self, key) -> int:
        if self._prefixes == [None]:
            super().check_key(key)
            return int(key)
        prefix, _, num = key.rpartition(":") if isinstance(key, str) else ("", "", "")
        if prefix in self._prefixes and num.isascii() and num.isdigit() and str(int(num)) == num:
            j = self._prefixes.index(prefix)
            if int(num) < self._offsets[j + 1] - self._offsets[j]:
                return int(self._offsets[j]) + int(num)
        raise DataError(f"{self.spec}: no item {key!r} (keys look like {self._prefixes[0]}:0)")

    def check_key(self, key):
        self._index(key)

    def pixels(self, key):
        return Pixels(self.images[self._index(key)], self.lo, self.hi)

    def meta(self, key):
        return {} if self.labels is None else {"label": int(self.labels[self._index(key)])}


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images, target = d.images[..., None], d.target
    images.flags.writeable = target.flags.writeable = False  # shared by every DigitsSource
    return images, target


class DigitsSource(_IndexedSource):
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16, labels 0..9)."""

    kind = "digits"
    location = ""

    def __init__(self, transform=None):
        super().__init__(transform)
        images, target = _digits()
        self._init_array(images, target, 0.0, 16.0)

    @property
    def spec(self):
        return "digits"


def open_source(spec: str, root=None, size=None, channels=None, crop: str = "center", options: dict | None = None):
    """A Source from a spec string; `root` replaces its PATH (relocated data); `size` (int or
    (H, W)) and `channels` convert images to what the model expects (digits: 16x16 by default)."""
    if not isinstance(spec, str) or not spec:
        raise DataError(f"data source must be a spec string such as digits or folder:PATH, got {spec!r}")
    options = dict(options or {})
    kind, sep, path = spec.partition(":")
    if not sep:
        kind, path = _infer_kind(spec)
    if root is not None:
        path = str(root)
    _check_options(spec, kind, options)
    if kind == "digits":
        return DigitsSource(Transform(size or 16, channels, crop))
    transform = Transform(size, channels, crop)
    try:
        if kind == "fashion-mnist":
            if not Path(path or FASHION_MNIST_DIR).is_dir():
                raise DataError(f"{path or FASHION_MNIST_DIR}: Fashion-MNIST not found (apt-get install dataset-fashion-mnist)")
            src = IdxSource(path or FASHION_MNIST_DIR, transform)
            src.kind = "idx"
            return src
        if kind == "folder":
            return FolderSource(path, transform, **options)
        if kind in ("npz", "npy"):
            from .arrays import ArraySource

            return ArraySource(path, transform, **options)
        if kind == "idx":
            return IdxSource(path, transform)
        if kind == "hf":
            from .hf import HFSource

            return HFSource(path, transform, **options)
    except TypeError as e:  # unknown option names from a split file
        raise DataError(f"{spec}: invalid source options {options} ({e})") from None
    raise DataError(f"unknown data source {spec!r}: use digits, fashion-mnist, folder:PATH, npz:PATH, idx:PATH or hf:PATH")


_OPTIONS = {"folder": {"caption_column", "label_column"},
            "npz": {"images_key", "labels_key", "layout", "value_range"}, "npy": {"images_key", "labels_key", "layout", "value_range"},
            "hf": {"split", "image_column", "caption_column", "label_column"}}


def _check_options(spec: str, kind: str, options: dict) -> None:
    """Source options (e.g. from a split file): known names, string values (value_range: 2 numbers)."""
    allowed = _OPTIONS.get(kind, set())
    for k, v in options.items():
        if k not in allowed:
            raise DataError(f"{spec}: unknown source option {str(k)[:40]!r} (allowed: {sorted(allowed)})")
        if k == "value_range":
            ok = (isinstance(v, (list, tuple)) and len(v) == 2
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v))
        else:
            ok = isinstance(v, str) and bool(v)
        if not ok:
            raise DataError(f"{spec}: invalid value for source option {k!r}: {str(v)[:40]!r}")


def _infer_kind(spec: str) -> tuple[str, str]:
    if spec in ("digits", "fashion-mnist"):
        return spec, ""
    p = Path(spec)
    if p.suffix in (".npz", ".npy"):
        return "npz", spec
    if "-idx" in p.name:
        return "idx", spec
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            return "hf", spec
        if any("-images-idx" in q.name for q in p.iterdir()):
            return "idx", spec
        return "folder", spec
    raise DataError(f"{spec}: not a known data source (digits, fashion-mnist) nor an existing folder or array file")
