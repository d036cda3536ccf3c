"""Derive a classification dataset from a detection one: one crop per annotated object.

For BCCD every annotated cell becomes ``<out>/<split>/<Class>/<image id>_<n>.jpg`` (``n``: the box's
position among the image's kept boxes), the detection dataset's split carried over. The output is
deterministic and written atomically, one file at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torchvision.io import encode_jpeg

from pipelines.formats.records import DetectionRecord
from pipelines.samples import decode
from pipelines.storage.base import Storage


def write_crops(
    source: Storage,
    records: list[DetectionRecord],
    target: Storage,
    split: str,
    *,
    min_size: int = 4,
    quality: int = 95,
    on_image: Callable[[], None] | None = None,
) -> Counter:
    """Crop every box of ``records`` and write it under ``<split>/<label>/`` in ``target``.

    Args:
        min_size: boxes narrower or lower than this many pixels are skipped (counted as
            ``"skipped"``): too small to classify.
        quality: JPEG quality of the crops (1-100).
        on_image: called after each source image (progress).

    Returns:
        Crops written per class, plus ``"skipped"``.

    Raises:
        pipelines.storage.base.StorageError: an image cannot be read or a crop not written.
        ValueError: an image cannot be decoded (the message names it).
    """
    counts: Counter = Counter()
    for record in records:
        try:
            image = decode(source.read(record.image_key)).as_subclass(torch.Tensor)
        except ValueError as exc:
            raise ValueError(f"{source.describe(record.image_key)}: {exc}") from None
        height, width = image.shape[-2:]
        for n, (box, label) in enumerate(zip(record.boxes, record.labels, strict=True)):
            x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
            x2, y2 = min(width, int(round(box[2]))), min(height, int(round(box[3])))
            if x2 - x1 < min_size or y2 - y1 < min_size:
                counts["skipped"] += 1
                continue
            crop = image[:, y1:y2, x1:x2].contiguous()
            data = encode_jpeg(crop, quality=quality).numpy().tobytes()
            target.write(f"{split}/{label}/{record.id}_{n:02d}.jpg", data)
            counts[label] += 1
        if on_image is not None:
            on_image()
    return counts
