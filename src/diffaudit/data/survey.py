"""Before an audit reads its images: do they fit one size, and what conversions will they undergo?

Images of different sizes are an error unless resizing was asked for: a model audited on
images silently stretched from 16x16, 24x24 and 32x32 would be audited on pictures it never
saw. Every conversion (resize, alpha dropped, palette, 16-bit scaling, grey <-> RGB) is counted,
so results.json and the report can say what the model was actually shown.
"""
from __future__ import annotations

from collections import Counter

from ..errors import DataError
from .images import ImageInfo
from .sources import Source

SHOW_SIZES, SHOW_FILES = 4, 3  # how many sizes, and files per size, a mixed-size error names


def survey(source: Source, keys, resize: bool = False) -> dict[str, int]:
    """{conversion: number of items it applies to} for `keys` of `source` (headers only where the
    source can), sorted by name. DataError naming files and sizes when the items do not share one
    size (or, with no channel count to convert to, one channel count) and `resize` is False."""
    by_size: dict[tuple[int, int], list[str]] = {}
    channels: set[int] = set()
    counts: Counter = Counter()
    tf = source.transform
    for key in keys:
        info: ImageInfo = source.probe(key)
        by_size.setdefault(tuple(info.size), []).append(key)
        channels.add(info.channels)
        counts.update(set(info.conversions) | set(tf.conversions(info)))
    if len(by_size) > 1 and not (resize and tf.size is not None):
        target = f"{tf.size[0]}x{tf.size[1]}" if tf.size is not None else None
        fix = (f"resize them to one size first, or ask for resizing (--resize, resize=True) to {target}"
               if target else "resize them to one size first")
        raise DataError(f"{source.spec}: images of different sizes ({_sizes(by_size)}); {fix}")
    if len(channels) > 1 and tf.channels is None:
        raise DataError(f"{source.spec}: images with different channel counts ({sorted(channels)}) and no "
                        "channel count to convert them to")
    return dict(sorted(counts.items()))


def _sizes(by_size: dict) -> str:
    groups = sorted(by_size.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    parts = []
    for (h, w), keys in groups[:SHOW_SIZES]:
        more = f" +{len(keys) - SHOW_FILES} more" if len(keys) > SHOW_FILES else ""
        parts.append(f"{h}x{w}: {', '.join(sorted(keys)[:SHOW_FILES])}{more}")
    if len(groups) > SHOW_SIZES:
        parts.append(f"+{len(groups) - SHOW_SIZES} more sizes")
    n = sum(len(k) for k in by_size.values())
    return "; ".join(parts) + f" — {n} images in {len(groups)} sizes"
