"""DataLoader wiring for the three access patterns (random, shards, objects), over any storage.

:func:`build_loader` is the one switch between them; downstream (the training loop, the
meter) sees the same :class:`pipelines.samples.Batch` es either way. Iterable-style datasets
are batched inside the DataLoader workers, which send several batches per transfer
(:class:`WorkerBatches`): each transfer between processes has a fixed cost (WebDataset's
advice: "batch in the workers, unbatch in the main process").
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator

import torch
from pydantic import Field
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torchvision.transforms import v2

from common.settings import Int, Section
from pipelines.access.map_style import MapStyleDataset
from pipelines.access.object_stream import ObjectStreamDataset
from pipelines.access.shard_stream import ShardStream
from pipelines.formats.records import Record
from pipelines.samples import Batch, collate
from pipelines.shards.manifest import (
    ShardError,
    ShardInfo,
)
from pipelines.storage.base import Storage, worker_context

log = logging.getLogger(__name__)

#: A worker closes a transfer once its batches hold this many bytes of tensors (decoded images),
#: so that shared memory in flight stays what one plain batch of large images would take.
TRANSFER_TENSOR_BYTES = 4 * 2**20


class LoaderSettings(Section):
    """torch DataLoader settings (the ``loader`` section of the configuration)."""

    batch_size: Int = Field(4, ge=1, description="images per training step")
    num_workers: Int = Field(
        2, ge=0, description="DataLoader worker processes (0: read in the main process)"
    )
    prefetch_factor: Int = Field(
        2,
        ge=1,
        description="transfers each worker reads ahead (a batch; shards, objects: up to "
        "worker_batches batches)",
    )
    persistent_workers: bool = Field(False, description="keep workers alive between epochs")
    pin_memory: bool = Field(False, description="pin host memory for faster copies to a GPU")
    worker_batches: Int = Field(
        64,
        ge=1,
        description="shards, objects: most batches a worker sends per transfer (fewer when "
        "they hold over 4 MiB of decoded images); 1: one batch per transfer",
    )


class EpochLoader:
    """A DataLoader plus what the loop needs around it; iterate it for the epoch's batches.

    One subclass per access pattern (:class:`RandomLoader`, :class:`ShardsLoader`,
    :class:`ObjectsLoader`), each made by its ``from_split``; :func:`build_loader` picks one.

    Attributes:
        loader: the DataLoader; it yields :class:`pipelines.samples.Batch` es, or lists of
            them when ``grouped``.
        num_samples: samples per epoch (this rank's, about, with several ranks: for progress
            bars).
        grouped: the DataLoader yields the lists of :class:`WorkerBatches`.
        epoch: the epoch last set (:meth:`set_epoch`).
    """

    grouped = False

    def __init__(self, loader: DataLoader, num_samples: int):
        self.loader = loader
        self.num_samples = num_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call with the epoch number before iterating, to vary the shuffle."""
        self.epoch = epoch
        self.reseed(epoch)

    def reseed(self, epoch: int) -> None:
        """Choose ``epoch``'s shuffle."""
        raise NotImplementedError

    def steps(self, epoch: int) -> int:
        """The number of batches ``epoch`` yields (see :func:`build_loader`)."""
        raise NotImplementedError

    def rank_samples(self, epoch: int) -> int:
        """The samples of the split that fall to this rank in ``epoch`` (one rank: the whole split).

        Counted before a remainder is dropped to give every rank the same number of steps; what a
        rank does not train on of them is ``samples_dropped``.
        """
        raise NotImplementedError

    def limit(self, epoch: int) -> int | None:
        """The most batches ``epoch`` yields (the loader stops there), or None for no limit."""
        return None

    def skip_consumed(self, epoch: int, consumed: list[dict[int, list[str]]]) -> None:
        """Leave out of ``epoch`` the samples consumed before a stop: resume it exactly.

        Every other sample of the epoch is then read once, in the order the uninterrupted epoch
        would have read it, each DataLoader worker its own (random: the sampler's order less the
        consumed batches, the same batches follow; shards, objects: each worker's part less what
        it had delivered). :meth:`steps` then counts the batches left. Other epochs are untouched.

        Args:
            epoch: the interrupted epoch.
            consumed: per rank (list index), ``{worker: ids}`` of the samples the training loop
                had received from that DataLoader worker (0: the training process).
        """
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        """Yield the epoch's batches in the DataLoader's order, at most ``limit(epoch)`` of them."""
        batches = self._batches()
        most = self.limit(self.epoch)
        if most is not None:
            batches = itertools.islice(batches, most)
        yield from batches

    def _batches(self) -> Iterator[Batch]:
        if not self.grouped:
            yield from self.loader
            return
        for group in self.loader:
            yield from group


