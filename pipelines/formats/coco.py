"""COCO detection reader, as Roboflow exports it: ``<split>/_annotations.coco.json`` + images.

Format: the COCO data format (cocodataset.org, "Data format", object detection): one JSON file
with ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``id``,
``image_id``, ``category_id``, ``bbox = [x, y, width, height]``, top-left corner and size in
pixels) and ``categories`` (``id``, ``name``). Roboflow's "COCO JSON" export puts one such
file beside the images of each split folder (``train/``, ``valid/``, ``test/``) and adds a
category naming the supercategory (usually id 0) that no box uses, so no record shows it.
"""

from __future__ import annotations

import json
import math
import posixpath

from pipelines.formats.records import BoxCounts, DatasetError, DetectionRecord
from pipelines.storage.base import ObjectNotFound, Storage, join_key, relative_keys

ANNOTATIONS = "_annotations.coco.json"


def available_splits(storage: Storage, root: str = "") -> list[str]:
    """Folders directly under ``root`` that hold an ``_annotations.coco.json``; sorted."""
    found = set()
    for key in relative_keys(storage, root):
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == ANNOTATIONS:
            found.add(parts[0])
    return sorted(found)


def _field(item: dict, name: str, kind, where: str):
    """``item[name]`` checked to be of ``kind``; DatasetError naming ``where`` otherwise."""
    if not isinstance(item, dict) or name not in item:
        raise DatasetError(f"{where} has no {name!r}")
    value = item[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{where}: {name!r} is {value!r}, not a {kind_name(kind)}")
    return value


def kind_name(kind) -> str:
    """A readable name for a type or tuple of types (``int``, ``number``...)."""
    return "number" if kind == (int, float) else getattr(kind, "__name__", str(kind))


def parse_coco_json(
    data: bytes, source: str
) -> tuple[list[dict], dict[int, list[dict]], dict[int, str]]:
    """Parse and check a COCO detection file.

    Args:
        data: the JSON file's bytes.
        source: the file's path or URI, used in error messages.

    Returns:
        ``(images, boxes_by_image, category_names)``: the ``images`` entries in file order,
        the ``annotations`` of each image id in file order, and category id -> name.

    Raises:
        DatasetError: not JSON (with line and column), a missing top-level key or field, a
            duplicate image or category id or file name, or an annotation whose ``image_id`` or
            ``category_id`` is unknown (named by its ``id``, or its index when it has none).
    """
    doc = _coco_document(data, source)
    categories = _coco_categories(doc["categories"], source)
    images, boxes_by_image = _coco_images(doc["images"], source)
    for index, ann in enumerate(doc["annotations"]):
        ann_id = ann.get("id", f"#{index}") if isinstance(ann, dict) else f"#{index}"
        where = f"{source}: annotation id {ann_id}"
        image_id = _field(ann, "image_id", int, where)
        cat_id = _field(ann, "category_id", int, where)
        bbox = _field(ann, "bbox", list, where)
        if len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in bbox
        ):
            raise DatasetError(f"{where}: bbox {bbox!r} is not [x, y, width, height] numbers")
        if image_id not in boxes_by_image:
            raise DatasetError(f"{where}: unknown image_id {image_id} (not in 'images')")
        if cat_id not in categories:
            raise DatasetError(f"{where}: unknown category_id {cat_id} (not in 'categories')")
        boxes_by_image[image_id].append(ann)
    return images, boxes_by_image, categories


def _coco_document(data: bytes, source: str) -> dict:
    """The COCO file's JSON object, with its ``images``, ``annotations`` and ``categories`` lists.

    Raises:
        DatasetError: not JSON (with line and column), not UTF-8, not an object, or one of the
            three keys is missing or not a list.
    """
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{source}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
        ) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{source}: not UTF-8 text ({exc.reason})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{source}: top level is not a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            problem = "missing" if key not in doc else "not a list"
            raise DatasetError(f"{source}: top-level key {key!r} is {problem}")
    return doc


