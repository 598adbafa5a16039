"""Captions and class labels of an image folder (Hugging Face imagefolder convention).

A `metadata.jsonl` or `metadata.csv` (in the root or any subfolder) has a `file_name` column,
relative to the metadata file's folder, plus a caption column (`text`, `caption`, `captions`
or `prompt`, or the one named) and/or a `label` column. Without metadata labels, images that
all sit one folder deep in two or more class folders get labels from the sorted folder names,
as `datasets`' imagefolder does.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

from ..errors import DataError

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption", "captions", "prompt")
LABEL_COLUMNS = ("label", "labels", "class")


def _rows(path: Path):
    """(line number, row dict) of a metadata file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable metadata ({type(e).__name__})") from None
    if path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                raise DataError(f"{path}:{i}: not a JSON object line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i}: not a JSON object line")
            yield i, row
    else:
        try:
            for i, row in enumerate(csv.DictReader(text.splitlines()), 2):
                yield i, row
        except csv.Error as e:
            raise DataError(f"{path}: malformed CSV ({e})") from None


def _caption(value, where: str):
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = value[0]  # several captions per image (COCO style): the first one
    if not isinstance(value, str):
        raise DataError(f"{where}: caption must be text, got {type(value).__name__}")
    return value


def _label(value, where: str):
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: label must be an integer or a class name, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip():
        s = value.strip()
        return int(s) if s.lstrip("-").isdigit() else s
    raise DataError(f"{where}: label must be an integer or a class name, got {value!r}")


def read_metadata(root: Path, keys, caption_column: str | None = None, label_column: str | None = None) -> dict:
    """Per-image meta {key: {"caption"?, "label"?, "label_name"?}} for the image `keys` under `root`."""
    keyset = set(keys)
    meta: dict[str, dict] = {}
    try:
        found = sorted(p for name in METADATA_FILES for p in root.rglob(name) if p.is_file())
    except OSError as e:  # an unreadable or special subfolder (e.g. under /proc)
        raise DataError(f"{root}: cannot search for metadata files ({type(e).__name__}: {e})") from None
    for path in found:
        base = path.parent.relative_to(root)
        for line, row in _rows(path):
            where = f"{path}:{line}"
            name = row.get("file_name")
            if not isinstance(name, str) or not name:
                raise DataError(f"{where}: missing file_name")
            rel = PurePosixPath(*base.parts, *PurePosixPath(name).parts) if base.parts else PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise DataError(f"{where}: file_name {name!r} escapes the data root")
            key = rel.as_posix()
            if key not in keyset:
                raise DataError(f"{where}: file_name {name!r} is not an image in {root}")
            if key in meta:
                raise DataError(f"{where}: {name!r} is listed twice")
            entry = {}
            ccol = caption_column or next((c for c in CAPTION_COLUMNS if c in row), None)
            if ccol is not None and ccol in row:
                entry["caption"] = _caption(row[ccol], where)
            lcol = label_column or next((c for c in LABEL_COLUMNS if c in row), None)
            if lcol is not None and lcol in row and row[lcol] not in ("", None):
                entry["label"] = _label(row[lcol], where)
            meta[key] = entry
    _index_label_names(meta)
    if not any("label" in m for m in meta.values()):
        _labels_from_folders(keys, meta)
    return meta


def _index_label_names(meta: dict) -> None:
    """Class-name labels → indices of the sorted names (kept as label_name)."""
    names = sorted({m["label"] for m in meta.values() if isinstance(m.get("label"), str)})
    if not names:
        return
    if any(isinstance(m.get("label"), int) for m in meta.values()):
        raise DataError("metadata mixes integer labels and class names")
    index = {n: i for i, n in enumerate(names)}
    for m in meta.values():
        if "label" in m:
            m["label_name"] = m["label"]
            m["label"] = index[m["label"]]


def _labels_from_folders(keys, meta: dict) -> None:
    parts = [PurePosixPath(k).parts for k in keys]
    if not parts or any(len(p) != 2 for p in parts):
        return
    names = sorted({p[0] for p in parts})
    if len(names) < 2:
        return
    index = {n: i for i, n in enumerate(names)}
    for key, p in zip(keys, parts):
        meta.setdefault(key, {}).update(label=index[p[0]], label_name=p[0])