class WorkerBatches(IterableDataset):
    """Batch an iterable-style dataset inside each DataLoader worker, several batches per transfer.

    Batches are formed as the DataLoader would form them (``batch_size`` samples in the order the
    worker yields them, :func:`pipelines.samples.collate`, a last partial batch per worker), then
    grouped: a transfer closes after ``max_batches`` batches, or as soon as its batches hold
    :data:`TRANSFER_TENSOR_BYTES` of tensors, so batches of decoded images still travel one by
    one. Use with ``DataLoader(batch_size=None)`` and iterate :class:`EpochLoader`, which takes
    the groups apart again.

    Args:
        dataset: yields :class:`pipelines.samples.Sample` s.
        batch_size: samples per batch.
        max_batches: most batches per transfer (1: one batch per transfer, as a plain
            DataLoader sends them).

    Yields:
        Lists of 1 to ``max_batches`` :class:`pipelines.samples.Batch` es.
    """

    def __init__(self, dataset: IterableDataset, batch_size: int, max_batches: int):
        if batch_size < 1 or max_batches < 1:
            raise ValueError(f"{batch_size=} and {max_batches=} must be at least 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.max_batches = max_batches

    def __iter__(self) -> Iterator[list[Batch]]:
        group: list[Batch] = []
        group_bytes = 0
        samples: list[dict] = []
        for sample in self.dataset:
            samples.append(sample)
            if len(samples) < self.batch_size:
                continue
            batch = collate(samples)
            samples = []
            group.append(batch)
            group_bytes += sum(t.nbytes for t in batch.images)
            if len(group) >= self.max_batches or group_bytes >= TRANSFER_TENSOR_BYTES:
                yield group
                group, group_bytes = [], 0
        if samples:
            group.append(collate(samples))
        if group:
            yield group


class EpochsSampler(torch.utils.data.Sampler):
    """A ``DistributedSampler`` read for ``repeat`` epochs in one iteration.

    Epoch ``e`` (set by :meth:`set_epoch`) yields this rank's part of the shuffles of epochs ``e``
    to ``e + repeat - 1``, one after the other, as a single-rank ``RandomSampler`` of ``repeat x
    len(dataset)`` samples yields one permutation after another.

    Args:
        sampler: this rank's sampler; its ``set_epoch`` chooses the shuffle.
        repeat: epochs per iteration, at least 1.
    """

    def __init__(self, sampler: DistributedSampler, repeat: int = 1):
        self.sampler = sampler
        self.repeat = repeat
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the first epoch of the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler) * self.repeat

    def __iter__(self) -> Iterator[int]:
        for epoch in range(self.epoch, self.epoch + self.repeat):
            self.sampler.set_epoch(epoch)
            yield from self.sampler


