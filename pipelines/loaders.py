"""DataLoader wiring for the two access patterns, over any storage.

``build_loader`` is the one switch between random and sequential access; everything downstream
(the training loop, the meter) sees the same :class:`pipelines.samples.Batch` es either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torchvision.transforms import v2

from pipelines.object_stream import ObjectStreamDataset
from pipelines.random_access import MapStyleDataset
from pipelines.records import Record
from pipelines.samples import collate
from pipelines.sequential import ShardStream
from pipelines.shards import ShardError, ShardInfo, read_manifest, write_shards
from pipelines.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderSettings:
    """DataLoader knobs (see ``loader.*`` in the config)."""

    batch_size: int
    num_workers: int
    prefetch_factor: int = 2
    persistent_workers: bool = False
    pin_memory: bool = False


@dataclass
class EpochLoader:
    """A DataLoader plus what the loop needs around it.

    Attributes:
        loader: yields :class:`pipelines.samples.Batch`.
        num_samples: samples per epoch.
        set_epoch: call with the epoch number before iterating, to vary the shuffle.
    """

    loader: DataLoader
    num_samples: int
    set_epoch: Callable[[int], None]


def build_loader(
    storage: Storage,
    records: list[Record],
    *,
    access: str,
    transform: v2.Compose,
    class_to_index: dict[str, int],
    settings: LoaderSettings,
    shuffle: bool,
    seed: int,
    shards: list[ShardInfo] | None = None,
    shuffle_buffer: int = 64,
    concurrency: int = 8,
) -> EpochLoader:
    """Build the loader of one split for an access pattern.

    Args:
        access: ``"random"``: :class:`MapStyleDataset` with a ``RandomSampler``
            (seeded by ``seed`` and the epoch) or a ``SequentialSampler``; ``"shards"``:
            :class:`ShardStream` over ``shards`` (see :func:`ensure_shards`);
            ``"objects"``: :class:`ObjectStreamDataset`, the images in listing order with
            ``concurrency`` reads in flight per worker.

    Raises:
        ValueError: unknown ``access``, or ``"shards"`` without ``shards``.
    """
    kwargs = dict(
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        collate_fn=collate,
        pin_memory=settings.pin_memory,
    )
    if settings.num_workers > 0:
        kwargs.update(
            prefetch_factor=settings.prefetch_factor,
            persistent_workers=settings.persistent_workers,
        )
    if access == "random":
        dataset = MapStyleDataset(storage, records, transform, class_to_index)
        generator = torch.Generator()
        sampler = RandomSampler(dataset, generator=generator) if shuffle else None
        loader = DataLoader(dataset, sampler=sampler or SequentialSampler(dataset), **kwargs)
        num_samples = len(dataset)

        def reseed(epoch: int) -> None:
            generator.manual_seed(seed * 100_003 + epoch)
    else:
        dataset = _iterable_dataset(
            access, storage, records, transform, class_to_index, settings, shards,
            shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed, concurrency=concurrency,
        )  # fmt: skip
        loader, num_samples = DataLoader(dataset, **kwargs), dataset.num_samples
        reseed = dataset.set_epoch

    def set_epoch(epoch: int) -> None:
        storage.take_stats()  # requests made before the epoch (index building) do not count
        reseed(epoch)

    return EpochLoader(loader, num_samples, set_epoch)


def _iterable_dataset(
    access, storage, records, transform, class_to_index, settings, shards, *, shuffle,
    shuffle_buffer, seed, concurrency,
):  # fmt: skip
    """The iterable-style dataset of the ``objects`` or ``shards`` pattern (see build_loader)."""
    if access == "objects":
        return ObjectStreamDataset(
            storage,
            records,
            transform,
            class_to_index,
            concurrency=concurrency,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
        )
    if access == "shards":
        if shards is None:
            raise ValueError("shards access needs the split's shards (see ensure_shards)")
        if settings.num_workers > len(shards):
            log.warning(
                "%d shards for %d DataLoader workers: %d workers will have nothing to read; "
                "lower dataset.shard_size_mb for more shards",
                len(shards),
                settings.num_workers,
                settings.num_workers - len(shards),
            )
        return ShardStream(
            storage,
            shards,
            transform,
            class_to_index,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
        )
    raise ValueError(f"unknown access pattern {access!r}; choose random, shards or objects")


def ensure_shards(
    storage: Storage,
    records: list[Record],
    prefix: str,
    *,
    target_bytes: int,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> tuple[list[ShardInfo], bool]:
    """Return the shards of ``records`` under ``prefix``, writing them first when missing.

    Returns:
        ``(shards, written)``: ``written`` is True when they were written by this call.

    Raises:
        ShardError: shards exist under ``prefix`` but hold another set of images (the dataset or
            the split changed): the message says which folder to delete.
    """
    found = read_manifest(storage, prefix)
    if found is None:
        return write_shards(
            storage, records, prefix, target_bytes=target_bytes, on_shard=on_shard
        ), True
    shards, written_target = found
    have = [i for s in shards for i in s.ids]
    want = [r.id for r in records]
    if sorted(have) != sorted(want):
        raise ShardError(
            f"the shards in {storage.describe(prefix)} hold {len(have)} images that are not the "
            f"split's {len(want)}: the dataset or split changed since they were written; delete "
            f"{storage.describe(prefix)} and they are written again on next use"
        )
    if written_target != target_bytes:
        log.warning(
            "reusing shards in %s written with a %d-byte target (config asks %d); delete the "
            "folder to write them again",
            storage.describe(prefix),
            written_target,
            target_bytes,
        )
    return shards, False


def shard_prefix(base: str, split: str, limit: int | None) -> str:
    """Key prefix of a split's shards: ``<base>/<split>``, or ``<base>/<split>-first<N>``."""
    return f"{base}/{split}" if limit is None else f"{base}/{split}-first{limit}"
