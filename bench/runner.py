"""One benchmark configuration: build its loader, run warm-up + measured steps, return figures.

A configuration (:class:`Case`) is an access pattern × storage × client library × worker count
× mode. The three modes separate what the storage can deliver from what training needs, as the
field's benchmarks do:

- ``read``: read and decode only, no model: the storage ceiling (s3torchbenchmarking's
  "entitlement" model).
- ``emulate``: read + decode + ``bench.computation_time_s`` of sleep per step: MLPerf Storage /
  DLIO's ``computation_time``, so AU is comparable to their published thresholds.
- ``train``: the real detector, one optimizer step per batch.

Every configuration runs the same seed, the same data and the same number of steps
(``bench.steps``; ``read`` runs ``bench.read_steps``, as it is fast enough for a single epoch
to last only milliseconds); warm-up steps are excluded from the figures
(:func:`training.engine.measure_steps`). In ``read`` mode the measured clock starts at the
first storage read for a measured batch when the workers read it ahead during the warm-up:
there the loader is the bottleneck by construction, and the batches it read ahead (up to
``num_workers x prefetch_factor`` transfers of ``loader.worker_batches`` batches) would
otherwise count as delivered in no time. A pass goes on into further epochs (reshuffled) until
its steps are done, read back to back by the same DataLoader workers (no drain and restart
between epochs, which on a split of a few MB would cost more than reading it), so that worker
start-up falls in the warm-up steps only. A cold pass does too when each file can be evicted
from the page cache right before it is read (:class:`bench.page_cache.EvictBeforeRead`);
otherwise it stops at the end of its first epoch, since a second one would read from the cache
the first one filled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import torch

from bench.resources import ResourceSampler
from pipelines.loaders import EpochLoader, LoaderSettings, build_loader
from pipelines.records import Record
from pipelines.samples import Batch
from pipelines.shards import ShardInfo
from pipelines.storage import Storage
from training.config import Config
from training.distributed import pick_device
from training.engine import measure_steps
from training.tasks import class_to_index, task_module

MODES = ("read", "emulate", "train")


@dataclass(frozen=True)
class Case:
    """One row of the matrix.

    Attributes:
        mode: ``read``, ``emulate`` or ``train``.
        access: ``random``, ``objects`` or ``shards``.
        storage: ``fs`` or ``s3``.
        client_lib: ``boto3`` or ``s3torchconnector`` for s3; ``-`` for fs.
        workers: DataLoader worker processes.
    """

    mode: str
    access: str
    storage: str
    client_lib: str
    workers: int

    @property
    def name(self) -> str:
        """A short label, e.g. ``s3/boto3/shards/read/w2``."""
        lib = "" if self.storage == "fs" else f"/{self.client_lib}"
        return f"{self.storage}{lib}/{self.access}/{self.mode}/w{self.workers}"


def expand_matrix(cfg: Config) -> list[Case]:
    """All configurations of ``cfg.bench``, storage-major so each store's data stays warm."""
    workers = cfg.bench.worker_counts or [cfg.loader.num_workers]
    cases = []
    for storage in cfg.bench.storages:
        libs = cfg.bench.client_libs if storage == "s3" else ["-"]
        for lib in libs:
            for access in cfg.bench.access:
                for n in workers:
                    for mode in cfg.bench.modes:
                        cases.append(Case(mode, access, storage, lib, n))
    return cases


def compute_fn(case: Case, cfg: Config, classes: list[str]):
    """The per-step work of ``case.mode`` (see the module doc); returns ``compute(batch, step)``.

    ``train`` builds the task's model from scratch (no download), the same for every case.
    """
    if case.mode == "read":
        return lambda batch, step: math.nan
    if case.mode == "emulate":
        seconds = cfg.bench.computation_time_s

        def emulate(batch, step) -> float:
            time.sleep(seconds)
            return math.nan

        return emulate
    torch.manual_seed(cfg.train.seed)  # the same initial model for every configuration
    task = task_module(cfg.task)
    model, _ = task.build_model(cfg, classes, pretrained=False)
    device = pick_device(cfg.train.device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return task.step_fn(model, optimizer, None, device, epoch=0)


def case_steps(case: Case, cfg: Config) -> int:
    """Measured steps of a pass of ``case``: ``bench.read_steps`` in ``read`` mode, else
    ``bench.steps``."""
    return cfg.bench.read_steps if case.mode == "read" else cfg.bench.steps


def pass_repeat(cfg: Config, steps: int, split_samples: int, *, single_epoch: bool) -> int:
    """Epochs a pass reads in one iteration of its loader: enough for its warm-up and ``steps``
    measured steps, read back to back (see ``repeat`` in :func:`pipelines.loaders.build_loader`);
    one when ``single_epoch`` (a cold pass that cannot evict before each read: a second epoch
    would read from the cache the first filled)."""
    if single_epoch:
        return 1
    total = cfg.bench.warmup_steps + steps
    return max(1, math.ceil(total * cfg.loader.batch_size / split_samples))


def pass_batches(loader: EpochLoader, pass_index: int) -> Iterator[Batch]:
    """The batches of pass ``pass_index``; epoch numbers from ``1000 * pass_index`` keep the
    passes' shuffles apart."""
    loader.set_epoch(1000 * pass_index)
    yield from loader


def run_case(
    case: Case,
    cfg: Config,
    storage: Storage,
    records: list[Record],
    shards: list[ShardInfo] | None,
    classes: list[str],
    *,
    pass_index: int,
    repeat: int,
) -> tuple[dict, list[dict]]:
    """Run one pass of one configuration, reading ``repeat`` epochs at most (:func:`pass_repeat`).

    Returns:
        ``(row, steps)``: the epoch figures of :meth:`training.meter.EpochMeter.summary` plus
        ``peak_rss_mib``, ``data_wait_share`` and the CPU figures of the measured window
        (:meth:`bench.resources.CpuUse.figures`); and one dict per measured step.
    """
    task = task_module(cfg.task)
    steps = case_steps(case, cfg)
    loader = build_loader(
        storage,
        records,
        access=case.access,
        transform=task.transform(cfg, train=True) if cfg.bench.decode else None,
        class_to_index=class_to_index(task, classes),
        settings=replace(
            LoaderSettings(**asdict(cfg.loader)),
            num_workers=case.workers,
            persistent_workers=False,  # one iteration per loader (see pass_repeat)
        ),
        shuffle=True,
        seed=cfg.train.seed,
        shards=shards,
        shuffle_buffer=cfg.access.shuffle_buffer,
        concurrency=cfg.access.concurrency,
        repeat=repeat,
    )
    compute = compute_fn(case, cfg, classes)
    with ResourceSampler() as resources:
        meter = measure_steps(
            pass_batches(loader, pass_index),
            compute,
            epoch=pass_index,
            num_samples=None,
            max_steps=steps,
            warmup_steps=cfg.bench.warmup_steps,
            desc=f"{case.name} pass {pass_index}",
            from_first_read=case.mode == "read",
        )
    row = meter.summary()
    row["peak_rss_mib"] = resources.peak_rss_bytes / 2**20
    row.update(resources.cpu(meter.started, meter.finished).figures(row["bytes_read"]))
    row["data_wait_share"] = row["data_wait_s"] / row["wall_s"] if row["wall_s"] > 0 else math.nan
    steps = [{**vars(s), "case": case.name} for s in meter.steps]
    return row, steps
