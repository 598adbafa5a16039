"""Image sources and member/held-out split files (docs/contracts.md §Data)."""
from .images import ImageInfo, Pixels, Transform, read_image, read_image_info
from .arrays import ArraySource
from .sources import DigitsSource, FolderSource, IdxSource, Source, open_source
from .splits import (Batch, Split, check_disjoint, iter_batches, load_split, load_split_pair, make_split,
                     make_split_files, read_split, write_split)
from .survey import survey

__all__ = ["ArraySource", "Batch", "DigitsSource", "FolderSource", "IdxSource", "ImageInfo", "Pixels", "Source",
           "Split", "Transform", "check_disjoint", "iter_batches", "load_split", "load_split_pair", "make_split",
           "make_split_files", "open_source", "read_image", "read_image_info", "read_split", "survey", "write_split"]
