"""One benchmark configuration: build its loader, run warm-up + measured steps, return figures.

A configuration (:class:`Case`) is an access pattern × storage × client library × worker count ×
rank count (:mod:`bench.ranks`) × mode: ``read`` (read and decode only, the storage ceiling:
s3torchbenchmarking's "entitlement"), ``emulate`` (plus ``bench.computation_time_s`` of sleep per
step: MLPerf Storage / DLIO's ``computation_time``, so AU compares with their thresholds) or
``train`` (the real detector, one optimizer step per batch). Every configuration runs the same seed,
data and steps (``bench.steps``; ``read``: ``bench.read_steps``), warm-up excluded. In ``read`` mode
the clock starts at the first storage read of a measured batch, so batches read ahead in the warm-up
do not count as delivered in no time. A pass reads further epochs (reshuffled) back to back with the
same workers until its steps are done, so worker start-up falls in the warm-up only; a cold pass
that cannot evict each file right before reading it (:class:`bench.page_cache.EvictBeforeRead`)
stops after one epoch.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bench.loading.config import BenchConfig
from bench.ranks import RankSubset, node_of_this_rank
from bench.resources import CpuUse, ResourceSampler, device_of
from common.settings import replace
from pipelines.access.loaders import EpochLoader, build_loader
from pipelines.formats.records import Record
from pipelines.samples import Batch
from pipelines.shards.manifest import ShardInfo
from pipelines.storage.base import RequestStats, Storage
from training.distributed import all_agree, from_environment, pick_device
from training.engine import Precision, measure_steps, step_fn
from training.meter import EpochMeter, aggregate
from training.tasks import class_to_index, load_task

MODES = ("read", "emulate", "train")

#: One rank reading alone.
ONE = RankSubset((0,))


@dataclass(frozen=True)
class Case:
    """One row of the matrix.

    Attributes:
        mode: ``read``, ``emulate`` or ``train``.
        access: ``random``, ``objects`` or ``shards``.
        storage: ``fs`` or ``s3``.
        client_lib: ``boto3`` or ``s3torchconnector`` for s3; ``-`` for fs.
        workers: DataLoader worker processes per rank.
        ranks: ranks reading at once (one per accelerator; :mod:`bench.ranks`).
    """

    mode: str
    access: str
    storage: str
    client_lib: str
    workers: int
    ranks: int = 1

    @property
    def name(self) -> str:
        """A short label, e.g. ``s3/boto3/shards/read/w2``, with ``/r4`` for 4 ranks."""
        lib = "" if self.storage == "fs" else f"/{self.client_lib}"
        ranks = f"/r{self.ranks}" if self.ranks > 1 else ""
        return f"{self.storage}{lib}/{self.access}/{self.mode}/w{self.workers}{ranks}"


def expand_matrix(cfg: BenchConfig) -> list[Case]:
    """All configurations of ``cfg.bench``, storage-major so each store's data stays warm."""
    workers = cfg.bench.worker_counts or [cfg.loader.num_workers]
    cases = []
    for storage in cfg.bench.storages:
        libs = cfg.bench.client_libs if storage == "s3" else ["-"]
        for lib in libs:
            for access in cfg.bench.access:
                for n in workers:
                    for ranks in sorted(set(cfg.bench.ranks)):
                        for mode in cfg.bench.modes:
                            cases.append(Case(mode, access, storage, lib, n, ranks))
    return cases


