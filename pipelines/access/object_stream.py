"""Sequential access over individual objects: listing order, N concurrent reads.

The alternative to shards for object storage, without repacking: objects are read in the
order the storage lists them with ``concurrency`` requests in flight, so a high-latency store
is kept busy. Built on ``torchdata.nodes``: ``IterableWrapper`` (the worker's slice of the
listing) → ``ParallelMapper`` (threads fetching objects, results kept in order) → a shuffle
buffer → decode. Worker ``w`` of ``W`` reads the ``w``-th contiguous slice of the listing
front to back, so every object is read exactly once per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from torchdata.nodes import IterableWrapper, Loader, ParallelMapper
from torchvision.transforms import v2

from pipelines.access.shard_stream import EpochStream, worker_slot
from pipelines.formats.records import Record
from pipelines.samples import Sample, make_sample
from pipelines.storage.base import CallStats, Storage


class ObjectStreamDataset(EpochStream):
    """Iterable-style dataset reading the images in listing (key) order with concurrent GETs.

    Args:
        storage: where the images live.
        records: the split's records; read in ``image_key`` order.
        transform: see :func:`pipelines.samples.detection_transform` and
            :func:`pipelines.samples.classification_transform`.
        class_to_index: class name → label id (detection: 1-based, 0 is the background).
        concurrency: read requests in flight per DataLoader worker (threads).
        shuffle: pass samples through a shuffle buffer (the read order stays the listing order).
        shuffle_buffer: samples held in the buffer, per worker.
        seed: base seed; the epoch set by :meth:`set_epoch` is mixed in.
        repeat: epochs read per iteration, each in listing order (see
            :class:`pipelines.access.shard_stream.EpochStream`).
        rank, world_size: rank ``r`` reads the ``r``-th contiguous slice of the listing, split
            again among its workers.
        equal_shares: give every rank ``samples // world_size`` samples (the same number of
            steps on every rank, which DDP needs): the remainder is dropped, a different part
            of the listing each epoch (the listing is rotated by the epoch before it is
            sliced). Without it, slices differ by at most one sample (evaluation).

    Raises:
        pipelines.storage.base.StorageError: while iterating, an object cannot be read (the
            message names it).
    """

    def __init__(
        self,
        storage: Storage,
        records: list[Record],
        transform: v2.Compose,
        class_to_index: dict[str, int],
        *,
        concurrency: int,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        repeat: int = 1,
        rank: int = 0,
        world_size: int = 1,
        equal_shares: bool = False,
    ):
        if concurrency < 1:
            raise ValueError(f"{concurrency=} must be >= 1")
        super().__init__(
            shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
            rank=rank, world_size=world_size,
        )  # fmt: skip
        self.equal_shares = equal_shares
        self.storage = storage
        self.records = sorted(records, key=lambda r: r.image_key)
        self.transform = transform
        self.class_to_index = class_to_index
        self.concurrency = concurrency

    @property
    def num_samples(self) -> int:
        """Samples in one iteration (``repeat`` epochs)."""
        return len(self.records) * self.repeat

    def rank_records(self, epoch: int, rank: int | None = None) -> list[Record]:
        """The contiguous slice of the listing read by ``rank`` (default this one) in ``epoch``."""
        rank = self.rank if rank is None else rank
        n, world = len(self.records), self.world_size
        if world == 1:
            return self.records
        if not self.equal_shares:
            return self.records[rank * n // world : (rank + 1) * n // world]
        each, rest = divmod(n, world)
        start = epoch * rest % n if rest else 0  # another part of the listing dropped per epoch
        rotated = self.records[start:] + self.records[:start]
        return rotated[rank * each : (rank + 1) * each]

    def worker_records(
        self, worker_id: int, num_workers: int, epoch: int | None = None, rank: int | None = None
    ) -> list[Record]:
        """Worker ``worker_id``'s contiguous slice of its rank's records, for one iteration.

        One slice for each of the ``repeat`` epochs from ``epoch`` (None: the one set by
        :meth:`set_epoch`), less the samples it had delivered before a stop in a resumed epoch.
        """
        first = self.epoch if epoch is None else epoch
        mine = []
        for e in range(first, first + self.repeat):
            records = self.rank_records(e, rank)
            n = len(records)
            part = records[worker_id * n // num_workers : (worker_id + 1) * n // num_workers]
            skip = self.skipped(e, worker_id, rank)  # a resumed epoch: what it had delivered
            mine += [r for r in part if r.id not in skip] if skip else part
        return mine

    def worker_samples(
        self, worker_id: int, num_workers: int, epoch: int, rank: int | None = None
    ) -> int:
        """Samples that a worker yields in the iteration of ``epoch``.

        The worker is ``worker_id`` of ``num_workers``, of rank ``rank`` (default this one).
        """
        return len(self.worker_records(worker_id, num_workers, epoch, rank))

    def rank_samples(self, epoch: int, rank: int | None = None) -> int:
        """Samples of the split that fall to rank ``rank`` (default this one) in one iteration.

        Counted before any remainder is dropped: the listing divided as evenly as it goes.
        """
        rank = self.rank if rank is None else rank
        each, rest = divmod(len(self.records), self.world_size)
        return (each + (rank < rest)) * self.repeat

    def _fetch(self, record: Record) -> tuple[Record, bytes, CallStats, float]:
        """Read one image in a mapper thread: the record, its bytes, the read's figures, its start.

        The figures are made by the storage call itself, whatever the other threads read meanwhile.
        """
        start = time.perf_counter()
        data, read = self.storage.fetch(record.image_key)
        return record, data, read, start

    def __iter__(self) -> Iterator[Sample]:
        worker_id, num_workers = worker_slot()
        self.storage.connect()  # before the threads time their reads
        node = ParallelMapper(
            IterableWrapper(self.worker_records(worker_id, num_workers)),
            map_fn=self._fetch,
            num_workers=self.concurrency,
            in_order=True,
            method="thread",
        )
        fetched = self.buffer_shuffled(iter(Loader(node)), worker_id)
        for record, data, read, read_at in fetched:
            yield make_sample(
                record,
                data,
                read=read,
                transform=self.transform,
                class_to_index=self.class_to_index,
                read_at=read_at,
            )
