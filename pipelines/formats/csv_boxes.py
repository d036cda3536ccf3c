"""Reader for box annotations in CSV: one row per box, one file per split.

The format of the TensorFlow Object Detection API tutorials and Roboflow's "Tensorflow Object
Detection CSV" export: ``filename,width,height,class,xmin,ymin,xmax,ymax`` (a header row
naming the columns, in any order; extra columns ignored), coordinates in pixels (``xmin <
xmax``, ``ymin < ymax``, within ``width`` x ``height``). Two layouts, both detected:
``<split>_labels.csv`` + ``images/<filename>`` (TF OD API, e.g. the raccoon dataset) and
``<split>/_annotations.csv`` + ``<split>/<filename>`` (Roboflow).
"""

from __future__ import annotations

import csv
import io
import math

from pipelines.formats.records import BoxCounts, DatasetError, DetectionRecord
from pipelines.storage.base import ObjectNotFound, Storage, join_key

#: The columns a file must have.
COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
#: Roboflow's annotation file name inside a split's folder.
ROBOFLOW_FILE = "_annotations.csv"


def layouts(split: str) -> list[tuple[str, str]]:
    """``(annotation file, image folder)`` of each layout for ``split``, relative to the root."""
    return [(f"{split}_labels.csv", "images"), (f"{split}/{ROBOFLOW_FILE}", split)]


def find_split_file(storage: Storage, split: str, root: str = "") -> tuple[str, str] | None:
    """The split's annotation file and image folder (storage keys), or None if no layout has one."""
    for name, folder in layouts(split):
        if storage.exists(join_key(root, name)):
            return join_key(root, name), join_key(root, folder)
    return None


def load_csv_split(
    storage: Storage, split: str, limit: int | None = None, root: str = ""
) -> tuple[list[DetectionRecord], BoxCounts]:
    """Read a split's CSV into records (ids: the file names without their suffix).

    The rows of one image need not be adjacent; images keep the order of their first row. Boxes
    outside the image are clipped, degenerate ones dropped and counted
    (:meth:`pipelines.formats.records.BoxCounts.keep`).

    Args:
        limit: keep only the first ``limit`` images.

    Raises:
        DatasetError: no annotation file for the split, a file that is not UTF-8 CSV with the
            columns, a malformed row (file and line named), an image whose rows disagree on
            its size, or two images with the same id.
    """
    found = find_split_file(storage, split, root)
    if found is None:
        names = " nor ".join(join_key(root, name) for name, _ in layouts(split))
        raise DatasetError(f"split {split!r}: found neither {names} in {storage.describe(root)}")
    key, folder = found
    where = storage.describe(key)
    try:
        text = storage.read(key).decode("utf-8-sig")  # Excel writes a BOM
    except ObjectNotFound:
        raise DatasetError(f"{where} disappeared while being read") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(
            f"{where}: the header lacks {', '.join(missing)}; expected the columns "
            f"{','.join(COLUMNS)}"
        )
    images: dict[str, dict] = {}
    counts = BoxCounts()
    try:
        for row in reader:
            line = f"{where}:{reader.line_num}"
            filename, width, height, name, box = _parse_row(row, line)
            image = images.setdefault(
                filename, {"width": width, "height": height, "boxes": [], "labels": []}
            )
            if (image["width"], image["height"]) != (width, height):
                raise DatasetError(
                    f"{line}: {filename} is {width}x{height} here but "
                    f"{image['width']}x{image['height']} on an earlier line"
                )
            kept = counts.keep(box, width, height, line)
            if kept is not None:
                image["boxes"].append(kept)
                image["labels"].append(name)
    except csv.Error as exc:
        raise DatasetError(f"{where}:{reader.line_num}: not valid CSV: {exc}") from None
    records, ids = [], {}
    for filename, image in images.items():
        image_id = filename.rsplit(".", 1)[0] if "." in filename else filename
        if image_id in ids:
            raise DatasetError(f"{where}: {ids[image_id]} and {filename} have the same id")
        ids[image_id] = filename
        records.append(
            DetectionRecord(
                id=image_id,
                image_key=join_key(folder, filename),
                boxes=tuple(image["boxes"]),
                labels=tuple(image["labels"]),
                width=image["width"],
                height=image["height"],
            )
        )
    return (records if limit is None else records[:limit]), counts


def _parse_row(row: dict, line: str) -> tuple[str, int, int, str, tuple[float, ...]]:
    """``(filename, width, height, class, (xmin, ymin, xmax, ymax))`` of one row.

    Raises:
        DatasetError: an empty or missing field, a filename that is absolute or leaves the
            folder, a size that is not a positive whole number, a coordinate that is not a
            finite number (``line`` names the place).
    """
    values = {c: (row.get(c) or "").strip() for c in COLUMNS}
    empty = [c for c in COLUMNS if not values[c]]
    if empty:
        raise DatasetError(f"{line}: empty {', '.join(empty)}")
    filename = values["filename"]
    if filename.startswith("/") or ".." in filename.split("/"):
        raise DatasetError(f"{line}: filename {filename!r} must be relative, inside the folder")
    size = []
    for c in ("width", "height"):
        try:
            number = float(values[c])
        except ValueError:
            raise DatasetError(f"{line}: {c} {values[c]!r} is not a number") from None
        if not number.is_integer() or number <= 0:
            raise DatasetError(f"{line}: {c} {values[c]!r} is not a positive whole number")
        size.append(int(number))
    box = []
    for c in ("xmin", "ymin", "xmax", "ymax"):
        try:
            number = float(values[c])
        except ValueError:
            raise DatasetError(f"{line}: {c} {values[c]!r} is not a number") from None
        if not math.isfinite(number):
            raise DatasetError(f"{line}: {c} is {values[c]}")
        box.append(number)
    return filename, size[0], size[1], values["class"], tuple(box)
