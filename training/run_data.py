"""The data side of a training run: storage, both splits, shards and this rank's loaders."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from pipelines.access.loaders import EpochLoader, build_loader
from pipelines.formats.records import BoxCounts
from pipelines.shards.manifest import ShardInfo
from training import distributed
from training.config import Config
from training.data import class_names, load_split, split_shards
from training.distributed import ONE_RANK, Ranks
from training.source import DataSource, open_storage
from training.tasks import class_to_index

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """What the data step prepared: the storage, both splits and their loaders.

    Attributes:
        source: the opened storage and dataset roots.
        pattern: the access pattern (``random``, ``shards``, ``objects``).
        train_records, eval_records: the splits' records.
        train_counts: what the training split's reader kept and dropped (boxes).
        classes: class names in label order.
        train_loader, eval_loader: the loaders of both splits.
    """

    source: DataSource
    pattern: str
    train_records: list
    eval_records: list
    train_counts: BoxCounts
    classes: list[str]
    train_loader: EpochLoader
    eval_loader: EpochLoader


def prepare_data(cfg: Config, task, ranks: Ranks = ONE_RANK) -> RunData:
    """Open the storage, read both splits, find or write the shards and build this rank's loaders.

    Logs what each split kept. The training split comes in equal steps on every rank, the evaluation
    split every sample once. Shards missing or stale are written by rank 0 while the others wait,
    then found by them.

    Raises:
        DatasetError, pipelines.storage.base.StorageError, pipelines.shards.manifest.ShardError:
            with a message for the user.
    """
    source = open_storage(cfg)
    log.info("storage: %s", source.storage.describe())
    splits = {}
    for split in (cfg.dataset.train_split, cfg.dataset.eval_split):
        records, counts = load_split(source, cfg, split)
        log_split(cfg, split, records, counts)
        splits[split] = records, counts
    train_records, train_counts = splits[cfg.dataset.train_split]
    eval_records, _ = splits[cfg.dataset.eval_split]
    classes = class_names(cfg, train_records)
    label_of = class_to_index(task, classes)
    pattern = cfg.access.pattern
    loaders = {}
    for name, records, train in (
        (cfg.dataset.train_split, train_records, True),
        (cfg.dataset.eval_split, eval_records, False),
    ):
        shards = None
        if pattern == "shards":
            readers = ranks.world_size * max(cfg.loader.num_workers, 1)
            if ranks.main:
                shards = find_shards(source, cfg, name, records, readers)
            distributed.barrier(long=True)  # writing a large dataset's shards takes a while
            if not ranks.main:
                shards = find_shards(source, cfg, name, records, readers)
        loaders[train] = build_loader(
            source.storage,
            records,
            access=pattern,
            transform=task.transform(cfg, train),
            class_to_index=label_of,
            settings=cfg.loader,
            shuffle=train and cfg.access.shuffle,
            seed=cfg.train.seed,
            shards=shards,
            shuffle_buffer=cfg.access.shuffle_buffer,
            concurrency=cfg.access.concurrency,
            rank=ranks.rank,
            world_size=ranks.world_size,
            equal_steps=train,
        )
    return RunData(
        source, pattern, train_records, eval_records, train_counts, classes,
        loaders[True], loaders[False],
    )  # fmt: skip


def log_split(cfg: Config, split: str, records: list, counts: BoxCounts) -> None:
    """Log what a split holds: images per class, or the boxes kept, clipped and dropped."""
    if cfg.task == "classification":
        found = Counter(r.label for r in records)
        log.info(
            "split %s: %d images (%s)",
            split,
            len(records),
            ", ".join(f"{name} {n}" for name, n in sorted(found.items())),
        )
        return
    log.info(
        "split %s: %d boxes kept, %d clipped to the image, %d degenerate dropped",
        split,
        counts.kept,
        counts.clipped,
        counts.dropped,
    )
    for where in counts.dropped_where:
        log.info("dropped degenerate box: %s", where)


def find_shards(
    source: DataSource, cfg: Config, split: str, records: list, readers: int = 1
) -> list[ShardInfo]:
    """The split's shards for ``readers`` (ranks x workers), written when missing or stale."""
    storage = source.storage
    prefix, shards, written = split_shards(
        source,
        cfg,
        split,
        records,
        on_shard=lambda s: log.info(
            "wrote shard %s (%d bytes, %d samples)", storage.describe(s.key), s.bytes, s.samples
        ),
        readers=readers,
    )
    log.info(
        "%s shards for split %s in %s: %d shards, %d bytes",
        "wrote" if written else "reusing",
        split,
        storage.describe(prefix),
        len(shards),
        sum(s.bytes for s in shards),
    )
    return shards
