"""From encoded bytes to training tensors: decode, transform, batch.

Every access pattern yields one :class:`Sample` per image; :func:`collate` makes them a
:class:`Batch`. A sample whose image cannot be decoded has ``image`` None and ``error`` set;
:func:`collate` drops it from the batch and counts it, so a corrupt JPEG costs one sample, not
the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import get_worker_info
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from pipelines.formats.records import ClassificationRecord, DatasetError, Record
from pipelines.storage.base import CallStats, RequestStats


def detection_transform(train: bool, image_size: int) -> v2.Compose:
    """The torchvision ``transforms.v2`` pipeline applied to every detection sample.

    It takes and returns ``(tv_tensors.Image uint8 [3, H, W], target dict)``, boxes as
    ``tv_tensors.BoundingBoxes`` so that v2 resizes and flips them with the image, and ends with
    float32 images scaled to [0, 1].

    Args:
        train: add a random horizontal flip (p=0.5).
        image_size: resize so that the shorter side is ``image_size`` pixels (aspect kept).
    """
    steps: list = [v2.Resize(image_size, antialias=True)]
    if train:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def classification_transform(train: bool, image_size: int) -> v2.Compose:
    """The torchvision ``transforms.v2`` pipeline applied to every classification sample.

    Takes ``tv_tensors.Image`` uint8 ``[3, H, W]``; returns float32 ``[3, image_size,
    image_size]`` in [0, 1] (normalisation is part of the model, see
    :class:`models.classifier.Classifier`).

    Args:
        train: a random resized crop (70-100 % of the area, aspect 3:4 to 4:3, torchvision's
            ``RandomResizedCrop``) and a random horizontal flip (p=0.5) instead of a plain
            resize.
        image_size: output side in pixels: images become ``image_size`` x ``image_size``
            (aspect not kept, as the serving handler does).
    """
    size = (image_size, image_size)
    if train:
        steps: list = [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    else:
        steps = [v2.Resize(size, antialias=True)]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def decode(data: bytes) -> tv_tensors.Image:
    """Decode JPEG or PNG bytes into a ``tv_tensors.Image`` (uint8 ``[3, H, W]``, RGB).

    Raises:
        ValueError: the bytes are not a decodable JPEG/PNG image.
    """
    if not data:
        raise ValueError("empty file")
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return tv_tensors.Image(decode_image(raw, mode=ImageReadMode.RGB))
    except RuntimeError as exc:
        raise ValueError(f"not a decodable JPEG/PNG image ({str(exc).splitlines()[0]})") from None


@dataclass(slots=True)
class Sample:
    """One image as an access pattern yields it.

    Attributes:
        id: the image id.
        read: the figures of the storage call that read it (a shard's: this sample's share):
            bytes, seconds, requests, retries, TTFB, errors.
        read_at: ``time.perf_counter()`` when reading it began (inf: unknown).
        image: float32 ``[3, H, W]`` in [0, 1]; None when not decoded (the benchmark's read
            path) or undecodable (``error``).
        target: detection: ``{"boxes": tv_tensors.BoundingBoxes float32 [N, 4] (XYXY
            pixels), "labels": int64 [N]}``; classification: int64 ``[]`` (the class index);
            None without an image.
        error: why the image could not be decoded (the sample is then skipped), or None.
    """

    id: str
    read: CallStats
    read_at: float = math.inf
    image: torch.Tensor | None = None
    target: dict | torch.Tensor | None = None
    error: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes read from storage for this sample."""
        return self.read.nbytes

    @property
    def read_s(self) -> float:
        """Seconds spent in storage reads for this sample."""
        return self.read.seconds