class Remaining(torch.utils.data.Sampler):
    """A sampler's indices less those in :attr:`skip` (a resumed epoch's consumed samples).

    Args:
        sampler: any sampler (or list of indices).
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.skip: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.sampler) - len(self.skip)

    def __iter__(self) -> Iterator[int]:
        if not self.skip:
            yield from self.sampler
            return
        yield from (i for i in self.sampler if i not in self.skip)


def _as_is(item):
    """``collate_fn`` for :class:`WorkerBatches`: its groups are already collated."""
    return item


#: Shared with every DataLoader worker: what a SIGTERM reaching it means (torchrun and some
#: schedulers signal a rank's whole process group). 0: no trainer handles stops (the worker ends
#: as usual); 1: training, which may be stopping (:class:`training.preemption.StopRequest`); 2:
#: the trainer stops after its step and ends the workers itself.
STOP_STATE = multiprocessing.Value("b", 0, lock=False)

#: Seconds a worker signalled while training waits for the trainer to say it stops, before ending
#: as usual (the trainer's handler runs once its current C call, a forward pass, returns).
STOP_WAIT_S = 10.0


def _leave_stops_to_the_trainer(state, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGINT is ignored; SIGTERM while training is left to the
    trainer (a worker dying first would fail the step the trainer finishes before stopping).

    Args:
        state: :data:`STOP_STATE`, passed explicitly (fork-server workers import their own).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, state))


def _on_sigterm(state, signum, frame) -> None:
    """A worker's SIGTERM: ignored when the trainer stops, else the default (the process ends)."""
    deadline = time.monotonic() + STOP_WAIT_S
    while state.value == 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    if state.value == 2:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _loader_options(settings: LoaderSettings, storage: Storage) -> dict:
    """DataLoader keyword arguments from ``settings`` (prefetch, persistence: workers only).

    Workers reading a storage whose client does not survive ``fork`` (s3dlio) start from a
    fork server that preloads the data path (:func:`pipelines.storage.base.worker_context`).
    """
    options = dict(
        batch_size=settings.batch_size, num_workers=settings.num_workers, collate_fn=collate,
        pin_memory=settings.pin_memory,
    )  # fmt: skip
    if settings.num_workers > 0:
        options.update(
            prefetch_factor=settings.prefetch_factor,
            persistent_workers=settings.persistent_workers,
            worker_init_fn=functools.partial(_leave_stops_to_the_trainer, STOP_STATE),
        )
        if worker_context(storage) == "forkserver":
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["torch", "pipelines.access.loaders"])
            options["multiprocessing_context"] = context
    return options


class RandomLoader(EpochLoader):
    """The ``random`` pattern: :class:`MapStyleDataset` in a sampler's order, a read per sample."""

    def __init__(
        self, loader: DataLoader, num_samples: int, generator: torch.Generator, seed: int,
        dataset_size: int, rank: int, world_size: int, repeat: int,
    ):  # fmt: skip
        super().__init__(loader, num_samples)
        self.generator, self.seed, self.dataset_size = generator, seed, dataset_size
        self.rank, self.world_size, self.repeat = rank, world_size, repeat
        self._skip: dict[int, frozenset[int]] = {}

    @classmethod
    def from_split(
        cls, storage: Storage, records: list[Record], *, transform: v2.Compose | None,
        class_to_index: dict[str, int], settings: LoaderSettings, shuffle: bool, seed: int,
        repeat: int = 1, rank: int = 0, world_size: int = 1, equal_steps: bool = False,
    ) -> RandomLoader:  # fmt: skip
        """The loader of ``records`` on ``storage`` (see :func:`build_loader`)."""
        dataset = MapStyleDataset(storage, records, transform, class_to_index)
        generator = torch.Generator()
        num_samples = len(dataset) * repeat
        if world_size > 1 and equal_steps:
            sampler = EpochsSampler(
                DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                   seed=seed, drop_last=True),
                repeat,
            )  # fmt: skip
            num_samples = len(sampler)
        elif world_size > 1:  # evaluation: every sample once, in order
            sampler = list(range(rank, len(dataset), world_size)) * repeat
            num_samples = len(sampler)
        elif shuffle:  # more samples than the dataset: one permutation after another
            sampler = RandomSampler(dataset, num_samples=num_samples, generator=generator)
        elif repeat == 1:
            sampler = SequentialSampler(dataset)
        else:
            sampler = list(range(len(dataset))) * repeat
        loader = DataLoader(
            dataset, sampler=Remaining(sampler), **_loader_options(settings, storage)
        )
        return cls(loader, num_samples, generator, seed, len(dataset), rank, world_size, repeat)

    def reseed(self, epoch: int) -> None:
        """Seed the shuffle of ``epoch`` (the same on every rank)."""
        self.generator.manual_seed(self.seed * 100_003 + epoch)
        remaining = self.loader.sampler
        remaining.skip = self._skip.get(epoch, frozenset())
        if isinstance(remaining.sampler, EpochsSampler):
            remaining.sampler.set_epoch(epoch)

    def skip_consumed(self, epoch: int, consumed: list[dict[int, list[str]]]) -> None:
        """Leave this rank's consumed samples out of ``epoch``'s sampler order."""
        ids = {i for part in consumed[self.rank].values() for i in part}
        records = self.loader.dataset.records
        self._skip = {epoch: frozenset(n for n, r in enumerate(records) if r.id in ids)}

    def steps(self, epoch: int) -> int:
        """The sampler's length over the batch size, the last batch partial."""
        return len(self.loader)

    def rank_samples(self, epoch: int) -> int:
        """Every ``world_size``-th sample of the split, for each epoch read."""
        each, rest = divmod(self.dataset_size, self.world_size)
        return (each + (self.rank < rest)) * self.repeat


