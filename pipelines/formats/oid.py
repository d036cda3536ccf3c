"""Open Images reader, as the OIDv4 toolkit downloads it: ``<split>/<Class>/<id>.jpg`` + labels.

Format: OIDv4_ToolKit (github.com/EscVM/OIDv4_ToolKit, README "Labels"). Under the toolkit's
``OID/Dataset`` folder (``root`` here), one folder per split (``train``, ``validation``,
``test``), one per downloaded class in it, holding the images ``<id>.jpg`` and
``Label/<id>.txt`` with one box per line, ``<class name> x_min y_min x_max y_max`` in pixels
of the image. The image size is not in the labels: it is read from the image header.
"""

from __future__ import annotations

import io
import logging
import math
from collections import defaultdict

from PIL import Image

from pipelines.formats.records import BoxCounts, DatasetError, DetectionRecord
from pipelines.storage.base import Storage, join_key, relative_keys

log = logging.getLogger(__name__)

LABEL_DIR = "Label"
IMAGE_SUFFIX = ".jpg"
LABEL_SUFFIX = ".txt"
#: Bytes read to find the image size; a JPEG's SOF marker nearly always lies in the first 64 KiB
#: (a larger EXIF block or thumbnail falls back to reading the whole image).
HEADER_BYTES = 64 * 1024


