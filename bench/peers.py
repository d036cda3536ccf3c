"""Peer libraries doing the same job as the benchmark's loaders, measured the same way.

Each peer loads the same objects with the same batch size and DataLoader workers, decodes each
image and resizes it (shorter side ``image_size`` pixels, float32 in [0, 1]), so that a
configuration can be reported as a ratio to what an ordinary user of that library gets:

- :func:`imagefolder_peer`: torchvision ``ImageFolder``-style map-style loading from files
  (PIL via ``default_loader``, ``transforms.v2``, ``DataLoader(shuffle=True)``);
- :func:`s3torchconnector_peer`: AWS s3torchconnector's ``S3MapDataset`` (shuffled by the
  DataLoader) or ``S3IterableDataset`` (listing order), reading each ``S3Reader`` fully and
  decoding with torchvision.

Timing: the first ``warmup_batches`` batches (worker start-up, first connections) are drawn
and not counted; the clock starts at the next ``next()`` and stops when the last measured
batch arrives. Units: seconds, bytes, samples/s, MB/s = 10^6 bytes/s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import default_loader
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from training.meter import gc_frozen


@dataclass(frozen=True)
class PeerResult:
    """One peer library's measured loading throughput.

    Attributes:
        name: ``imagefolder``, ``s3torchconnector-map`` or ``s3torchconnector-iterable``.
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


def _resize(image_size: int) -> v2.Compose:
    """Resize the shorter side to ``image_size`` pixels (aspect kept), then float32 in [0, 1]."""
    return v2.Compose(
        [v2.Resize(image_size, antialias=True), v2.ToDtype(torch.float32, scale=True)]
    )


def collate_images(items: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], int]:
    """Batch ``(image, nbytes)`` items into ``(images, total bytes)``; images may differ in size."""
    return [image for image, _ in items], sum(nbytes for _, nbytes in items)


def _measure(
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
            for images, batch_bytes in batches:
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
    """What an ``ImageFolder`` user gets, over a list of files: PIL ``default_loader`` +
    ``transforms.v2`` (ToImage, Resize, ToDtype float32). Items are ``(image, file size in bytes)``
    (the size takes the place of ImageFolder's class index).

    Raises:
        OSError: a file is missing (when listed) or unreadable (when loaded).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], image_size: int):
        self.paths = [os.fspath(p) for p in paths]
        self.sizes = [os.path.getsize(p) for p in self.paths]
        self.transform = v2.Compose([v2.ToImage(), _resize(image_size)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(default_loader(self.paths[i])), self.sizes[i]


def imagefolder_peer(
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int,
    num_workers: int,
    image_size: int,
    max_batches: int | None = None,
    warmup_batches: int = 2,
    seed: int = 0,
) -> PeerResult:
    """torchvision ImageFolder-style loading of ``paths`` with a plain shuffled ``DataLoader``.

    Args:
        paths: image files (JPEG/PNG), the same ones the compared configuration reads.
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
        ImageFileDataset(paths, image_size),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_images,
        generator=torch.Generator().manual_seed(seed),
    )
    return _measure("imagefolder", loader, warmup_batches=warmup_batches, max_batches=max_batches)


def s3torchconnector_reason() -> str | None:
    """Why the s3torchconnector peers cannot run (it cannot be imported), or None when they can."""
    try:
        import s3torchconnector  # noqa: F401
    except Exception as exc:  # ImportError, or a native library that fails to load
        return f"s3torchconnector cannot be imported ({type(exc).__name__}: {exc})"
    return None


class ReadDecodeResize:
    """s3torchconnector transform: read the ``S3Reader`` to the end, decode it with torchvision
    (RGB), resize; returns ``(image, bytes read)``.

    Raises:
        s3torchconnector.S3Exception: the GET failed; RuntimeError: the bytes do not decode.
    """

    def __init__(self, image_size: int):
        self.transform = _resize(image_size)

    def __call__(self, reader) -> tuple[torch.Tensor, int]:
        data = reader.read()
        image = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB
        )
        return self.transform(image), len(data)


def s3torchconnector_peer(
    kind: str,
    bucket: str,
    keys: Sequence[str],
    *,
    endpoint: str | None,
    region: str,
    batch_size: int,
    num_workers: int,
    image_size: int,
    max_batches: int | None = None,
    warmup_batches: int = 2,
    seed: int = 0,
    force_path_style: bool = True,
) -> PeerResult | None:
    """AWS s3torchconnector datasets over ``s3://bucket/key`` for each key, with a DataLoader.

    ``kind="map"``: ``S3MapDataset.from_objects``, shuffled by ``DataLoader(shuffle=True)``.
    ``kind="iterable"``: ``S3IterableDataset.from_objects`` in the order of ``keys`` (listing
    order), sharded across the workers (``enable_sharding=True``: each object once per epoch).
    Credentials come from the standard AWS chain (environment, profile), as for boto3.

    Args:
        kind: ``"map"`` or ``"iterable"``.
        bucket: bucket name.
        keys: full object keys inside the bucket (prefix included).
        endpoint: custom endpoint URL (MinIO, DSS, a local server); None for AWS.
        region: region name (the CRT client needs one, e.g. ``us-east-1``).
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0: load in this process).
        image_size: shorter side after resizing, in pixels.
        max_batches: batches to time after the warm-up; None: until the data ends.
        warmup_batches: batches drawn before the clock starts.
        seed: shuffle order (map).
        force_path_style: path-style requests (``endpoint/bucket/key``), right for custom
            endpoints.

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
    from s3torchconnector import S3ClientConfig, S3IterableDataset, S3MapDataset

    uris = [f"s3://{bucket}/{key}" for key in keys]
    common = dict(
        region=region,
        endpoint=endpoint,
        transform=ReadDecodeResize(image_size),
        s3client_config=S3ClientConfig(force_path_style=force_path_style),
    )
    if kind == "map":
        dataset = S3MapDataset.from_objects(uris, **common)
        shuffle = dict(shuffle=True, generator=torch.Generator().manual_seed(seed))
    else:
        dataset = S3IterableDataset.from_objects(uris, enable_sharding=True, **common)
        shuffle = {}
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        **shuffle,
    )
    return _measure(
        f"s3torchconnector-{kind}", loader, warmup_batches=warmup_batches, max_batches=max_batches
    )
