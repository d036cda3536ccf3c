"""What a dataset format reader produces: one record per image, plus the counts of what it fixed.

Every detection format (Pascal VOC, COCO, Open Images) ends in :class:`DetectionRecord` s and
the folder-per-class format in :class:`ClassificationRecord` s, so that both access patterns and
the shard writer work with any of them. A record serialises to the JSON annotation stored in a
shard beside the image (:func:`record_from_json` reads either kind back).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import UserError


class DatasetError(UserError):
    """The dataset itself is wrong (missing or malformed file); the message names the file."""


@dataclass(frozen=True)
class DetectionRecord:
    """One image and its boxes.

    Attributes:
        id: the image id, unique in the dataset (e.g. ``BloodImage_00007``).
        image_key: storage key of the encoded image (JPEG or PNG).
        boxes: pixel ``(x1, y1, x2, y2)`` per box, ``0 <= x1 < x2 <= width`` and likewise for y.
        labels: class name per box, same length as ``boxes``.
        width: image width in pixels, as the annotation states it.
        height: image height in pixels.
    """

    id: str
    image_key: str
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[str, ...]
    width: int
    height: int

    def to_json(self) -> dict:
        """The record as a JSON-serialisable dict (the shard annotation format)."""
        return {
            "id": self.id,
            "width": self.width,
            "height": self.height,
            "boxes": [list(b) for b in self.boxes],
            "labels": list(self.labels),
        }

    @classmethod
    def from_json(cls, data: dict, image_key: str) -> DetectionRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            id=data["id"],
            image_key=image_key,
            boxes=tuple(tuple(map(float, b)) for b in data["boxes"]),
            labels=tuple(data["labels"]),
            width=int(data["width"]),
            height=int(data["height"]),
        )


@dataclass(frozen=True)
class ClassificationRecord:
    """One image and its class.

    Attributes:
        id: unique id in the dataset (``<Class>/<file name without suffix>``).
        image_key: storage key of the encoded image (JPEG or PNG).
        label: class name (the folder's name).
    """

    id: str
    image_key: str
    label: str

    def to_json(self) -> dict:
        """The record as a JSON-serialisable dict (the shard annotation format)."""
        return {"id": self.id, "label": self.label}

    @classmethod
    def from_json(cls, data: dict, image_key: str) -> ClassificationRecord:
        """Inverse of :meth:`to_json`."""
        return cls(id=data["id"], image_key=image_key, label=data["label"])


Record = DetectionRecord | ClassificationRecord


def record_from_json(data: dict, image_key: str) -> Record:
    """Read a shard annotation back into a record.

    A :class:`ClassificationRecord` when it has a ``label``, else a :class:`DetectionRecord`.

    Raises:
        KeyError, ValueError, TypeError: the annotation is not one this tool writes.
    """
    if "label" in data:
        return ClassificationRecord.from_json(data, image_key)
    return DetectionRecord.from_json(data, image_key)


@dataclass
class BoxCounts:
    """How many boxes a reader kept, clipped to the image, or dropped as degenerate."""

    kept: int = 0
    clipped: int = 0
    dropped: int = 0
    dropped_where: list[str] = field(default_factory=list)

    def keep(
        self, box: tuple[float, float, float, float], width: int, height: int, where: str
    ) -> tuple[float, float, float, float] | None:
        """Sanitize ``box`` (see :func:`sanitize_box`) and count what happened to it.

        Args:
            where: names the box in the dropped list (file, line or object index).

        Returns:
            The kept (possibly clipped) box, or None when it was dropped.
        """
        kept, clipped = sanitize_box(box, width, height)
        if kept is None:
            self.dropped += 1
            self.dropped_where.append(where)
            return None
        self.kept += 1
        self.clipped += int(clipped)
        return kept

    def add(self, other: BoxCounts) -> None:
        """Accumulate another count into this one."""
        self.kept += other.kept
        self.clipped += other.clipped
        self.dropped += other.dropped
        self.dropped_where.extend(other.dropped_where)


def sanitize_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[tuple[float, float, float, float] | None, bool]:
    """Clip a pixel xyxy box to the image and reject it when nothing is left.

    Returns:
        ``(box, clipped)``: the clipped box, or ``None`` when its width or height is zero or
        negative after clipping (a degenerate box, or one wholly outside the image);
        ``clipped`` says whether clipping changed it. torchvision's detection models reject
        boxes with non-positive width or height, so such boxes must never reach them.
    """
    x1, y1, x2, y2 = box
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 <= cx1 or cy2 <= cy1:
        return None, False
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    return (cx1, cy1, cx2, cy2), clipped