def _coco_categories(entries: list, source: str) -> dict[int, str]:
    """Category id -> name (stripped) from the ``categories`` entries.

    Raises:
        DatasetError: a missing or mistyped field, an id listed twice, or an empty name.
    """
    categories: dict[int, str] = {}
    for index, cat in enumerate(entries):
        where = f"{source}: categories[{index}]"
        cat_id = _field(cat, "id", int, where)
        name = _field(cat, "name", str, where).strip()
        if cat_id in categories:
            raise DatasetError(f"{where}: category id {cat_id} listed twice")
        if not name:
            raise DatasetError(f"{where}: empty 'name'")
        categories[cat_id] = name
    return categories


def _coco_images(entries: list, source: str) -> tuple[list[dict], dict[int, list[dict]]]:
    """The checked ``images`` entries in file order, and an empty box list per image id.

    Raises:
        DatasetError: a missing or mistyped field, a size in pixels that is not positive, or
            an image id or file name listed twice.
    """
    images: list[dict] = []
    boxes_by_image: dict[int, list[dict]] = {}
    names: set[str] = set()
    for index, image in enumerate(entries):
        where = f"{source}: images[{index}]"
        image_id = _field(image, "id", int, where)
        file_name = _field(image, "file_name", str, where)
        width = _field(image, "width", int, where)
        height = _field(image, "height", int, where)
        if width <= 0 or height <= 0:
            raise DatasetError(f"{where} ({file_name}): image size {width}x{height} not positive")
        if image_id in boxes_by_image:
            raise DatasetError(f"{where} ({file_name}): image id {image_id} listed twice")
        if file_name in names:
            raise DatasetError(f"{where}: file_name {file_name!r} listed twice")
        names.add(file_name)
        boxes_by_image[image_id] = []
        images.append(image)
    return images, boxes_by_image


def load_coco_split(
    storage: Storage, split: str, limit: int | None = None, root: str = ""
) -> tuple[list[DetectionRecord], BoxCounts]:
    """Read one split folder of a Roboflow COCO export into records.

    Records follow the JSON's ``images`` order, images without boxes kept (negatives); each
    record's boxes follow ``annotations`` order, converted from ``[x, y, width, height]`` to pixel
    ``(x1, y1, x2, y2)``, clipped to the image and dropped (and counted) when nothing is left
    (:func:`pipelines.formats.records.sanitize_box`). ``iscrowd`` is ignored: crowd boxes are
    ordinary boxes (Roboflow writes 0). Every annotation is checked, also those of images beyond
    ``limit``.

    Args:
        storage: holds the export.
        split: the split folder (Roboflow: ``train``, ``valid``, ``test``).
        limit: keep only the first ``limit`` images of the JSON's ``images`` list.
        root: key prefix of the export in the storage (``""``: the storage root).

    Returns:
        ``(records, counts)``; image keys ``<root>/<split>/<file_name>``, ids ``file_name``
        without its extension (unique within a split, as the files share one folder).

    Raises:
        DatasetError: the split's annotation file is missing (the message lists the split
            folders that have one) or malformed (see :func:`parse_coco_json`).
    """
    key = join_key(root, f"{split}/{ANNOTATIONS}")
    try:
        data = storage.read(key)
    except ObjectNotFound:
        raise DatasetError(
            f"split {split!r} not found: {storage.describe(key)} is missing; "
            f"split folders with {ANNOTATIONS}: "
            f"{', '.join(available_splits(storage, root)) or 'none'}"
        ) from None
    source = storage.describe(key)
    images, boxes_by_image, categories = parse_coco_json(data, source)
    if limit is not None:
        images = images[:limit]
    records, counts = [], BoxCounts()
    for image in images:
        width, height, file_name = image["width"], image["height"], image["file_name"]
        boxes, labels = [], []
        for ann in boxes_by_image[image["id"]]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            name = categories[ann["category_id"]]
            where = f"{source} annotation id {ann.get('id', '?')} {name} bbox {ann['bbox']}"
            kept = counts.keep((x, y, x + w, y + h), width, height, where)
            if kept is not None:
                boxes.append(kept)
                labels.append(name)
        records.append(
            DetectionRecord(
                id=posixpath.splitext(file_name)[0],
                image_key=join_key(root, f"{split}/{file_name}"),
                boxes=tuple(boxes),
                labels=tuple(labels),
                width=width,
                height=height,
            )
        )
    return records, counts
