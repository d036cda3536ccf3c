"""Pascal VOC reader: ``Annotations/<id>.xml`` + ``JPEGImages/<id>.jpg`` + ``ImageSets/Main``.

Format: the PASCAL VOC development kit (Everingham et al., 2010), section "Annotation": one XML
file per image with ``<size>`` and one ``<object><name/><bndbox>xmin ymin xmax ymax</bndbox>``
per box, coordinates in pixels. Splits are text files of image ids, one per line.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pipelines.formats.records import BoxCounts, DatasetError, DetectionRecord
from pipelines.storage.base import ObjectNotFound, Storage, join_key, relative_keys

SPLIT_DIR = "ImageSets/Main"


def read_split_ids(storage: Storage, split: str, root: str = "") -> list[str]:
    """Image ids of a split, in file order (``ImageSets/Main/<split>.txt``).

    Raises:
        DatasetError: the split file is missing (the message lists the splits that exist),
            empty, or lists an id twice.
    """
    key = join_key(root, f"{SPLIT_DIR}/{split}.txt")
    try:
        text = storage.read(key).decode("utf-8")
    except ObjectNotFound:
        raise DatasetError(
            f"split {split!r} not found: {storage.describe(key)} is missing; "
            f"available splits: {', '.join(available_splits(storage, root)) or 'none'}"
        ) from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{storage.describe(key)} lists no image ids")
    seen: set[str] = set()
    for lineno, image_id in enumerate(ids, 1):
        if image_id in seen:
            raise DatasetError(f"{storage.describe(key)}:{lineno}: id {image_id!r} listed twice")
        seen.add(image_id)
    return ids


def available_splits(storage: Storage, root: str = "") -> list[str]:
    """Names of the split files under ``ImageSets/Main``; empty when there is none."""
    keys = relative_keys(storage, join_key(root, SPLIT_DIR))
    return sorted(k.rsplit("/", 1)[-1][:-4] for k in keys if k.endswith(".txt"))


def parse_voc_xml(data: bytes, source: str) -> tuple[int, int, list, list[str], BoxCounts]:
    """Parse one VOC annotation.

    Args:
        data: the XML file's bytes.
        source: the file's path or URI, used in error messages.

    Returns:
        ``(width, height, boxes, names, counts)``: image size in pixels, the kept boxes as pixel
        xyxy float tuples (clipped to the image), their class names, and what was kept, clipped
        and dropped (zero or negative width/height, or wholly outside the image).

    Raises:
        DatasetError: not XML (with line and column), no ``<size>`` or a size that is not
            positive, an ``<object>`` without ``<name>``, or a box with a missing or
            non-numeric coordinate (with the object's index).
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        line, col = exc.position
        raise DatasetError(f"{source}:{line}:{col}: not valid XML ({exc.msg})") from None
    try:
        width = int(float(root.findtext("size/width")))
        height = int(float(root.findtext("size/height")))
    except (TypeError, ValueError):
        raise DatasetError(f"{source}: <size><width>/<height> missing or not a number") from None
    if width <= 0 or height <= 0:
        raise DatasetError(f"{source}: image size {width}x{height} is not positive")
    boxes, names, counts = [], [], BoxCounts()
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{source}: <object> #{index} has no <name>")
        try:
            box = tuple(
                float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except (TypeError, ValueError):
            raise DatasetError(
                f"{source}: <object> #{index} ({name}) has a missing or non-numeric "
                "<bndbox> coordinate"
            ) from None
        kept = counts.keep(box, width, height, f"{source} object #{index} {name} {box}")
        if kept is not None:
            boxes.append(kept)
            names.append(name)
    return width, height, boxes, names, counts


def load_voc_split(
    storage: Storage, split: str, limit: int | None = None, root: str = ""
) -> tuple[list[DetectionRecord], BoxCounts]:
    """Read the annotations of a split into records.

    Args:
        storage: holds the VOC tree at its root.
        split: a split name under ``ImageSets/Main`` (``train``, ``val``, ``test``...).
        limit: keep only the first ``limit`` ids of the split (for quick runs).
        root: key prefix of the VOC tree in the storage (``""``: the storage root).

    Returns:
        ``(records, counts)``; records in split order, image keys ``<root>/JPEGImages/<id>.jpg``.

    Raises:
        DatasetError: a missing split or annotation file, or a malformed annotation.
    """
    ids = read_split_ids(storage, split, root)
    if limit is not None:
        ids = ids[:limit]
    return load_voc_ids(storage, ids, f"split {split!r}", root)


def annotated_ids(storage: Storage, root: str = "") -> list[str]:
    """Ids of all ``Annotations/<id>.xml``, sorted (maybe none), for a tree without split files."""
    keys = relative_keys(storage, join_key(root, "Annotations"))
    return sorted(k[: -len(".xml")] for k in keys if k.endswith(".xml") and "/" not in k)


def load_voc_ids(
    storage: Storage, ids: list[str], what: str, root: str = ""
) -> tuple[list[DetectionRecord], BoxCounts]:
    """Records of the images ``ids`` (``what`` names them in errors, e.g. ``split 'train'``).

    Raises:
        DatasetError: a missing or malformed annotation file.
    """
    records, total = [], BoxCounts()
    for image_id in ids:
        key = join_key(root, f"Annotations/{image_id}.xml")
        try:
            data = storage.read(key)
        except ObjectNotFound:
            raise DatasetError(
                f"annotation missing for image {image_id!r} of {what}: "
                f"{storage.describe(key)}; add it or remove the id from the split file"
            ) from None
        width, height, boxes, names, counts = parse_voc_xml(data, storage.describe(key))
        total.add(counts)
        records.append(
            DetectionRecord(
                id=image_id,
                image_key=join_key(root, f"JPEGImages/{image_id}.jpg"),
                boxes=tuple(boxes),
                labels=tuple(names),
                width=width,
                height=height,
            )
        )
    return records, total