def compute_fn(
    case: Case, cfg: BenchConfig, classes: list[str], subset: RankSubset = ONE
) -> Callable[[Batch, int], float]:
    """``compute(batch, step)``: the per-step work of ``case.mode`` (see the module doc).

    ``train`` builds the task's model from scratch (no download, the same for every case) on this
    rank's device, in DistributedDataParallel over ``subset``'s group when it has several ranks.
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
    task = load_task(cfg)
    model, _ = task.build_model(cfg, classes, pretrained=False)
    device = pick_device(cfg.train.device, from_environment())
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if subset.size > 1:
        model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            process_group=subset.group,
        )
    precision = Precision(cfg.train.precision, device)
    return step_fn(task, model, optimizer, None, device, epoch=0, precision=precision)


def case_steps(case: Case, cfg: BenchConfig) -> int:
    """Measured steps of a pass: ``bench.read_steps`` in ``read`` mode, else ``bench.steps``."""
    return cfg.bench.read_steps if case.mode == "read" else cfg.bench.steps


def pass_repeat(cfg: BenchConfig, steps: int, rank_samples: int, *, single_epoch: bool) -> int:
    """Epochs a pass reads in one loader iteration: enough for its warm-up and ``steps`` steps.

    Each rank reads at least ``rank_samples`` samples an epoch (:func:`rank_samples`); see
    ``repeat`` in :func:`pipelines.access.loaders.build_loader`. One when ``single_epoch`` (a cold
    pass that cannot evict before each read: a second epoch would read from the cache the first
    filled).
    """
    if single_epoch:
        return 1
    total = cfg.bench.warmup_steps + steps
    return max(1, math.ceil(total * cfg.loader.batch_size / max(rank_samples, 1)))


def rank_samples(records: list[Record], shards: list[ShardInfo] | None, ranks: int) -> int:
    """The fewest samples a rank reads in an epoch when ``ranks`` ranks share the split.

    An equal part of the records; with shards (not cut, dealt one in ``ranks`` to each rank), the
    samples of the ``len(shards) // ranks`` smallest shards.
    """
    if ranks == 1:
        return len(records)
    if not shards:
        return len(records) // ranks
    smallest = sorted(s.samples for s in shards)
    return sum(smallest[: len(shards) // ranks])


def pass_batches(loader: EpochLoader, pass_index: int) -> Iterator[Batch]:
    """The batches of pass ``pass_index``; epochs from ``1000 * pass_index`` keep shuffles apart."""
    loader.set_epoch(1000 * pass_index)
    yield from loader


@dataclass
class PassPart:
    """One rank's part of a pass: what :func:`combine` makes the pass's row from.

    Attributes:
        row: :meth:`training.meter.EpochMeter.summary` of its measured steps.
        steps: one dict per measured step (``case``, ``rank`` and the step's figures).
        requests: its storage requests (TTFB percentiles over all ranks need the lists).
        cpu: CPU spent in the measured window by the rank's process and its DataLoader workers, and
            by its whole machine.
        peak_rss_bytes: the most memory they held at once.
        node: its node (torchrun's ``GROUP_RANK``): machine-wide counters are counted once per node.
        cores: CPU cores of its node (``os.cpu_count()``).
        memory_bytes: memory of its node (bytes).
        min_available_bytes: the least memory its node had available in the window (bytes).
        device_read_bytes: bytes read in the window from the block device holding the data on its
            node; None where no block device of this machine holds it (remote storage, network
            filesystem, tmpfs).
    """

    row: dict
    steps: list[dict]
    requests: RequestStats
    cpu: CpuUse
    peak_rss_bytes: int
    node: int = 0
    cores: int = 1
    memory_bytes: int = 0
    min_available_bytes: int = 0
    device_read_bytes: int | None = None


def combine(parts: list[PassPart]) -> dict:
    """The row of a pass from its ranks' parts (in rank order; one part: that rank's figures).

    The epoch figures are :func:`training.meter.aggregate`'s (samples, bytes and requests summed,
    ``wall_s`` the slowest rank's, ``au`` the mean and ``au_min`` the worst rank's, ``data_wait_s``
    the mean and ``data_wait_max_s`` the longest). ``peak_rss_mib`` is the sum of the ranks' peaks
    (MiB); the CPU figures (:meth:`bench.resources.CpuUse.figures`) count every rank's processes and
    each node's machine-wide counters once (its first rank's, over that rank's window), per second
    of the longest window; ``data_wait_share`` is the mean wait over the slowest wall time.

    From each node's first rank, what a client node may have run out of (shares, 0 to 1):
    ``client_cpu_busy``, the busiest node's share of its cores busy or stolen (capped at 1: the
    kernel counts CPU time in ticks of 10 ms a core, so over a window of a few tenths of a second
    the share can read several percent over 1);
    ``memory_available_share``, the least memory any node had available over its memory;
    ``cache_share``, the share of the bytes delivered not read from the block devices holding the
    data (NaN where no block device of these machines holds it).
    """
    row = aggregate([p.row for p in parts], [p.requests for p in parts])
    row["peak_rss_mib"] = sum(p.peak_rss_bytes for p in parts) / 2**20
    per_node: dict[int, PassPart] = {}
    for part in parts:
        per_node.setdefault(part.node, part)
    firsts = list(per_node.values())
    cpu = CpuUse(
        max(p.cpu.seconds for p in parts),
        sum(p.cpu.client_s for p in parts),
        sum(p.cpu.host_s for p in firsts),
        sum(p.cpu.steal_s for p in firsts),
    )
    row.update(cpu.figures(row["bytes_read"]))
    row["data_wait_share"] = row["data_wait_s"] / row["wall_s"] if row["wall_s"] > 0 else math.nan
    row["client_cpu_busy"] = max(  # capped: see the docstring
        min(1.0, (p.cpu.host_s + p.cpu.steal_s) / (p.cpu.seconds * p.cores))
        if p.cpu.seconds > 0
        else 0.0
        for p in firsts
    )
    row["memory_available_share"] = min(
        p.min_available_bytes / p.memory_bytes if p.memory_bytes else math.nan for p in firsts
    )
    device = [p.device_read_bytes for p in firsts if p.device_read_bytes is not None]
    row["device_read_bytes"] = sum(device) if device else math.nan
    row["cache_share"] = (
        min(1.0, max(0.0, 1 - sum(device) / row["bytes_read"]))
        if device and row["bytes_read"] > 0
        else math.nan
    )
    return row


def run_case(
    case: Case,
    cfg: BenchConfig,
    storage: Storage,
    records: list[Record],
    shards: list[ShardInfo] | None,
    classes: list[str],
    *,
    pass_index: int,
    repeat: int,
    subset: RankSubset = ONE,
    part: int = 0,
    local_dir: Path | None = None,
) -> PassPart:
    """Run this rank's part of one pass of one configuration, reading at most ``repeat`` epochs.

    With several ranks in ``subset``, this rank (its ``part``) reads its part of each epoch's split
    (:func:`pipelines.access.loaders.build_loader`'s ``rank`` and ``world_size``, equal steps on
    every rank). In ``emulate`` mode with ``bench.sync: step`` the ranks wait for each other before
    every step after the first (:func:`step_barrier`). ``local_dir``: the folder on this machine the
    storage's keys live in, whose block device's reads are counted
    (:attr:`PassPart.device_read_bytes`); None: not counted.
    """
    steps = case_steps(case, cfg)
    loader = case_loader(
        case, cfg, storage, records, shards, classes, repeat=repeat, subset=subset, part=part
    )
    compute = compute_fn(case, cfg, classes, subset)
    device = device_of(local_dir) if local_dir is not None else None
    with ResourceSampler(device=device) as resources:
        meter = measure_steps(
            pass_batches(loader, pass_index),
            compute,
            epoch=pass_index,
            num_samples=None,
            max_steps=steps,
            warmup_steps=cfg.bench.warmup_steps,
            desc=f"{case.name} pass {pass_index}",
            from_first_read=case.mode == "read",
            # DDP: a batch of corrupt images on one rank skips the step on all of them
            agree=(
                functools.partial(all_agree, group=subset.group)
                if subset.group is not None and case.mode == "train"
                else None
            ),
            sync=step_barrier(case, cfg, subset),
        )
    return _pass_part(case, meter, resources, subset.members[part], device)


def case_loader(
    case: Case,
    cfg: BenchConfig,
    storage: Storage,
    records: list[Record],
    shards: list[ShardInfo] | None,
    classes: list[str],
    *,
    repeat: int,
    subset: RankSubset = ONE,
    part: int = 0,
) -> EpochLoader:
    """The loader of this rank's part of a pass of ``case``.

    :func:`pipelines.access.loaders.build_loader` of its access pattern over ``storage`` with
    ``case.workers`` DataLoader workers, shuffled with the run's seed, decoding when
    ``bench.decode``.

    Args:
        records: the split's records; shards: its shards (the ``shards`` pattern), or None.
        classes: the class names (their label ids, :func:`training.tasks.class_to_index`).
        repeat: epochs read back to back in one iteration (:func:`pass_repeat`).
        subset: the ranks reading the pass; part: this rank's place among them.
    """
    task = load_task(cfg)
    return build_loader(
        storage,
        records,
        access=case.access,
        transform=task.transform(cfg, train=True) if cfg.bench.decode else None,
        class_to_index=class_to_index(task, classes),
        settings=replace(
            cfg.loader,
            num_workers=case.workers,
            persistent_workers=False,  # one iteration per loader (see pass_repeat)
        ),
        shuffle=True,
        seed=cfg.train.seed,
        shards=shards,
        shuffle_buffer=cfg.access.shuffle_buffer,
        concurrency=cfg.access.concurrency,
        repeat=repeat,
        rank=part,
        world_size=subset.size,
        equal_steps=subset.size > 1,
    )


def _pass_part(
    case: Case, meter: EpochMeter, resources: ResourceSampler, rank: int, device: str | None
) -> PassPart:
    """This rank's :class:`PassPart` from its measured steps and what ``resources`` sampled."""
    return PassPart(
        row=meter.summary(),
        steps=[{**vars(s), "case": case.name, "rank": rank} for s in meter.steps],
        requests=meter.requests,
        cpu=resources.cpu(meter.started, meter.finished),
        peak_rss_bytes=resources.peak_rss_bytes,
        node=node_of_this_rank(),
        cores=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        min_available_bytes=resources.min_available_bytes(meter.started, meter.finished),
        device_read_bytes=(
            resources.device_bytes(meter.started, meter.finished) if device else None
        ),
    )


def step_barrier(case: Case, cfg: BenchConfig, subset: RankSubset) -> Callable[[], object] | None:
    """The per-step barrier of an ``emulate`` pass on ``subset``'s group, or None.

    With ``bench.sync: step`` the simulated accelerators wait for each other before each step after
    the first, as data-parallel training (the gradient all-reduce) and DLIO (a barrier per step) do;
    the wait counts as data wait, so one slow reader lowers every rank's AU. None with ``none``, one
    rank or no group.
    """
    if case.mode != "emulate" or cfg.bench.sync != "step" or subset.group is None:
        return None
    return functools.partial(dist.barrier, group=subset.group)
