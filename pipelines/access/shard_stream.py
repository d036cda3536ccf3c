"""Sequential access: an iterable-style dataset that streams WebDataset shards front to back.

Each epoch the shard order is shuffled with a seed shared by all DataLoader workers; worker
``w`` of ``W`` takes shards ``w, w+W, w+2W...``, streams each one (one sequential read per
shard) and passes the samples through a shuffle buffer before decoding them, so every sample
is read exactly once per epoch. This is WebDataset's ``shardlist → split_by_worker →
tarfile_samples → shuffle → decode`` pipeline over :class:`pipelines.storage.base.Storage`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from torch.utils.data import IterableDataset, get_worker_info
from torchvision.transforms import v2
from webdataset.filters import shuffle as shuffle_stage

from pipelines.formats.records import record_from_json
from pipelines.samples import Sample, make_sample
from pipelines.shards.manifest import (
    IMAGE_EXTENSIONS,
    ShardError,
    ShardInfo,
    rewrite_advice,
)
from pipelines.shards.reader import iter_shard
from pipelines.storage.base import CallStats, Storage

log = logging.getLogger(__name__)

#: Open the next shard ahead in a thread (not in line) when opening one took at least this long
#: (seconds). A hand-off to a thread and back costs ~0.1-1 ms (measured here: ~1 ms per shard
#: on a 2-core VM), more than opening a local file; an S3 GET's time to first byte is several ms.
OPEN_AHEAD_S = 1e-3


class EpochStream(IterableDataset):
    """Base of the iterable-style datasets: the epoch seeding their shuffles, the shuffle buffer.

    The epoch lives in shared memory (``multiprocessing.Value``), which forked or spawned workers
    inherit: their copies of the dataset (kept across epochs with ``persistent_workers``) would
    never see a plain attribute set later, and every epoch would repeat the first one's shuffle.

    Args:
        shuffle: pass samples through the shuffle buffer (and let subclasses shuffle more).
        shuffle_buffer: samples held in the buffer, per worker.
        seed: base seed; the epoch set by :meth:`set_epoch` is mixed in.
        repeat: epochs read per iteration, one after the other with no pause between them
            (WebDataset's ``repeat``): epoch ``e`` set by :meth:`set_epoch` reads the shuffles
            of epochs ``e, e+1, ... e+repeat-1``; the benchmark's warm passes, so that a small
            split does not drain and restart the workers every few milliseconds.
        rank, world_size: this training process's rank among ``world_size`` (torchrun): it
            reads its share of the split only, split again among its DataLoader workers.
    """

    def __init__(
        self,
        *,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        repeat: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        if repeat < 1:
            raise ValueError(f"{repeat=} must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"{rank=} must be in [0, {world_size=})")
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.repeat = repeat
        self.rank = rank
        self.world_size = world_size
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self._skip_epoch = 0
        self._skip: dict[tuple[int, int], frozenset[str]] = {}

    @property
    def epoch(self) -> int:
        """The epoch whose shuffle is read."""
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's shuffle; workers see it the next time they start iterating."""
        self._epoch.value = epoch

    def skip_consumed(self, epoch: int, consumed: list[dict[int, list[str]]]) -> None:
        """Leave out of ``epoch`` the samples each worker of each rank delivered before a stop.

        Set before the workers start (they take a copy). See
        :meth:`pipelines.access.loaders.EpochLoader.skip_consumed`.
        """
        self._skip_epoch = epoch
        self._skip = {
            (rank, worker): frozenset(ids)
            for rank, workers in enumerate(consumed)
            for worker, ids in workers.items()
        }

    def skipped(self, epoch: int, worker_id: int, rank: int | None = None) -> frozenset[str]:
        """Ids that worker ``worker_id`` of rank ``rank`` (default this one) must not read again
        in ``epoch`` (empty unless it is a resumed epoch)."""
        if epoch != self._skip_epoch:
            return frozenset()
        return self._skip.get((self.rank if rank is None else rank, worker_id), frozenset())

    def buffer_shuffled(self, items: Iterator, worker_id: int) -> Iterator:
        """``items`` through WebDataset's shuffle buffer of ``shuffle_buffer`` items.

        The buffer fills before the first item leaves; it is seeded by the seed, the epoch, the rank
        and ``worker_id``. ``items`` is unchanged when not shuffling or with a buffer of 1.
        """
        if not self.shuffle or self.shuffle_buffer <= 1:
            return items
        reader = worker_id if self.world_size == 1 else f"{self.rank}-{worker_id}"
        rng = random.Random(f"{self.seed}-{self.epoch}-{reader}")
        return shuffle_stage(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(items)


class ShardStream(EpochStream):
    """Iterable-style dataset over a list of shards; yields :class:`pipelines.samples.Sample` s.

    Args:
        storage: where the shards live.
        shards: the shards of one split (from the manifest).
        transform: see :func:`pipelines.samples.detection_transform` and
            :func:`pipelines.samples.classification_transform`.
        class_to_index: class name → label id (detection: 1-based, 0 is the background).
        shuffle: shuffle shard order and samples (a training epoch) or keep the written order.
        shuffle_buffer: samples held in the shuffle buffer (per worker); more mixes better and
            holds more encoded images in memory.
        seed: base seed; the epoch set by :meth:`set_epoch` is mixed in.
        repeat: epochs read per iteration (see :class:`EpochStream`).
        rank, world_size: rank ``r`` reads shards ``r, r + world_size, ...`` of each epoch's
            shard order (WebDataset's ``split_by_node``), then its workers split those.
    """

    def __init__(
        self,
        storage: Storage,
        shards: list[ShardInfo],
        transform: v2.Compose,
        class_to_index: dict[str, int],
        *,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        repeat: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(
            shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
            rank=rank, world_size=world_size,
        )  # fmt: skip
        self.storage = storage
        self.shards = shards
        self.transform = transform
        self.class_to_index = class_to_index

    @property
    def num_samples(self) -> int:
        """Samples in one iteration (all shards, ``repeat`` times)."""
        return sum(s.samples for s in self.shards) * self.repeat

    def rank_shards(self, epoch: int, rank: int | None = None) -> list[ShardInfo]:
        """The shards rank ``rank`` (default: this one) reads in ``epoch``, in order.

        Every ``world_size``-th shard of the epoch's shard order (shuffled by the seed and the
        epoch, the same on every rank), starting at its rank.
        """
        shards = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(shards)
        return shards[self.rank if rank is None else rank :: self.world_size]

    def worker_shards(
        self, worker_id: int, num_workers: int, epoch: int | None = None, rank: int | None = None
    ) -> list[ShardInfo]:
        """The shards worker ``worker_id`` of ``num_workers`` reads in one iteration, in order.

        Every ``num_workers``-th shard of the repeated epochs' rank shards (of rank ``rank``,
        default this one), one epoch after the other (``epoch``: the iteration's first; None: the
        one set by :meth:`set_epoch`). Dealt across the epochs, not within each, so that a shard
        count the workers do not divide does not give the same workers the extra shard in every
        epoch (one worker would read alone at the end of a pass). In a resumed epoch, the shards
        whose samples the worker had all delivered are left out.
        """
        return [s for _, s in self._dealt(worker_id, num_workers, epoch, rank)]

    def _dealt(
        self, worker_id: int, num_workers: int, epoch: int | None, rank: int | None
    ) -> list[tuple[frozenset[str], ShardInfo]]:
        """:meth:`worker_shards` with the ids to pass over in each (a resumed epoch's)."""
        first = self.epoch if epoch is None else epoch
        epochs = range(first, first + self.repeat)
        order = [(e, s) for e in epochs for s in self.rank_shards(e, rank)]
        dealt = []
        for e, shard in order[worker_id::num_workers]:
            skip = self.skipped(e, worker_id, rank).intersection(shard.ids)
            if len(skip) < shard.samples:
                dealt.append((skip, shard))
        return dealt

    def worker_samples(
        self, worker_id: int, num_workers: int, epoch: int, rank: int | None = None
    ) -> int:
        """Samples that a worker yields in the iteration of ``epoch`` (its shards depend on it).

        The worker is ``worker_id`` of ``num_workers``, of rank ``rank`` (default this one).
        """
        dealt = self._dealt(worker_id, num_workers, epoch, rank)
        return sum(s.samples - len(skip) for skip, s in dealt)

    def rank_samples(self, epoch: int, rank: int | None = None) -> int:
        """Samples of the split rank ``rank`` (default this one) reads in one iteration."""
        return sum(
            s.samples for e in range(epoch, epoch + self.repeat) for s in self.rank_shards(e, rank)
        )

    def __iter__(self) -> Iterator[Sample]:
        worker_id, num_workers = worker_slot()
        dealt = self._dealt(worker_id, num_workers, None, None)
        raw_samples = self._raw_samples([s for _, s in dealt])
        skip = frozenset().union(*(skip for skip, _ in dealt))
        if skip:  # a resumed epoch: partly delivered shards are read again, less those samples
            raw_samples = _passing_over(raw_samples, skip)
        samples = self.buffer_shuffled(raw_samples, worker_id)
        for raw, read, image_id, read_at in samples:
            if self.transform is None:  # the read path alone: the annotation is not parsed
                yield Sample(image_id, read, read_at)
                continue
            ext = next(e for e in IMAGE_EXTENSIONS if e in raw)
            try:
                record = record_from_json(json.loads(raw["json"]), f"{raw['__url__']}#{ext}")
            except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                raise ShardError(
                    f"shard {raw['__url__']}: member {raw['__key__']}.json is not an annotation "
                    f"this tool writes ({type(exc).__name__}: {exc}); the shard is damaged: "
                    + rewrite_advice(self.storage, self.shards[0])
                ) from None
            yield make_sample(
                record,
                raw[ext],
                read=read,
                transform=self.transform,
                class_to_index=self.class_to_index,
                read_at=read_at,
            )

    def _raw_samples(self, shards: list[ShardInfo]) -> Iterator[tuple[dict, CallStats, str, float]]:
        """Yield ``(raw sample, its share of the read, image id, read_at)`` of each shard in turn.

        The ids come from the manifest, which lists them in tar order. ``read_at`` is when this
        generator started on the sample (``time.perf_counter()``): for the first, before the first
        shard was opened; for the others, when the previous one was taken. The share is
        :func:`pipelines.shards.reader.iter_shard`'s: a shard's shares add up to its stream's
        figures (its open, wherever it was done, and its reads).

        The next shard is opened before the current one is read, so that its first bytes are on
        their way; an open that took :data:`OPEN_AHEAD_S` or more (an S3 GET, a network
        filesystem's round trip) is done in a background thread, a quicker one (a local file) in
        line, as a thread hand-off costs more. Nothing more is read ahead into this process, so
        memory stays bounded.
        """
        self.storage.connect()  # its set-up is not reading: keep it out of read_at
        read_at = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-open") as pool:
            opening = None  # the next shard, being opened ahead
            try:
                for i, shard in enumerate(shards):
                    if opening is None:
                        stream, open_s = _timed_open(self.storage, shard.key)
                    else:
                        (stream, open_s), opening = opening.result(), None
                    if i + 1 < len(shards):
                        if open_s >= OPEN_AHEAD_S:
                            opening = pool.submit(_timed_open, self.storage, shards[i + 1].key)
                        else:
                            opening = _open_now(self.storage, shards[i + 1].key)
                    samples = iter_shard(self.storage, shard, stream)
                    for (raw, read), image_id in zip(samples, shard.ids, strict=True):
                        yield raw, read, image_id, read_at
                        read_at = time.perf_counter()
            finally:  # stopped early (or failed): close the shard opened ahead
                if opening is not None and opening.exception() is None:
                    opening.result()[0].close()


def _passing_over(
    samples: Iterator[tuple[dict, CallStats, str, float]], skip: frozenset[str]
) -> Iterator[tuple[dict, CallStats, str, float]]:
    """:meth:`ShardStream._raw_samples` less the samples whose id is in ``skip``.

    A shard cannot be read from the middle: those samples are streamed again, not yielded, and
    their share of the reads (bytes, seconds, requests) is added to the next sample yielded, or to
    the last one, so the storage traffic is all counted.
    """
    carry: CallStats | None = None
    pending = None
    for raw, read, image_id, read_at in samples:
        if image_id in skip:
            carry = read if carry is None else carry + read
            continue
        if carry is not None:
            read, carry = read + carry, None
        if pending is not None:
            yield pending
        pending = (raw, read, image_id, read_at)
    if pending is not None:
        raw, read, image_id, read_at = pending
        yield raw, read if carry is None else read + carry, image_id, read_at


def _open_now(storage: Storage, key: str) -> Future:
    """:func:`_timed_open` in this thread, as a finished future (its error raised when taken)."""
    future: Future = Future()
    try:
        future.set_result(_timed_open(storage, key))
    except Exception as exc:  # noqa: BLE001 - re-raised by future.result()
        future.set_exception(exc)
    return future


def _timed_open(storage: Storage, key: str) -> tuple[BinaryIO, float]:
    """``storage.open(key)`` and the seconds it took."""
    start = time.perf_counter()
    stream = storage.open(key)
    return stream, time.perf_counter() - start


def worker_slot() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the calling DataLoader worker; ``(0, 1)`` outside."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)
