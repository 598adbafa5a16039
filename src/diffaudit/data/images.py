"""Decoding image files safely, hashing pixels, and the tensor transforms models expect.

Every image goes through `read_image`: size cap before decoding (decompression bombs),
truncated/corrupt/non-image files, 16-bit PNGs (Pillow's `convert` clips `I;16` at 255, so
they are scaled here instead) — each a DataError naming the file. Pixels are then a native
array `Pixels` (HWC, with the value range it spans), hashed before any transform so split
files do not depend on the model's resolution.

Every conversion on the way to the model's input (palette, alpha, 16-bit, other colour modes,
grey <-> RGB, resizing) has a name (`CONVERSIONS`); `read_image_info` tells from the file header
alone which ones an image will undergo, so an audit can count them before decoding anything.
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000×7000; an SD training image is 0.26 Mpx
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")

ALPHA_DROPPED = "alpha channel dropped"
PALETTE = "palette converted to RGB"
SIXTEEN_BIT = "16-bit pixels scaled to [-1, 1]"
BILEVEL = "1-bit converted to grayscale"
GREY_TO_RGB = "grayscale converted to RGB"
RGB_TO_GREY = "RGB converted to grayscale"


def mode_conversions(mode: str, info: dict | None = None) -> tuple[str, ...]:
    """What decoding a Pillow image of `mode` converts (see `_from_pil`, which applies exactly this)."""
    if mode.startswith("I;16") or mode == "I":
        return (SIXTEEN_BIT,)
    if mode in ("L", "RGB"):
        return ()
    if mode == "1":
        return (BILEVEL,)
    if mode in ("LA", "La", "RGBA", "RGBa"):
        return (ALPHA_DROPPED,)
    if mode in ("P", "PA"):
        alpha = mode == "PA" or "transparency" in (info or {})
        return (PALETTE, ALPHA_DROPPED) if alpha else (PALETTE,)
    return (f"{mode} converted to RGB",)  # CMYK, YCbCr, LAB, HSV, RGBX …


def _mode_channels(mode: str) -> int:
    return 1 if mode.startswith("I") or mode in ("1", "L", "LA", "La") else 3


@dataclass(frozen=True)
class ImageInfo:
    """What an image is before the transform: size (H, W), channels after decoding, and the
    conversions decoding applies (`mode_conversions`)."""

    size: tuple[int, int]
    channels: int
    conversions: tuple[str, ...] = ()


@dataclass
class Pixels:
    """Native pixels: array [H, W, C] (C = 1 or 3 after alpha is dropped) spanning [lo, hi];
    `conversions` names what decoding changed (alpha dropped, palette, 16-bit scaling …)."""

    array: np.ndarray
    lo: float
    hi: float
    conversions: tuple[str, ...] = field(default=(), compare=False)

    @property
    def info(self) -> ImageInfo:
        h, w, c = self.array.shape
        return ImageInfo((int(h), int(w)), int(c), self.conversions)

    def sha256(self) -> str:
        """Content hash of the decoded pixels (dtype and shape included; independent of file format)."""
        a = np.ascontiguousarray(self.array)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()

    def to_tensor(self) -> torch.Tensor:
        """float32 [C, H, W] in [-1, 1]."""
        a = torch.from_numpy(np.ascontiguousarray(self.array).astype(np.float32))
        return ((a - self.lo) * (2.0 / (self.hi - self.lo)) - 1.0).permute(2, 0, 1).contiguous()


def _check_mode(mode: str, name: str) -> None:
    if mode == "F":
        raise DataError(f"{name}: 32-bit float images are not supported (save as 8- or 16-bit PNG)")


def _from_pil(im, name: str) -> Pixels:
    """Pillow image → Pixels, scaling 16-bit modes instead of clipping them."""
    mode = im.mode
    _check_mode(mode, name)
    conv = mode_conversions(mode, im.info)
    if mode.startswith("I;16"):
        return Pixels(np.asarray(im).astype(np.uint16)[..., None], 0.0, 65535.0, conv)
    if mode == "I":  # 32-bit int: what some Pillow versions give for 16-bit grey PNGs
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"{name}: 32-bit integer image with values outside 0..65535 is not supported")
        return Pixels(a.astype(np.uint16)[..., None], 0.0, 65535.0, conv)
    if mode in ("1", "L", "LA", "La"):
        return Pixels(np.asarray(im.convert("L"))[..., None], 0.0, 255.0, conv)
    # P, PA, RGBA, CMYK, YCbCr, LAB, HSV, RGBX …: Pillow's convert; alpha is dropped
    return Pixels(np.asarray(im.convert("RGB")), 0.0, 255.0, conv)


def read_image(source, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Pixels:
    """Decode an image file path or bytes; any failure → DataError naming the file."""
    return _open(source, name, max_pixels, header_only=False)


def read_image_info(source, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Size, channels and decoding conversions of an image file from its header (nothing decoded)."""
    return _open(source, name, max_pixels, header_only=True)


