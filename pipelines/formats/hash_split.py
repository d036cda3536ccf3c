"""A deterministic split of a dataset that comes without one, by a hash of each image id.

For a VOC folder without ``ImageSets/Main`` or a CSV or COCO export of one split: an image
lands in the same split on every run, machine and storage, and adding images never moves the
others. The hash is the first 8 bytes of SHA-256 of the id (UTF-8), read big-endian as a
fraction of 2^64 in [0, 1); the image goes to the first split whose cumulative ratio exceeds
it (``dataset.split_ratios``, default 0.8 / 0.1 / 0.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pipelines.formats.records import DatasetError

#: Split names and the ratio each takes (``val`` has its usual spellings).
SPLIT_INDEX = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


def split_of(image_id: str, ratios: Sequence[float]) -> int:
    """The index (0 train, 1 val, 2 test) of the split ``image_id`` falls into."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    total = 0.0
    for index, ratio in enumerate(ratios):
        total += ratio
        if point < total:
            return index
    return len(ratios) - 1


def split_index(name: str) -> int:
    """Which ratio a split name takes.

    Raises:
        DatasetError: a name a hash split does not know (it makes train, val and test).
    """
    if name not in SPLIT_INDEX:
        raise DatasetError(
            f"split {name!r}: the dataset has no split files, so its images are split by a hash "
            f"of their id into {', '.join(SPLIT_INDEX)}; name one of those "
            "(dataset.train_split / eval_split)"
        )
    return SPLIT_INDEX[name]