def parse_oid_label(
    data: bytes, source: str
) -> list[tuple[int, str, tuple[float, float, float, float]]]:
    """Parse one toolkit label file.

    Args:
        data: the ``.txt`` file's bytes.
        source: the file's path or URI, used in error messages.

    Returns:
        ``(line number, class name, (x_min, y_min, x_max, y_max))`` per non-blank line, pixels,
        not yet clipped to the image. The four numbers are read from the right: the rest of the
        line is the class name, which may contain spaces (``Vehicle registration plate``).

    Raises:
        DatasetError: not UTF-8, or a line that is not a name followed by four finite numbers
            (``path:line``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{source}: not UTF-8 text ({exc.reason})") from None
    boxes = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) < 5:
                raise ValueError
            box = tuple(float(v) for v in parts[-4:])
            if not all(math.isfinite(v) for v in box):
                raise ValueError
        except ValueError:
            raise DatasetError(
                f"{source}:{lineno}: expected '<class name> x_min y_min x_max y_max' "
                f"(pixels), got {line.strip()!r}"
            ) from None
        boxes.append((lineno, " ".join(parts[:-4]), box))
    return boxes


def image_size(storage: Storage, key: str) -> tuple[int, int]:
    """``(width, height)`` in pixels from the image header (first :data:`HEADER_BYTES` bytes).

    Raises:
        DatasetError: the image cannot be identified, even when read whole.
    """
    head = storage.read_range(key, 0, HEADER_BYTES)
    try:
        return _size(head)
    except Exception as exc:  # PIL raises several kinds on a truncated or unknown header
        if len(head) < HEADER_BYTES:  # that was the whole file
            raise DatasetError(f"{storage.describe(key)}: not a readable image ({exc})") from None
    try:
        return _size(storage.read(key))
    except Exception as exc:
        raise DatasetError(f"{storage.describe(key)}: not a readable image ({exc})") from None


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _top_folders(storage: Storage, root: str) -> list[str]:
    return sorted({k.split("/")[0] for k in relative_keys(storage, root) if "/" in k})


def load_oid_split(
    storage: Storage, split: str, limit: int | None = None, root: str = ""
) -> tuple[list[DetectionRecord], BoxCounts]:
    """Read one split of an OIDv4 toolkit download into records.

    The toolkit downloads an image once per class folder it belongs to: the same image id in
    several class folders is one record with the boxes of all its label files merged (folders in
    sorted order, lines in file order; identical boxes are not de-duplicated), its image key the
    jpg in the first folder. Records are ordered by (first class folder, image id), whatever the
    listing order; only the labels and headers of the first ``limit`` are read. Boxes are clipped
    to the image and dropped (and counted) when nothing is left
    (:func:`pipelines.formats.records.sanitize_box`). A label file without its image (an
    interrupted copy) is skipped with a warning; label files with no lines give records without
    boxes.

    Args:
        storage: holds the download.
        split: the split folder (toolkit: ``train``, ``validation``, ``test``).
        limit: keep only the first ``limit`` images of that order.
        root: key prefix of the toolkit's ``Dataset`` folder (``""``: the storage root).

    Returns:
        ``(records, counts)``; record ids are the Open Images ids, image keys
        ``<root>/<split>/<first class folder>/<id>.jpg``.

    Raises:
        DatasetError: the split folder is missing or empty (the message lists the folders
            found), a class folder has images but no ``Label/`` folder, an image has no label
            file (the toolkit always writes both), a label line does not parse (``path:line``),
            or an image is unreadable.
    """
    base = join_key(root, split)
    keys = list(relative_keys(storage, base))
    if not keys:
        raise DatasetError(
            f"split {split!r} not found: {storage.describe(base)} is missing or empty; "
            f"folders found: {', '.join(_top_folders(storage, root)) or 'none'}"
        )
    folders_of, labels = _index_split(keys)
    _warn_orphan_labels(storage, base, split, folders_of, labels)
    for folders in folders_of.values():
        folders.sort()
    _check_labelled_folders(storage, base, folders_of, labels)
    ids = sorted(folders_of, key=lambda image_id: (folders_of[image_id][0], image_id))
    if limit is not None:
        ids = ids[:limit]

    records, counts = [], BoxCounts()
    for image_id in ids:
        records.append(_read_record(storage, base, image_id, folders_of[image_id], labels, counts))
    return records, counts


def _index_split(keys: list[str]) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """Sort a split's keys (relative to its folder) into images and label files.

    Returns:
        ``(folders_of, labels)``: image id -> the class folders holding its jpg (in listing
        order), and the ``(class folder, image id)`` of every label file.
    """
    folders_of: dict[str, list[str]] = defaultdict(list)  # image id -> class folders
    labels: set[tuple[str, str]] = set()  # (class folder, image id)
    for key in keys:
        parts = key.split("/")
        if len(parts) == 2 and parts[1].endswith(IMAGE_SUFFIX):
            folders_of[parts[1][: -len(IMAGE_SUFFIX)]].append(parts[0])
        elif len(parts) == 3 and parts[1] == LABEL_DIR and parts[2].endswith(LABEL_SUFFIX):
            labels.add((parts[0], parts[2][: -len(LABEL_SUFFIX)]))
    return folders_of, labels


def _warn_orphan_labels(
    storage: Storage,
    base: str,
    split: str,
    folders_of: dict[str, list[str]],
    labels: set[tuple[str, str]],
) -> None:
    """Log one warning for the label files whose image is not in their class folder (skipped)."""
    orphans = sorted(
        f"{split}/{folder}/{LABEL_DIR}/{image_id}{LABEL_SUFFIX}"
        for folder, image_id in labels
        if folder not in folders_of.get(image_id, ())
    )
    if orphans:
        log.warning(
            "%s: skipped %d label file(s) without their image, e.g. %s",
            storage.describe(base),
            len(orphans),
            orphans[0],
        )


def _check_labelled_folders(
    storage: Storage, base: str, folders_of: dict[str, list[str]], labels: set[tuple[str, str]]
) -> None:
    """Refuse a class folder that holds images but no ``Label/`` folder (no label file).

    Raises:
        DatasetError: names the first such folder (sorted by name).
    """
    label_dirs = {folder for folder, _ in labels}
    unlabelled = sorted({f for folders in folders_of.values() for f in folders} - label_dirs)
    if unlabelled:
        raise DatasetError(
            f"class folder {storage.describe(join_key(base, unlabelled[0]))} has images but no "
            f"{LABEL_DIR}/ folder: copy the toolkit's labels with the images"
        )


def _read_record(
    storage: Storage,
    base: str,
    image_id: str,
    folders: list[str],
    labels: set[tuple[str, str]],
    counts: BoxCounts,
) -> DetectionRecord:
    """Read the record of one image from its class ``folders`` (sorted).

    Its size comes from its header in the first folder, its boxes from its label files in all of
    them, clipped (``counts`` counts what is dropped).

    Raises:
        DatasetError: a label file is missing or does not parse, or the image is unreadable.
    """
    boxes, names = [], []
    image_key = join_key(base, f"{folders[0]}/{image_id}{IMAGE_SUFFIX}")
    width, height = image_size(storage, image_key)
    for folder in folders:
        label_key = join_key(base, f"{folder}/{LABEL_DIR}/{image_id}{LABEL_SUFFIX}")
        if (folder, image_id) not in labels:
            raise DatasetError(
                f"label file missing for image {image_id!r}: {storage.describe(label_key)}"
            )
        source = storage.describe(label_key)
        for lineno, name, box in parse_oid_label(storage.read(label_key), source):
            kept = counts.keep(box, width, height, f"{source}:{lineno} {name} {box}")
            if kept is not None:
                boxes.append(kept)
                names.append(name)
    return DetectionRecord(
        id=image_id,
        image_key=image_key,
        boxes=tuple(boxes),
        labels=tuple(names),
        width=width,
        height=height,
    )
