"""Images stored as one numpy array (.npy, or an array inside a .npz), loaded without pickle."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .sources import _IndexedSource


def _value_range(a: np.ndarray, where: str, value_range=None) -> tuple[float, float]:
    """The range pixels span: uint8 0..255, uint16 0..65535, floats [0, 1] or [-1, 1], else given."""
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise DataError(f"{where}: value range must have hi > lo, got {value_range}")
        if a.size and (a.min() < lo or a.max() > hi):
            raise DataError(f"{where}: values span [{a.min()}, {a.max()}], outside the given range [{lo}, {hi}]")
        return lo, hi
    if a.dtype == np.uint8:
        return 0.0, 255.0
    if a.dtype == np.uint16:
        return 0.0, 65535.0
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: item {int(np.argmax(bad))} has NaN/Inf pixels")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return 0.0, 1.0
        if lo >= -1 and hi <= 1:
            return -1.0, 1.0
        raise DataError(f"{where}: float pixels span [{lo:g}, {hi:g}]; expected [0, 1] or [-1, 1] (or give value_range)")
    raise DataError(f"{where}: pixels of dtype {a.dtype} need an explicit value_range (uint8/uint16/float are automatic)")


def _nhwc(a: np.ndarray, where: str, layout=None) -> np.ndarray:
    """[N,H,W] / [N,H,W,C] / [N,C,H,W] → [N,H,W,C]; `layout` ('nhwc'|'nchw') settles ambiguity."""
    if a.ndim == 3:
        return a[..., None]
    if a.ndim != 4:
        raise DataError(f"{where}: image array must be [N,H,W], [N,H,W,C] or [N,C,H,W], got shape {a.shape}")
    if layout not in (None, "nhwc", "nchw"):
        raise DataError(f"{where}: layout must be 'nhwc' or 'nchw', got {layout!r}")
    if layout is None:
        layout = "nchw" if a.shape[1] in (1, 3, 4) and a.shape[3] not in (1, 3, 4) else "nhwc"
    if layout == "nchw":
        a = a.transpose(0, 2, 3, 1)
    if a.shape[3] not in (1, 3, 4):
        raise DataError(f"{where}: images have {a.shape[3]} channels; expected 1, 3 or 4")
    return a


class ArraySource(_IndexedSource):
    """A .npy array, or a .npz with an image array (`images`, `x`, `arr_0`, …) and optional labels."""

    kind = "npz"

    def __init__(self, path, transform=None, images_key=None, labels_key=None, layout=None, value_range=None):
        super().__init__(transform)
        self.location = Path(path).absolute()
        where = str(self.location)
        try:
            loaded = np.load(self.location, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    arrays = {k: loaded[k] for k in loaded.files}
            else:
                arrays = {"images": np.asarray(loaded)}
        except FileNotFoundError:
            raise DataError(f"{where}: file not found") from None
        except (OSError, ValueError, EOFError, KeyError) as e:  # pickled object arrays land here too
            raise DataError(f"{where}: not a readable .npy/.npz array file ({type(e).__name__}: {e})") from None
        ikey = images_key or next((k for k in ("images", "image", "x", "X", "imgs", "data", "arr_0") if k in arrays),
                                  None)
        if ikey is None:
            big = [k for k, v in arrays.items() if v.ndim >= 3]
            ikey = big[0] if len(big) == 1 else None
        if ikey not in arrays:
            raise DataError(f"{where}: no image array found (arrays: {', '.join(arrays) or 'none'}); name one")
        lkey = labels_key or next((k for k in ("labels", "label", "y", "Y", "targets") if k in arrays), None)
        images = _nhwc(arrays[ikey], where, layout)
        labels = arrays.get(lkey) if lkey else None
        if labels is not None and not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: labels array {lkey!r} must hold integers, got {labels.dtype}")
        self.options = {k: v for k, v in (("images_key", images_key), ("labels_key", labels_key), ("layout", layout),
                                          ("value_range", list(value_range) if value_range else None)) if v}
        lo, hi = _value_range(images, where, value_range)
        self._init_array(images, None if labels is None else labels.reshape(-1), lo, hi)
