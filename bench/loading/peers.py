"""Peer libraries doing the same job as the benchmark's loaders, measured the same way.

Each peer loads the same objects with the same batch size and DataLoader workers and does our
per-sample work (:class:`DetectionWork`: decode, the same ``transforms.v2`` pipeline, targets from
the split's records or a shard's ``.json``), so a configuration's ratio to a peer compares the
loading, not the work: :func:`imagefolder_peer` (torchvision ``ImageFolder``-style, PIL),
:func:`s3torchconnector_peer` (``S3MapDataset`` / ``S3IterableDataset``), :func:`webdataset_peer`
(plain ``webdataset.WebDataset`` over the same shards). Timing follows a loader benchmark's usual
rule, which our read passes also report (``samples_per_s_after_warmup``): the first
``warmup_batches`` batches are drawn and not counted; the clock runs from the next ``next()`` to the
last measured batch (read-ahead during the warm-up counts on both sides alike). Units: seconds,
bytes, samples/s, MB/s = 10^6 bytes/s.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, get_worker_info
from torchvision import tv_tensors
from torchvision.datasets.folder import default_loader
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from pipelines.formats.records import (
    ClassificationRecord,
    DetectionRecord,
    Record,
    record_from_json,
)
from pipelines.samples import classification_transform, detection_transform
from training.meter import gc_frozen

if TYPE_CHECKING:
    from s3torchconnector import S3Reader


@dataclass(frozen=True)
class PeerResult:
    """One peer library's measured loading throughput.

    Attributes:
        name: ``imagefolder``, ``s3torchconnector-map``, ``s3torchconnector-iterable`` or
            ``webdataset``.
        samples: images in the measured batches (warm-up batches excluded).
        batches: measured batches.
        seconds: wall-clock seconds from the first measured ``next()`` to the last batch.
        samples_per_s: ``samples / seconds``.
        bytes: encoded bytes read for the measured samples (file / object sizes).
        mbps: ``bytes / seconds / 1e6`` (MB/s, 10^6 bytes per second).
        warmup_batches: batches drawn before the clock started.
    """

    name: str
    samples: int
    batches: int
    seconds: float
    samples_per_s: float
    bytes: int
    mbps: float
    warmup_batches: int


class DetectionWork:
    """Our per-sample work on a decoded image: its record's targets, then the detection transforms.

    The record's boxes and labels as torchvision targets, then
    :func:`pipelines.samples.detection_transform` (training's: resize, flip, float32) on both.

    Args:
        image_size: the shorter side after resizing, pixels.
        class_to_index: class name to label id (our loaders' mapping).
    """

    def __init__(self, image_size: int, class_to_index: dict[str, int]) -> None:
        self.transform = detection_transform(True, image_size)
        self.class_to_index = class_to_index

    def __call__(self, image: torch.Tensor, record: DetectionRecord) -> tuple:
        """``(image float32 [3, H', W'], {"boxes": BoundingBoxes [N, 4], "labels": int64 [N]})``.

        ``image`` is ``uint8 [3, H, W]``.
        """
        boxes = tv_tensors.BoundingBoxes(
            torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=tuple(image.shape[-2:]),
        )
        labels = torch.tensor([self.class_to_index[n] for n in record.labels], dtype=torch.int64)
        return self.transform(tv_tensors.Image(image), {"boxes": boxes, "labels": labels})


class ClassificationWork:
    """Our per-sample work for classification, called as :class:`DetectionWork`.

    :func:`pipelines.samples.classification_transform` (training's) and the record's class index.
    """

    def __init__(self, image_size: int, class_to_index: dict[str, int]) -> None:
        self.transform = classification_transform(True, image_size)
        self.class_to_index = class_to_index

    def __call__(self, image: torch.Tensor, record: ClassificationRecord) -> tuple:
        """``(image float32 [3, S, S], int64 [] class index)``."""
        label = torch.tensor(self.class_to_index[record.label], dtype=torch.int64)
        return self.transform(tv_tensors.Image(image)), label


def work_for(
    task: str, image_size: int, class_to_index: dict[str, int]
) -> DetectionWork | ClassificationWork:
    """The per-sample work of ``task`` (``detection`` or ``classification``)."""
    kind = DetectionWork if task == "detection" else ClassificationWork
    return kind(image_size, class_to_index)


def decode(data: bytes) -> torch.Tensor:
    """JPEG/PNG bytes to ``uint8 [3, H, W]`` RGB with torchvision's decoder."""
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)


def collate_images(items: list[tuple]) -> tuple[list, list, int]:
    """Batch ``(image, target, nbytes)`` items (any sizes) into ``(images, targets, bytes)``."""
    return [item[0] for item in items], [item[1] for item in items], sum(i[2] for i in items)


def epochs_sampler(n: int, epochs: int, seed: int) -> RandomSampler:
    """A map-style peer's sampler: ``epochs`` shuffles of ``n`` items back to back, seeded by
    ``seed`` (as the compared pass reads its epochs in one iteration)."""
    return RandomSampler(
        range(n), num_samples=n * epochs, generator=torch.Generator().manual_seed(seed)
    )


def time_loader(
    name: str, loader: Iterable, *, warmup_batches: int, max_batches: int | None
) -> PeerResult:
    """Draw ``warmup_batches`` batches, then time up to ``max_batches`` more (all when None)."""
    if warmup_batches < 0:
        raise ValueError(f"warmup_batches={warmup_batches} must not be negative")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches} must be at least 1")
    with gc_frozen():  # as our loaders are measured (training.engine.measure_steps)
        batches = iter(loader)
        try:
            for _ in range(warmup_batches):
                if next(batches, None) is None:
                    raise ValueError(
                        f"{name}: the data ended during the {warmup_batches} warm-up batches: "
                        "give more objects or fewer warm-up batches"
                    )
            samples = nbytes = count = 0
            start = time.perf_counter()
            for images, _targets, batch_bytes in batches:
                samples += len(images)
                nbytes += batch_bytes
                count += 1
                if count == max_batches:
                    break
            seconds = time.perf_counter() - start
        finally:
            del batches  # stops the DataLoader's workers now, not at garbage collection
    if count == 0:
        raise ValueError(f"{name}: no batch left to measure after {warmup_batches} warm-up batches")
    per_s = 1 / seconds if seconds > 0 else float("inf")
    return PeerResult(
        name=name,
        samples=samples,
        batches=count,
        seconds=seconds,
        samples_per_s=samples * per_s,
        bytes=nbytes,
        mbps=nbytes * per_s / 1e6,
        warmup_batches=warmup_batches,
    )


class ImageFileDataset(Dataset):
    """What an ``ImageFolder`` user gets over a list of files, with our per-sample work.

    PIL ``default_loader`` + ``transforms.v2`` (:class:`DetectionWork`); items are ``(image, target,
    file size in bytes)``.

    Raises:
        OSError: a file is missing (when listed) or unreadable (when loaded).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        records: Sequence[Record],
        work: DetectionWork | ClassificationWork,
    ) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.records = list(records)
        self.sizes = [os.path.getsize(p) for p in self.paths]
        self.to_image = v2.PILToTensor()
        self.work = work

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        image = self.to_image(default_loader(self.paths[i]))
        return *self.work(image, self.records[i]), self.sizes[i]


def imagefolder_peer(
    paths: Sequence[str | os.PathLike],
    records: Sequence[DetectionRecord],
    *,
    batch_size: int,
    num_workers: int,
    image_size: int,
    class_to_index: dict[str, int],
    task: str = "detection",
    epochs: int = 1,
    max_batches: int | None = None,
    warmup_batches: int = 2,
    seed: int = 0,
) -> PeerResult:
    """torchvision ImageFolder-style loading of ``paths`` with a plain shuffled ``DataLoader``.

    Args:
        paths: image files (JPEG/PNG), the same ones the compared configuration reads.
        records: their records (the boxes), in the same order.
        class_to_index: class name to label id.
        task: ``detection`` or ``classification``: the per-sample work (:func:`work_for`).
        epochs: epochs read back to back in one iteration, as the compared pass reads them (so an
            epoch's tail, where workers with fewer items have finished, is the same on both sides).
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0: load in this process).
        image_size: shorter side after resizing, in pixels.
        max_batches: batches to time after the warm-up; None: until the data ends.
        warmup_batches: batches drawn before the clock starts.
        seed: shuffle order.

    Returns:
        A :class:`PeerResult` named ``imagefolder``.

    Raises:
        ValueError: no paths, or fewer than ``warmup_batches + 1`` batches.
        OSError: a file is missing or unreadable; PIL's errors for an undecodable image.
    """
    if not paths:
        raise ValueError("imagefolder_peer: no files")
    loader = DataLoader(
        ImageFileDataset(paths, records, work_for(task, image_size, class_to_index)),
        batch_size=batch_size,
        sampler=epochs_sampler(len(paths), epochs, seed),
        num_workers=num_workers,
        collate_fn=collate_images,
    )  # fmt: skip
    return time_loader(
        "imagefolder", loader, warmup_batches=warmup_batches, max_batches=max_batches
    )


def s3torchconnector_reason() -> str | None:
    """Why the s3torchconnector peers cannot run (it cannot be imported), or None when they can."""
    try:
        import s3torchconnector  # noqa: F401
    except Exception as exc:  # ImportError, or a native library that fails to load
        return f"s3torchconnector cannot be imported ({type(exc).__name__}: {exc})"
    return None


class ReadDecodeDetect:
    """s3torchconnector transform: read the ``S3Reader`` fully, decode it, do our per-sample work.

    The image is decoded with torchvision (RGB); the record is found by the reader's key. Returns
    ``(image, target, bytes read)``.

    Raises:
        s3torchconnector.S3Exception: the GET failed; RuntimeError: the bytes do not decode.
    """

    def __init__(
        self, records_by_key: dict[str, Record], work: DetectionWork | ClassificationWork
    ) -> None:
        self.records_by_key = records_by_key
        self.work = work

    def __call__(self, reader: S3Reader) -> tuple:
        data = reader.read()
        image, target = self.work(decode(data), self.records_by_key[reader.key])
        return image, target, len(data)


class ReadBytes:
    """s3torchconnector transform: read the ``S3Reader`` fully; ``(bytes, key)``, decoded later."""

    def __call__(self, reader: S3Reader) -> tuple[bytes, str]:
        return reader.read(), reader.key


class ShuffledDecode(IterableDataset):
    """Our ``objects`` pattern's steps after its reads, over another library's stream.

    The stream yields ``(bytes, key)``: WebDataset's shuffle buffer of ``shuffle_buffer`` items
    (seeded per worker), then decode and our per-sample work.
    """

    def __init__(
        self,
        stream: Iterable[tuple[bytes, str]],
        records_by_key: dict[str, Record],
        work: DetectionWork | ClassificationWork,
        shuffle_buffer: int,
        seed: int = 0,
    ) -> None:
        self.stream = stream
        self.records_by_key = records_by_key
        self.work = work
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed

    def __iter__(self) -> Iterator[tuple]:
        from webdataset.filters import shuffle as shuffle_stage

        worker = get_worker_info()
        rng = random.Random(f"{self.seed}-{worker.id if worker else 0}")
        items = iter(self.stream)
        if self.shuffle_buffer > 1:
            items = shuffle_stage(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(items)
        for data, key in items:
            image, target = self.work(decode(data), self.records_by_key[key])
            yield image, target, len(data)


def s3torchconnector_peer(
    kind: str,
    bucket: str,
    keys: Sequence[str],
    records: Sequence[DetectionRecord],
    *,
    endpoint: str | None,
    region: str,
    batch_size: int,
    num_workers: int,
    image_size: int,
    class_to_index: dict[str, int],
    task: str = "detection",
    epochs: int = 1,
    shuffle_buffer: int = 1,
    max_batches: int | None = None,
    warmup_batches: int = 2,
    seed: int = 0,
    force_path_style: bool = True,
) -> PeerResult | None:
    """AWS s3torchconnector datasets over ``s3://bucket/key`` for each key, with a DataLoader.

    ``kind="map"``: ``S3MapDataset.from_objects``, shuffled by ``DataLoader(shuffle=True)``.
    ``kind="iterable"``: ``S3IterableDataset.from_objects`` in the order of ``keys`` (listing
    order), sharded across the workers (``enable_sharding=True``: each object once per epoch),
    through a shuffle buffer of ``shuffle_buffer`` objects as our ``objects`` pattern
    (:class:`ShuffledDecode`). Credentials come from the standard AWS chain, as for boto3.

    Args:
        kind: ``"map"`` or ``"iterable"``.
        bucket: bucket name.
        keys: full object keys inside the bucket (prefix included).
        records: their records (the boxes), in the same order.
        class_to_index: class name to label id.
        task: ``detection`` or ``classification``: the per-sample work (:func:`work_for`).
        epochs: epochs read back to back in one iteration, as in :func:`imagefolder_peer`.
        endpoint: custom endpoint URL (MinIO, DSS, a local server); None for AWS.
        region: region name (the CRT client needs one, e.g. ``us-east-1``).
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0: load in this process).
        image_size: shorter side after resizing, in pixels.
        max_batches: batches to time after the warm-up; None: until the data ends.
        warmup_batches: batches drawn before the clock starts.
        seed: shuffle order (map).
        force_path_style: path-style requests (``endpoint/bucket/key``), right for custom endpoints.

    Returns:
        A :class:`PeerResult` named ``s3torchconnector-map`` / ``-iterable``; None when
        s3torchconnector cannot be imported (:func:`s3torchconnector_reason` says why).

    Raises:
        ValueError: unknown ``kind``, no keys, or fewer than ``warmup_batches + 1`` batches.
        s3torchconnector.S3Exception: a GET failed (missing object, credentials, endpoint).
    """
    if kind not in ("map", "iterable"):
        raise ValueError(f"kind={kind!r} is not 'map' or 'iterable'")
    if not keys:
        raise ValueError("s3torchconnector_peer: no objects")
    if s3torchconnector_reason() is not None:
        return None
    dataset, sampler = _s3torchconnector_dataset(
        kind, bucket, keys, records, work_for(task, image_size, class_to_index),
        endpoint=endpoint, region=region, epochs=epochs, shuffle_buffer=shuffle_buffer,
        seed=seed, force_path_style=force_path_style,
    )  # fmt: skip
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        sampler=sampler,
    )
    return time_loader(
        f"s3torchconnector-{kind}", loader, warmup_batches=warmup_batches, max_batches=max_batches
    )


def _s3torchconnector_dataset(
    kind: str,
    bucket: str,
    keys: Sequence[str],
    records: Sequence[Record],
    work: DetectionWork | ClassificationWork,
    *,
    endpoint: str | None,
    region: str,
    epochs: int,
    shuffle_buffer: int,
    seed: int,
    force_path_style: bool,
) -> tuple[Dataset, RandomSampler | None]:
    """:func:`s3torchconnector_peer`'s dataset, and the sampler that shuffles it or None.

    ``map``: sampled ``epochs`` times over the objects; ``iterable``: ``keys``' order, through
    :class:`ShuffledDecode`'s shuffle buffer, no sampler.
    """
    from s3torchconnector import S3ClientConfig, S3IterableDataset, S3MapDataset

    uris = [f"s3://{bucket}/{key}" for key in keys]
    records_by_key = dict(zip(keys, records, strict=True))
    common = dict(
        region=region,
        endpoint=endpoint,
        s3client_config=S3ClientConfig(force_path_style=force_path_style),
    )
    if kind == "map":
        dataset = S3MapDataset.from_objects(
            uris, transform=ReadDecodeDetect(records_by_key, work), **common
        )
        return dataset, epochs_sampler(len(uris), epochs, seed)
    stream = S3IterableDataset.from_objects(
        uris * epochs, enable_sharding=True, transform=ReadBytes(), **common
    )
    return ShuffledDecode(stream, records_by_key, work, shuffle_buffer, seed), None


class _DecodeShardSample:
    """WebDataset stage: a raw sample (``jpg`` bytes, ``json``, ``__key__``...) to our output.

    ``(image, target, bytes of its image and annotation)``: the image decoded with torchvision, its
    ``.json`` annotation parsed (this tool's shard format), our per-sample work.
    """

    def __init__(self, work: DetectionWork):
        self.work = work

    def __call__(self, sample: dict) -> tuple:
        data = next(sample[k] for k in ("jpg", "jpeg", "png") if k in sample)
        record = record_from_json(json.loads(sample["json"]), sample["__key__"])
        image, target = self.work(decode(data), record)
        return image, target, len(data) + len(sample["json"])


def webdataset_peer(
    shard_paths: Sequence[str | os.PathLike],
    *,
    batch_size: int,
    num_workers: int,
    image_size: int,
    class_to_index: dict[str, int],
    task: str = "detection",
    epochs: int = 1,
    shuffle_buffer: int = 1,
    max_batches: int | None = None,
    warmup_batches: int = 2,
    seed: int = 0,
) -> PeerResult:
    """Plain ``webdataset.WebDataset`` over the shard files our ``shards`` pattern reads.

    Shard order shuffled (``shardshuffle``), each worker reading its share of the shards
    (``wds.split_by_worker``) ``epochs`` times (``repeat``), samples through a shuffle buffer of
    ``shuffle_buffer`` as our ``shards`` pattern, our per-sample work (boxes from each ``.json``),
    batched by the DataLoader.

    Returns:
        A :class:`PeerResult` named ``webdataset``.

    Raises:
        ValueError: no shards, or fewer than ``warmup_batches + 1`` batches.
    """
    import webdataset as wds

    if not shard_paths:
        raise ValueError("webdataset_peer: no shards")
    urls = [os.fspath(p) for p in shard_paths]
    dataset = (
        wds.WebDataset(
            urls, shardshuffle=len(urls), nodesplitter=None, workersplitter=wds.split_by_worker,
            seed=seed, empty_check=False,
        )
        .shuffle(max(shuffle_buffer, 0), initial=max(shuffle_buffer, 0))
        .map(_DecodeShardSample(work_for(task, image_size, class_to_index)))
        .repeat(nepochs=epochs)
    )  # fmt: skip
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images
    )
    return time_loader("webdataset", loader, warmup_batches=warmup_batches, max_batches=max_batches)
