"""A Hugging Face `datasets` dataset saved with `save_to_disk` (extra "datasets", imported lazily).

Images are read as raw bytes (`Image(decode=False)`) and decoded by diffaudit's own safe
loader, so the same hostile-input checks apply as for image folders.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .images import DEFAULT_MAX_PIXELS, read_image, read_image_info
from .metadata import CAPTION_COLUMNS, LABEL_COLUMNS, _caption
from .sources import Source


class HFSource(Source):
    """`hf:PATH` or `hf:PATH::split`; keys are row indices."""

    kind = "hf"

    def __init__(self, path, transform=None, split=None, image_column=None, caption_column=None, label_column=None,
                 max_pixels=DEFAULT_MAX_PIXELS):
        super().__init__(transform)
        from .._checks import require_extra

        datasets = require_extra("datasets", "datasets")
        path = str(path)
        if "::" in path and split is None:
            path, split = path.rsplit("::", 1)
        self.location = Path(path).absolute()
        self.max_pixels = max_pixels
        try:
            ds = datasets.load_from_disk(str(self.location))
        except FileNotFoundError as e:
            raise DataError(f"{self.location}: not a dataset saved with save_to_disk ({e})") from None
        except Exception as e:  # arrow/json errors of a damaged folder
            raise DataError(f"{self.location}: cannot load the dataset ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            names = list(ds)
            split = split or ("train" if "train" in ds else names[0] if len(names) == 1 else None)
            if split not in ds:
                raise DataError(f"{self.location}: choose a split with hf:PATH::NAME (splits: {', '.join(names)})")
            ds = ds[split]
        feats = ds.features
        image_column = image_column or next(
            (c for c, f in feats.items() if isinstance(f, datasets.Image)),
            next((c for c in ("image", "img") if c in feats), None))
        if image_column not in feats or not isinstance(feats[image_column], datasets.Image):
            raise DataError(f"{self.location}: no image column (columns: {', '.join(feats)})")
        self.ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.image_column = image_column
        self.caption_column = caption_column or next((c for c in CAPTION_COLUMNS if c in feats), None)
        self.label_column = label_column or next((c for c in LABEL_COLUMNS if c in feats), None)
        self.options = {k: v for k, v in (("split", split), ("image_column", image_column),
                                          ("caption_column", caption_column), ("label_column", label_column)) if v}
        if len(self.ds) == 0:
            raise DataError(f"{self.location}: contains no rows")

    def keys(self):
        return [str(i) for i in range(len(self.ds))]

    def check_key(self, key):
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key
                and int(key) < len(self.ds)):
            raise DataError(f"{self.spec}: no item {key!r} (keys are row indices 0..{len(self.ds) - 1})")

    def _bytes(self, key) -> bytes:
        cell = self.ds[int(key)][self.image_column]
        if not isinstance(cell, dict):
            raise DataError(f"{self.name(key)}: image cell is not an image")
        if cell.get("bytes"):
            return cell["bytes"]
        raise DataError(f"{self.name(key)}: image has no embedded bytes (save the dataset with embedded images)")

    def pixels(self, key):
        return read_image(self._bytes(key), name=self.name(key), max_pixels=self.max_pixels)

    def probe(self, key):
        self.check_key(key)
        return read_image_info(self._bytes(key), name=self.name(key), max_pixels=self.max_pixels)

    def meta(self, key):
        row = self.ds[int(key)]
        out = {}
        if self.caption_column and row.get(self.caption_column) is not None:
            out["caption"] = _caption(row[self.caption_column], self.name(key))
        if self.label_column and row.get(self.label_column) is not None:
            lab = row[self.label_column]
            if isinstance(lab, bool) or not isinstance(lab, int):
                raise DataError(f"{self.name(key)}: label must be an integer, got {lab!r}")
            out["label"] = lab
        return out
