"""A result store that loses nothing: per-chunk files written atomically, under a manifest.

Layout of a store directory:
    manifest.json           what these results are: config hash, model hash, split hashes, version
    chunk-00000.npz         per-sample arrays of samples [0, chunk_size), one file per chunk
    ...
Each chunk is written to a temporary file, fsynced and renamed into place, so a killed run
leaves either a whole chunk or none. A chunk that fails to load (torn by a crash of the disk,
edited, truncated) is treated as missing and recomputed. A manifest that disagrees with the
current run refuses to mix unless the caller asks to start over.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .._io import _json_default, atomic_write_bytes, atomic_write_json  # noqa: F401 (re-exported)
from ..errors import DataError


class ChunkStore:
    """Chunks of per-sample numpy arrays keyed by chunk index, under one manifest."""

    def __init__(self, root: str | Path, manifest: dict, overwrite: bool = False):
        self.root = Path(root)
        self.manifest = manifest
        self.root.mkdir(parents=True, exist_ok=True)
        mpath = self.root / "manifest.json"
        if mpath.exists():
            try:
                old = json.loads(mpath.read_text())
            except (OSError, ValueError):
                old = None  # a corrupt manifest carries no claim: start over
            if old is not None and old != _normalise(manifest):
                if not overwrite:
                    diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != _normalise(manifest).get(k))
                    raise DataError(
                        f"{self.root}: holds results of a different run (differs in: {', '.join(diff)}); "
                        "use --overwrite to start over, or another --out folder"
                    )
            if old != _normalise(manifest):
                self.clear()
        atomic_write_json(mpath, manifest)

    def clear(self) -> None:
        for p in self.root.glob("chunk-*.npz"):
            p.unlink(missing_ok=True)  # another process of a distributed run may clear it too

    def path(self, index: int) -> Path:
        return self.root / f"chunk-{index:05d}.npz"

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path(index), buf.getvalue())

    def load(self, index: int) -> dict[str, np.ndarray] | None:
        """The chunk's arrays, or None when absent or damaged (then it is recomputed)."""
        p = self.path(index)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
            return None

    def done(self, index: int, expected_ids: np.ndarray) -> dict[str, np.ndarray] | None:
        """The chunk if it is whole and covers exactly `expected_ids`, else None."""
        arrays = self.load(index)
        if arrays is None or "id" not in arrays or not np.array_equal(arrays["id"], expected_ids):
            return None
        return arrays


def _normalise(obj):
    """Round-trip through JSON so a manifest compares equal to what was written."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))