class StreamLoader(EpochLoader):
    """An iterable-style pattern: workers read and batch their parts (:class:`WorkerBatches`)."""

    grouped = True

    def __init__(self, dataset: ShardStream | ObjectStreamDataset, settings: LoaderSettings,
                 rank: int, world_size: int, equal_steps: bool):  # fmt: skip
        batches = WorkerBatches(dataset, settings.batch_size, settings.worker_batches)
        options = {**_loader_options(settings, dataset.storage), "batch_size": None,
                   "collate_fn": _as_is}  # fmt: skip
        super().__init__(DataLoader(batches, **options), -(-dataset.num_samples // world_size))
        self.dataset, self.batch_size = dataset, settings.batch_size
        self.readers = max(settings.num_workers, 1)  # no workers: the main process reads
        self.rank, self.world_size, self.equal_steps = rank, world_size, equal_steps

    def reseed(self, epoch: int) -> None:
        """Choose ``epoch``'s order (shards or listing) and shuffle buffers."""
        self.dataset.set_epoch(epoch)

    def skip_consumed(self, epoch: int, consumed: list[dict[int, list[str]]]) -> None:
        """Leave each worker's consumed samples out of its part of ``epoch`` (every rank's)."""
        self.dataset.skip_consumed(epoch, consumed)

    def _rank_steps(self, epoch: int, rank: int) -> int:
        parts = (self.dataset.worker_samples(w, self.readers, epoch, rank)
                 for w in range(self.readers))  # fmt: skip
        return sum(-(-n // self.batch_size) for n in parts)

    def steps(self, epoch: int) -> int:
        """The batches of the epoch: each worker's, its last one partial, summed.

        With ``equal_steps`` on several ranks, the fewest of any rank (every rank stops there).
        """
        if self.world_size > 1 and self.equal_steps:
            return min(self._rank_steps(epoch, r) for r in range(self.world_size))
        return self._rank_steps(epoch, self.rank)

    def rank_samples(self, epoch: int) -> int:
        """The samples of this rank's part of the stream in ``epoch``."""
        return self.dataset.rank_samples(epoch)

    def limit(self, epoch: int) -> int | None:
        """With ``equal_steps`` on several ranks, :meth:`steps`: a rank with more stops there."""
        return self.steps(epoch) if self.world_size > 1 and self.equal_steps else None


class ObjectsLoader(StreamLoader):
    """The ``objects`` pattern: listing order, ``concurrency`` reads in flight per worker."""

    @classmethod
    def from_split(
        cls, storage: Storage, records: list[Record], *, transform: v2.Compose | None,
        class_to_index: dict[str, int], settings: LoaderSettings, shuffle: bool, seed: int,
        shuffle_buffer: int = 64, concurrency: int = 8, repeat: int = 1, rank: int = 0,
        world_size: int = 1, equal_steps: bool = False,
    ) -> ObjectsLoader:  # fmt: skip
        """The loader of ``records`` on ``storage`` (see :func:`build_loader`)."""
        dataset = ObjectStreamDataset(
            storage, records, transform, class_to_index, concurrency=concurrency,
            shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat, rank=rank,
            world_size=world_size, equal_shares=equal_steps,
        )  # fmt: skip
        return cls(dataset, settings, rank, world_size, equal_steps)


class ShardsLoader(StreamLoader):
    """The ``shards`` (``sequential``) pattern: :class:`ShardStream` over the split's tar shards."""

    @classmethod
    def from_split(
        cls, storage: Storage, shards: list[ShardInfo], *, transform: v2.Compose | None,
        class_to_index: dict[str, int], settings: LoaderSettings, shuffle: bool, seed: int,
        shuffle_buffer: int = 64, repeat: int = 1, rank: int = 0, world_size: int = 1,
        equal_steps: bool = False,
    ) -> ShardsLoader:  # fmt: skip
        """The loader of ``shards`` on ``storage`` (see :func:`build_loader`).

        Raises:
            ShardError: fewer shards than ranks, with ``equal_steps``.
        """
        if equal_steps and world_size > len(shards):
            raise ShardError(
                f"{len(shards)} shard(s) for {world_size} ranks: every rank needs at least one "
                "(a rank without one would leave the others nothing to train on in step); "
                "lower dataset.shard_size_mb (or leave it unset: sized for the ranks and workers), "
                "or run fewer ranks"
            )
        readers = world_size * max(settings.num_workers, 1)
        if readers > len(shards) and (settings.num_workers > 0 or world_size > 1):
            log.warning(
                "%d shards for %d ranks x %d DataLoader workers: %d readers will have nothing "
                "to read; lower dataset.shard_size_mb (or leave it unset) for more shards",
                len(shards), world_size, settings.num_workers, readers - len(shards),
            )  # fmt: skip
        dataset = ShardStream(
            storage, shards, transform, class_to_index, shuffle=shuffle,
            shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat, rank=rank,
            world_size=world_size,
        )  # fmt: skip
        return cls(dataset, settings, rank, world_size, equal_steps)


def build_loader(
    storage: Storage,
    records: list[Record],
    *,
    access: str,
    transform: v2.Compose | None,
    class_to_index: dict[str, int],
    settings: LoaderSettings,
    shuffle: bool,
    seed: int,
    shards: list[ShardInfo] | None = None,
    shuffle_buffer: int = 64,
    concurrency: int = 8,
    repeat: int = 1,
    rank: int = 0,
    world_size: int = 1,
    equal_steps: bool = False,
) -> EpochLoader:
    """The loader of one split for an access pattern: the one switch between them.

    Its ``steps(epoch)`` is the number of batches that epoch really yields: with an iterable-style
    dataset each worker ends with its own partial batch, so an epoch has ``sum over workers of
    ceil(part / batch_size)`` steps, up to ``num_workers - 1`` more than ``ceil(samples /
    batch_size)`` and, with shards, varying with each epoch's shard order. A learning-rate
    schedule sized on the smaller count ends before the last epoch does.

    Args:
        access: ``"random"``: :class:`RandomLoader` (a ``RandomSampler`` seeded by ``seed`` and
            the epoch, or a ``SequentialSampler``); ``"shards"``: :class:`ShardsLoader` over
            ``shards`` (see :func:`ensure_shards`); ``"objects"``: :class:`ObjectsLoader`.
        repeat: epochs read per iteration, back to back, each reshuffled as the next epoch
            (``num_samples`` counts them all): the benchmark's warm passes.
        rank, world_size: this process's rank among ``world_size`` training processes
            (torchrun); it loads its part of the split only. Random: a ``DistributedSampler``
            (the epoch's shuffle, the same on every rank, cut in ``world_size`` parts), or
            without ``equal_steps`` every ``world_size``-th sample; shards: every
            ``world_size``-th shard of the epoch's order; objects: a contiguous slice of the
            listing; both then split by worker.
        equal_steps: every rank runs the same number of steps (DDP's collectives would wait
            forever for a rank that stopped early); the remainder of the split is dropped,
            never read twice. Random: ``drop_last`` (``samples % world_size`` samples, other
            ones each epoch); objects: the same count, another part of the listing each epoch;
            shards: every rank stops after the steps of the rank with the fewest, since shards
            cannot be cut. The caller counts what a rank drops of its ``rank_samples``
            (``samples_dropped``). Evaluation passes False: every sample once, ranks with
            different counts.

    Raises:
        ValueError: unknown ``access``, ``"shards"`` without ``shards``, or ``repeat < 1``.
        ShardError: fewer shards than ranks, with ``equal_steps``.
    """
    if repeat < 1:
        raise ValueError(f"{repeat=} must be at least 1")
    common = dict(
        transform=transform, class_to_index=class_to_index, settings=settings, shuffle=shuffle,
        seed=seed, repeat=repeat, rank=rank, world_size=world_size, equal_steps=equal_steps,
    )  # fmt: skip
    if access == "random":
        return RandomLoader.from_split(storage, records, **common)
    if access == "objects":
        return ObjectsLoader.from_split(
            storage, records, shuffle_buffer=shuffle_buffer, concurrency=concurrency, **common
        )
    if access == "shards":
        if shards is None:
            raise ValueError("shards access needs the split's shards (see ensure_shards)")
        return ShardsLoader.from_split(storage, shards, shuffle_buffer=shuffle_buffer, **common)
    raise ValueError(f"unknown access pattern {access!r}; choose random, shards or objects")
