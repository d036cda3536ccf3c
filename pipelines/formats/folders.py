"""Folder-per-class image datasets (classification): ``<root>/<split>/<Class>/<image>``.

torchvision's ``ImageFolder`` layout with one folder per split; several roots (directories or
S3 prefixes) holding the same classes are read as one dataset.
"""

from __future__ import annotations

from pipelines.formats.records import BoxCounts, ClassificationRecord, DatasetError
from pipelines.storage.base import Storage, join_key, relative_keys

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_folder_split(
    storage: Storage, split: str, limit: int | None = None, root: str = ""
) -> tuple[list[ClassificationRecord], BoxCounts]:
    """The images of ``<root>/<split>/<Class>/``, the classes taken in turn.

    Order: class folders and the files in each sorted by name, then interleaved (the first image
    of each class, then the second...), so that ``limit`` keeps every class represented, about
    ``limit / classes`` images each, until the smaller classes run out. Files beside the class
    folders, deeper than one level, or without a ``.jpg`` / ``.jpeg`` / ``.png`` suffix are
    ignored.

    Args:
        limit: keep the first ``limit`` images of that order.

    Returns:
        ``(records, counts)``, ``counts`` an empty :class:`pipelines.formats.records.BoxCounts`
        (this format has no boxes).

    Raises:
        DatasetError: the split folder is missing or holds no image in a class folder.
    """
    base = join_key(root, split)
    by_class: dict[str, list[ClassificationRecord]] = {}
    for key in sorted(relative_keys(storage, base)):
        parts = key.split("/")
        if len(parts) != 2 or not parts[1].lower().endswith(IMAGE_SUFFIXES):
            continue
        label, name = parts
        record = ClassificationRecord(
            f"{label}/{name.rsplit('.', 1)[0]}", join_key(base, key), label
        )
        by_class.setdefault(label, []).append(record)
    if not by_class:
        raise DatasetError(
            f"split {split!r} not found: {storage.describe(base)} holds no images in class "
            f"folders (<split>/<Class>/*.jpg)"
        )
    columns = [by_class[label] for label in sorted(by_class)]
    records = [
        column[i] for i in range(max(map(len, columns))) for column in columns if i < len(column)
    ]
    return (records if limit is None else records[:limit]), BoxCounts()
