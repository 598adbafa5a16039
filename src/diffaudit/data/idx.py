"""IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

Header: two zero bytes, a type code, the number of dimensions, then each dimension as a
big-endian uint32; the data follow in big-endian order. Sizes are checked exactly.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_BYTES = 4 << 30  # refuse headers promising more than 4 GiB


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read(MAX_BYTES + 1)
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncated gzip: EOFError
        raise DataError(f"{path}: corrupt or truncated gzip/IDX file ({type(e).__name__}: {e})") from None


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (native byte order)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - 4 - 4 * ndim
    if expected > MAX_BYTES or body != expected:
        raise DataError(f"{path}: IDX header promises {dims} ({expected} bytes) but the file holds {body} bytes")
    a = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)
    return a.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else a


def idx_labels_for(images_path: Path, n: int):
    """Labels from the sibling `*-labels-idx1-ubyte[.gz]` file, or None when there is none."""
    name = images_path.name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte")
    if name == images_path.name:
        return None
    stem = name[:-3] if name.endswith(".gz") else name
    for cand in (images_path.with_name(stem), images_path.with_name(stem + ".gz")):
        if cand.is_file():
            labels = read_idx(cand)
            if labels.ndim != 1 or len(labels) != n:
                raise DataError(f"{cand}: {labels.shape} labels do not match {n} images")
            return labels.astype(np.int64)
    return None
