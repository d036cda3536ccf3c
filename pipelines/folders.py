"""Folder-per-class image datasets (classification): ``<root>/<split>/<Class>/<image>``.

The layout of torchvision's ``ImageFolder`` with one folder per split, as the original DSS
benchmark's flowers dataset used; several roots (directories or S3 prefixes) holding the same
classes are read as one dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.records import DatasetError
from pipelines.storage import Storage, StorageError
from pipelines.voc import join_key

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ClassificationRecord:
    """One image and its class.

    Attributes:
        id: unique id (``<Class>/<file name without suffix>``).
        image_key: storage key of the encoded image.
        label: class name (the folder's name).
    """

    id: str
    image_key: str
    label: str


def load_folder_split(
    storage: Storage, split: str, limit: int | None = None, root: str = ""
) -> list[ClassificationRecord]:
    """The images of ``<root>/<split>/<Class>/``, sorted by class then file name.

    Args:
        limit: keep the first ``limit`` images of the sorted listing.

    Raises:
        DatasetError: the split folder is missing or holds no image in a class folder.
    """
    base = join_key(root, split)
    try:
        keys = list(storage.list(base))
    except StorageError:
        raise DatasetError(
            f"split {split!r} not found: {storage.describe(base)} is not a folder of class folders"
        ) from None
    records = []
    for key in sorted(keys):
        parts = key[len(base) + 1 :].split("/")
        if len(parts) != 2 or not key.lower().endswith(IMAGE_SUFFIXES):
            continue  # files beside the class folders, or deeper, are not samples
        label, name = parts
        records.append(ClassificationRecord(f"{label}/{name.rsplit('.', 1)[0]}", key, label))
    if not records:
        raise DatasetError(
            f"{storage.describe(base)} holds no images in class folders (<split>/<Class>/*.jpg)"
        )
    return records if limit is None else records[:limit]