def _open(source, name, max_pixels: int, header_only: bool):
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                w, h = im.size  # header only: nothing decoded yet
                if w * h > max_pixels:
                    raise DataError(f"{name}: {w}x{h} image exceeds the {max_pixels}-pixel cap (decompression bomb?)")
                if w == 0 or h == 0:
                    raise DataError(f"{name}: empty image ({w}x{h})")
                if header_only:
                    _check_mode(im.mode, name)
                    return ImageInfo((h, w), _mode_channels(im.mode), mode_conversions(im.mode, im.info))
                im.load()
                return _from_pil(im, name)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name}: image too large, refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image file (or an unsupported format)") from None
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as e:
        raise DataError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})") from None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def channels_of(array: np.ndarray, name: str) -> np.ndarray:
    """[H, W] / [H, W, C] array → [H, W, C] with C ∈ {1, 3} (RGBA drops alpha, like Pillow)."""
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise DataError(f"{name}: expected an image [H, W] or [H, W, C], got shape {array.shape}")
    c = array.shape[2]
    if c == 4:
        return array[..., :3]
    if c not in (1, 3):
        raise DataError(f"{name}: image has {c} channels; expected 1, 3 or 4")
    return array


def array_pixels(array: np.ndarray, lo: float, hi: float, name: str) -> Pixels:
    """Pixels of one in-memory image [H, W] / [H, W, C], naming its conversions as `_from_pil` does."""
    conv = ((ALPHA_DROPPED,) if array.ndim == 3 and array.shape[2] == 4 else ()) + \
        ((SIXTEEN_BIT,) if array.dtype == np.uint16 else ())
    return Pixels(channels_of(array, name), lo, hi, conv)


@dataclass(frozen=True)
class Transform:
    """What the model expects: `size` (H, W) and `channels`; None keeps the native value.

    crop="center": resize so the image covers `size`, then center-crop (SD preprocessing);
    crop="none": stretch to `size`. Resampling is bilinear with antialiasing.
    """

    size: tuple[int, int] | None = None
    channels: int | None = None
    crop: str = "center"

    def __post_init__(self):
        if self.size is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) < 1:
                raise DataError(f"image size must be positive (H, W), got {self.size!r}")
            object.__setattr__(self, "size", size)
        if self.channels not in (None, 1, 3):
            raise DataError(f"channel count must be 1 or 3, got {self.channels!r}")
        if self.crop not in ("center", "none"):
            raise DataError(f"crop must be 'center' or 'none', got {self.crop!r}")

    def conversions(self, info: ImageInfo) -> tuple[str, ...]:
        """The names of what `__call__` does to an image described by `info`."""
        out = []
        if self.channels is not None and info.channels != self.channels:
            out.append(GREY_TO_RGB if self.channels == 3 else RGB_TO_GREY)
        if self.size is not None and tuple(info.size) != self.size:
            (th, tw), (h, w) = self.size, info.size
            size = f"{th}x{tw}"
            if th * w == tw * h:
                out.append(f"resized to {size}")
            else:
                out.append(f"resized and center-cropped to {size}" if self.crop == "center" else f"stretched to {size}")
        return tuple(out)

    def __call__(self, x: torch.Tensor, name: str = "image") -> torch.Tensor:
        """[C, H, W] in [-1, 1] → the expected channels and size."""
        x = self._channels(x, name)
        if self.size is None or tuple(x.shape[1:]) == self.size:
            return x
        th, tw = self.size
        h, w = x.shape[1:]
        if self.crop == "center":
            s = max(th / h, tw / w)
            rh, rw = max(th, round(h * s)), max(tw, round(w * s))
        else:
            rh, rw = th, tw
        y = F.interpolate(x[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (rh - th) // 2, (rw - tw) // 2
        return y[:, top:top + th, left:left + tw].clamp(-1, 1).contiguous()

    def _channels(self, x: torch.Tensor, name: str) -> torch.Tensor:
        c = x.shape[0]
        if self.channels is None or c == self.channels:
            return x
        if c == 1 and self.channels == 3:
            return x.expand(3, -1, -1).contiguous()
        if c == 3 and self.channels == 1:
            w = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
            return (x * w).sum(0, keepdim=True)
        raise DataError(f"{name}: cannot convert {c} channels to {self.channels}")