def make_sample(
    record: Record,
    data: bytes,
    *,
    read: CallStats,
    transform: v2.Compose | None,
    class_to_index: dict[str, int],
    read_at: float = math.inf,
) -> Sample:
    """Decode and transform one image with its target into a :class:`Sample`.

    The target follows the record: boxes and labels for a
    :class:`pipelines.formats.records.DetectionRecord`, the class index for a
    :class:`pipelines.formats.records.ClassificationRecord`. With ``transform=None`` the bytes
    are not decoded (``image`` and ``error`` stay None): the benchmark's storage path alone.
    ``read`` and ``read_at`` are as in :class:`Sample`.

    Raises:
        DatasetError: a label is not one of the configured classes.
    """
    sample = Sample(record.id, read, read_at)
    names = [record.label] if isinstance(record, ClassificationRecord) else record.labels
    try:
        labels = torch.tensor([class_to_index[name] for name in names], dtype=torch.int64)
    except KeyError as exc:
        raise DatasetError(
            f"image {record.id}: class {exc.args[0]!r} is not one of the configured classes "
            f"{sorted(class_to_index)}; add it to dataset.classes"
        ) from None
    if transform is None:
        return sample
    try:
        image = decode(data)
    except ValueError as exc:
        sample.error = f"{record.image_key}: {exc}"
        return sample
    if isinstance(record, ClassificationRecord):
        sample.image, sample.target = transform(image), labels[0]
        return sample
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
        format="XYXY",
        canvas_size=tuple(image.shape[-2:]),
    )
    sample.image, sample.target = transform(image, {"boxes": boxes, "labels": labels})
    return sample


@dataclass
class Batch:
    """A batch as the training loop sees it.

    Attributes:
        images: float32 ``[3, H, W]`` tensors (detection: sizes may differ).
        targets: per image, a ``{"boxes", "labels"}`` dict (detection) or an int64 ``[]``
            class index (classification).
        ids: image ids, in batch order (also of samples read without decoding).
        nbytes: bytes read from storage for the batch, including skipped samples.
        read_s: seconds spent in storage reads, summed over the batch's samples.
        read_at: ``time.perf_counter()`` at which reading the earliest of its samples began
            (inf: unknown). On Linux, macOS and Windows this clock is system-wide, so times
            taken in DataLoader workers compare with the training process's.
        errors: ``(id, message)`` of samples that were skipped (corrupt image).
        requests: storage requests made for the batch's samples.
        reads: per sample, skipped ones included, ``(id, bytes, read_at, read_s)``: what the
            access trace records (``output.trace``).
        worker: the DataLoader worker that made the batch (-1: the training process).
    """

    images: list[torch.Tensor] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    nbytes: int = 0
    read_s: float = 0.0
    read_at: float = math.inf
    errors: list[tuple[str, str]] = field(default_factory=list)
    requests: RequestStats = field(default_factory=RequestStats)
    reads: list[tuple[str, int, float, float]] = field(default_factory=list)
    worker: int = -1

    def pin_memory(self) -> Batch:
        """The batch with its images and target tensors in pinned (page-locked) host memory.

        The DataLoader's pin-memory thread (``loader.pin_memory: true``) calls this on objects
        it does not know; without it the batch would pass through unpinned.

        Raises:
            RuntimeError: no accelerator to pin memory for (the DataLoader only pins when one
                is available).
        """

        def pin(target):
            if isinstance(target, dict):
                return {k: v.pin_memory() for k, v in target.items()}
            return target.pin_memory()

        images = [image.pin_memory() for image in self.images]
        return replace(self, images=images, targets=[pin(t) for t in self.targets])


def collate(samples: list[Sample]) -> Batch:
    """DataLoader ``collate_fn``: images stay a list, as detection models take them."""
    info = get_worker_info()
    batch = Batch(worker=info.id if info is not None else -1)
    for sample in samples:
        read = sample.read
        batch.reads.append((sample.id, read.nbytes, sample.read_at, read.seconds))
        batch.nbytes += read.nbytes
        batch.read_s += read.seconds
        batch.read_at = min(batch.read_at, sample.read_at)
        batch.requests.add(read)
        if sample.error is not None:
            batch.errors.append((sample.id, sample.error))
            continue
        batch.ids.append(sample.id)
        if sample.image is None:  # read without decoding (benchmark)
            continue
        batch.images.append(sample.image)
        batch.targets.append(sample.target)
    return batch
