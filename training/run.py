"""A whole training run: data, loaders, model, epochs, measurements and outputs.

``run(cfg)`` is what ``make train`` executes (through ``scripts/train.py``). Outputs, in
``cfg.output.dir``: ``config.yaml`` (resolved settings), ``metrics.csv`` (one row per epoch),
``steps.csv`` (one row per step), ``summary.json`` (run totals), ``benchmark.log``,
``model.pt`` (state_dict),
``model.json`` + ``index_to_name.json`` (what serving needs to rebuild the model) and
``checkpoint.pt`` (what ``--resume`` continues from).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from models import entry_point
from pipelines.access.loaders import EpochLoader, LoaderSettings, build_loader
from pipelines.formats.records import BoxCounts, DatasetError
from pipelines.shards.manifest import ShardInfo
from pipelines.storage.base import RequestStats
from training import distributed
from training.charts import TensorBoard, write_plots
from training.config import Config, ConfigError
from training.data import (
    DataSource,
    class_names,
    load_split,
    open_storage,
    resolve_split,
    split_shards,
)
from training.distributed import ONE_RANK, Ranks
from training.engine import Precision, step_fn, train_one_epoch
from training.meter import aggregate, request_summary
from training.outputs import (
    attach_log_file,
    detach_log_file,
    save_torch,
    write_csv,
    write_json,
    write_yaml,
)
from training.tasks import class_to_index, task_module

log = logging.getLogger(__name__)

#: ``metrics.csv`` columns common to both tasks; the task's quality columns follow them
#: (detection: ``map_50, map, ...``; classification: ``top1, top5, balanced_acc, acc_<class>...``,
#: see the task modules' ``quality_columns``).
METRICS_COLUMNS = [
    "epoch",
    "task",
    "access",
    "storage",
    "pretrained",
    "ranks",
    "samples",
    "skipped",
    "samples_dropped",
    "boxes_dropped",
    "bytes_read",
    "read_s",
    "data_wait_s",
    "data_wait_max_s",
    "compute_s",
    "wall_s",
    "read_mbps",
    "throughput_mbps",
    "samples_per_s",
    "au",
    "au_min",
    "requests",
    "bytes_per_request",
    "retries",
    "ttfb_p50_ms",
    "ttfb_p99_ms",
    "errors",
    "loss",
    "lr",
]
STEP_COLUMNS = [
    "epoch",
    "rank",
    "step",
    "samples",
    "skipped",
    "bytes_read",
    "read_s",
    "data_wait_s",
    "compute_s",
    "requests",
    "retries",
    "loss",
]


#: ``trace.csv`` (``output.trace``): one row per training sample the loop received.
TRACE_COLUMNS = [
    "epoch", "rank", "worker", "step", "id", "bytes", "read_start_s", "read_end_s",
]  # fmt: skip


def run_summary(epochs: list[dict], requests: RequestStats) -> dict:
    """Totals of the epochs this invocation ran, and their storage request figures."""
    nbytes = sum(e["bytes_read"] for e in epochs)
    wall = sum(e["wall_s"] for e in epochs)
    return {
        "first_epoch": epochs[0]["epoch"],
        "last_epoch_run": epochs[-1]["epoch"],
        "samples": sum(e["samples"] for e in epochs),
        "skipped": sum(e["skipped"] for e in epochs),
        "bytes_read": nbytes,
        "wall_s": wall,
        "throughput_mbps": nbytes / wall / 1e6 if wall > 0 else math.nan,
        **request_summary(requests, nbytes),
    }


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up to the peak LR, then cosine decay to 0 at ``total_steps`` (SGDR shape,
    Loshchilov & Hutter 2017, without restarts). Steps past the end stay at 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def run(cfg: Config, *, resume: bool = False) -> dict:
    """Train and evaluate as configured; write all outputs; return the last epoch's metrics row.

    Raises:
        DatasetError, pipelines.storage.base.StorageError, pipelines.shards.manifest.ShardError,
        training.engine.TrainingError: with a message for the user (the CLI prints it).
    """
    started = time.perf_counter()  # the trace's times count from here
    ranks = distributed.from_environment()
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    if ranks.distributed:  # every line says which rank wrote it
        prefix = f"%(levelname)s [rank {ranks.rank}] %(message)s"
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(prefix))
    log_handler = attach_log_file(
        out / "benchmark.log", rank=ranks.rank if ranks.distributed else None
    )
    try:
        device = distributed.pick_device(cfg.train.device, ranks)
        distributed.start(ranks, device, cfg.train.dist_timeout_s)
        return _run(cfg, out, resume, ranks, device, started)
    finally:
        distributed.stop()
        detach_log_file(log_handler)


def _run(
    cfg: Config, out: Path, resume: bool, ranks: Ranks, device: torch.device, started: float
) -> dict:
    """The run, step by step: data and loaders, model and optimizer, resume, the epochs, the
    summary. Every rank runs it; rank 0 alone writes the outputs."""
    cfg = resolve_split(cfg)  # config.yaml says whether a hash split was used
    log.debug("config: %s", cfg.to_dict())  # the log file only; the console gets its path
    log.info("config: %s", out / "config.yaml")
    if ranks.main:
        write_yaml(out / "config.yaml", cfg.to_dict())
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    task = task_module(cfg.task)
    data = prepare_data(cfg, task, ranks)
    training = build_training(cfg, task, data, device)
    history = History()
    if resume:
        history = resume_from(out / "checkpoint.pt", training, device, ranks)
    wrap_for_ranks(training, device)
    if ranks.main:
        write_json(out / "index_to_name.json", task.index_to_name(data.classes))
        if "model_file" in training.spec:  # the user's model: the run keeps its file
            entry_point.copy_into(entry_point.resolve(training.spec["entry_point"]), out)
        write_json(out / "model.json", training.spec)
    run_requests = run_epochs(cfg, task, data, training, history, device, out, ranks, started)
    last = write_summary(
        cfg, task, history, run_requests, out, pretrained=training.pretrained, main=ranks.main
    )
    distributed.barrier()  # no rank leaves (and tears the group down) before rank 0 is done
    return last


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
    """Open the storage, read both splits (logging what was kept), find or write the shards,
    and build both loaders: this rank's share of each (the training split in equal steps on
    every rank, the evaluation split every sample once).

    Shards missing or stale are written by rank 0 while the others wait, then found by them.

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
            if ranks.main:
                shards = find_shards(source, cfg, name, records)
            distributed.barrier(long=True)  # writing a large dataset's shards takes a while
            if not ranks.main:
                shards = find_shards(source, cfg, name, records)
        loaders[train] = build_loader(
            source.storage,
            records,
            access=pattern,
            transform=task.transform(cfg, train),
            class_to_index=label_of,
            settings=LoaderSettings(**asdict(cfg.loader)),
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


def find_shards(source: DataSource, cfg: Config, split: str, records: list) -> list[ShardInfo]:
    """The split's shards, written when missing or stale (logged either way)."""
    storage = source.storage
    prefix, shards, written = split_shards(
        source,
        cfg,
        split,
        records,
        on_shard=lambda s: log.info(
            "wrote shard %s (%d bytes, %d samples)", storage.describe(s.key), s.bytes, s.samples
        ),
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


@dataclass
class Training:
    """The model and what trains it.

    Attributes:
        model: the model, on its device: with several ranks wrapped in
            DistributedDataParallel (gradients averaged over the ranks at each step).
        net: the model itself (``model.module`` under DDP): what is evaluated and saved.
        spec: its ``model.json`` (what rebuilds it), with ``pretrained``.
        optimizer, scheduler: AdamW or SGD; warm-up then cosine decay over every step the
            training loader yields in all epochs (:func:`lr_lambda`).
        precision: ``train.precision`` (mixed precision and its gradient scaler).
    """

    model: torch.nn.Module
    net: torch.nn.Module
    spec: dict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision

    @property
    def pretrained(self) -> bool:
        """Whether the model started from pretrained weights."""
        return bool(self.spec["pretrained"])


def build_training(cfg: Config, task, data: RunData, device: torch.device) -> Training:
    """Build the model (logging whether it starts from pretrained weights), its optimizer and
    its learning-rate schedule."""
    model, spec = task.build_model(cfg, data.classes, pretrained=cfg.model.pretrained)
    if spec["pretrained"]:
        log.info("model %s: starts from pretrained weights", cfg.model.arch)
    elif cfg.model.pretrained:
        log.info("model %s: trained from scratch (its pretrained weights could not be had)",
                 cfg.model.arch)  # fmt: skip
    else:
        log.info("model %s: trained from scratch (model.pretrained false)", cfg.model.arch)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params,
            lr=cfg.train.lr,
            momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay,
        )
    # the steps the loader really yields: an iterable loader's workers each end with a partial
    # batch, so an epoch can have more than ceil(samples / batch size) (see build_loader)
    total_steps = sum(data.train_loader.steps(e) for e in range(1, cfg.train.epochs + 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, warmup_steps=min(100, max(1, total_steps // 10)))
    )
    precision = Precision(cfg.train.precision, device)
    if precision.dtype is not None:
        log.info("precision %s: torch.autocast(%s)%s", precision.name, device.type,
                 " with a gradient scaler" if precision.scaler else "")  # fmt: skip
    return Training(model, model, spec, optimizer, scheduler, precision)


def wrap_for_ranks(training: Training, device: torch.device) -> None:
    """With several ranks, wrap the model in DistributedDataParallel: every rank starts from
    rank 0's weights and buffers (DDP broadcasts them here, after a resume has loaded them)
    and gradients are averaged over the ranks at each step."""
    if dist.is_initialized():
        training.model = DistributedDataParallel(
            training.net, device_ids=[device.index] if device.type == "cuda" else None
        )


@dataclass
class History:
    """The epochs run so far: their ``metrics.csv`` rows and ``steps.csv`` rows (from a
    checkpoint when resuming), and the first epoch still to run."""

    rows: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    first_epoch: int = 1


def resume_from(
    path: Path, training: Training, device: torch.device, ranks: Ranks = ONE_RANK
) -> History:
    """Load the checkpoint at ``path`` into ``training`` (model, optimizer, schedule, and
    whether the run started from pretrained weights); return the epochs it holds. Every rank
    loads the same file.

    Raises:
        DatasetError: there is no checkpoint.
        ConfigError: it was written by a run with another number of ranks (the data split
            and the step counts would not continue where they stopped).
    """
    if not path.exists():
        raise DatasetError(f"--resume: no checkpoint at {path}; train without --resume first")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    written_by = ckpt.get("world_size", 1)
    if written_by != ranks.world_size:
        raise ConfigError(
            f"--resume: {path} was written by a run of {written_by} rank(s), this one has "
            f"{ranks.world_size}: resume with NPROC (x NNODES) = {written_by}, or train afresh"
        )
    training.net.load_state_dict(ckpt["model"])
    training.optimizer.load_state_dict(ckpt["optimizer"])
    training.scheduler.load_state_dict(ckpt["lr_scheduler"])
    if training.precision.scaler is not None and ckpt.get("grad_scaler"):
        training.precision.scaler.load_state_dict(ckpt["grad_scaler"])
    training.spec["pretrained"] = ckpt.get("pretrained", training.pretrained)
    found = distributed.gather((ckpt["epoch"], weights_digest(training.net)))
    if len(set(found)) > 1:  # e.g. a node whose output folder holds another checkpoint
        raise ConfigError(
            f"--resume: the ranks found different checkpoints at {path} (epoch, weights: "
            f"{found}): every node must resume from the same output folder (a shared one)"
        )
    log.info("resuming from %s after epoch %d", path, ckpt["epoch"])
    return History(ckpt["metrics"], ckpt["steps"], ckpt["epoch"] + 1)


def run_epochs(
    cfg: Config,
    task,
    data: RunData,
    training: Training,
    history: History,
    device: torch.device,
    out: Path,
    ranks: Ranks = ONE_RANK,
    started: float = 0.0,
) -> RequestStats:
    """Train and evaluate each epoch still to run; after each, gather every rank's figures
    and (rank 0) write ``metrics.csv`` (the epoch over all ranks,
    :func:`training.meter.aggregate`), ``metrics_by_rank.csv``, ``steps.csv``, ``model.pt``
    and ``checkpoint.pt``, and with ``output.trace`` ``trace.csv`` (times in seconds from
    ``started``, each rank's own ``time.perf_counter``). Returns this invocation's storage
    requests over all ranks (TTFB lists are not checkpointed)."""
    if history.first_epoch > cfg.train.epochs:
        log.info("nothing to do: the checkpoint is at epoch %d of %d",
                 history.first_epoch - 1, cfg.train.epochs)  # fmt: skip
    run_requests = RequestStats()
    columns = METRICS_COLUMNS + task.quality_columns(data.classes)
    train_loader, eval_loader = data.train_loader, data.eval_loader
    model, optimizer, scheduler = training.model, training.optimizer, training.scheduler
    # the rows of resumed epochs (an epoch written after the checkpoint was not: it runs again)
    by_rank = _read_rows(out / "metrics_by_rank.csv", before=history.first_epoch)
    traced = _read_rows(out / "trace.csv", before=history.first_epoch) if cfg.output.trace else []
    tensorboard = None  # opened by rank 0 after its first epoch, with output.tensorboard
    for epoch in range(history.first_epoch, cfg.train.epochs + 1):
        train_loader.set_epoch(epoch)
        reads = [] if cfg.output.trace else None
        meter = train_one_epoch(
            model,
            step_fn(task, model, optimizer, scheduler, device, epoch, training.precision),
            train_loader,
            epoch,
            num_samples=train_loader.num_samples,
            on_corrupt=cfg.access.on_corrupt,
            trace=reads,
            agree=distributed.all_agree if ranks.distributed else None,
        )
        distributed.share_buffers(training.net)  # rank 0's BatchNorm statistics everywhere
        eval_loader.set_epoch(epoch)
        quality = task.evaluate(
            training.net,  # not the DDP wrapper: ranks evaluate different numbers of batches
            eval_loader,
            device,
            num_samples=eval_loader.num_samples,
            classes=data.classes,
            precision=training.precision,
        )
        mine = meter.summary()
        mine["samples_dropped"] = max(
            0, train_loader.share(epoch) - mine["samples"] - mine["skipped"]
        )
        steps = [{**vars(s), "rank": ranks.rank} for s in meter.steps]
        trace = [
            {
                "epoch": epoch, "rank": ranks.rank, "worker": worker, "step": step,
                "id": image_id, "bytes": nbytes,
                "read_start_s": read_at - started, "read_end_s": read_at + read_s - started,
            }
            for step, worker, image_id, nbytes, read_at, read_s in reads or ()
        ]  # fmt: skip
        gathered = distributed.gather((mine, meter.requests, steps, trace))
        common = {
            "task": cfg.task,
            "access": data.pattern,
            "storage": cfg.storage.type,
            "pretrained": training.pretrained,
            "boxes_dropped": data.train_counts.dropped,
            "lr": optimizer.param_groups[0]["lr"],
            **quality,
        }
        row = {**aggregate([g[0] for g in gathered], [g[1] for g in gathered]), **common}
        for rank, (rank_row, *_) in enumerate(gathered):
            by_rank.append(
                {
                    **rank_row,
                    "ranks": len(gathered),
                    "au_min": rank_row["au"],
                    "data_wait_max_s": rank_row["data_wait_s"],
                    **common,
                    "rank": rank,
                }
            )
        history.rows.append(row)
        history.steps.extend(s for g in gathered for s in g[2])
        traced.extend(t for g in gathered for t in g[3])
        for _, requests, *_ in gathered:
            run_requests.merge(requests)
        if ranks.distributed:
            log.info(
                "epoch %d, this rank: %d samples (%d dropped), data wait %.1f s, AU %.3f",
                epoch,
                mine["samples"],
                mine["samples_dropped"],
                mine["data_wait_s"],
                mine["au"],
            )
        if not ranks.main:
            continue
        log.info(
            "epoch %d: %d samples (%d skipped), %.1f samples/s, read %.2f MB/s, "
            "delivered %.2f MB/s, data wait %.1f s, compute %.1f s, AU %.3f, loss %.4f, %s",
            epoch,
            row["samples"],
            row["skipped"],
            row["samples_per_s"],
            row["read_mbps"],
            row["throughput_mbps"],
            row["data_wait_s"],
            row["compute_s"],
            row["au"],
            row["loss"],
            task.describe(row),
        )
        if ranks.distributed:
            worst = min(range(len(gathered)), key=lambda r: gathered[r][0]["au"])
            log.info(
                "epoch %d over %d ranks: AU mean %.3f, worst %.3f (rank %d); longest data wait "
                "%.1f s; %d samples dropped to keep the ranks in step",
                epoch,
                ranks.world_size,
                row["au"],
                row["au_min"],
                worst,
                row["data_wait_max_s"],
                row["samples_dropped"],
            )
        write_csv(out / "metrics.csv", history.rows, columns)
        write_csv(out / "metrics_by_rank.csv", by_rank, ["rank", *columns])
        write_csv(out / "steps.csv", history.steps, STEP_COLUMNS)
        if cfg.output.trace:
            write_csv(out / "trace.csv", traced, TRACE_COLUMNS)
        save_torch(out / "model.pt", training.net.state_dict())
        save_torch(
            out / "checkpoint.pt",
            {
                "model": training.net.state_dict(),
                "world_size": ranks.world_size,
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(),
                "grad_scaler": (
                    training.precision.scaler.state_dict() if training.precision.scaler else {}
                ),
                "epoch": epoch,
                "pretrained": training.pretrained,
                "args": cfg.to_dict(),
                "metrics": history.rows,
                "steps": history.steps,
            },
        )
        try:  # after the checkpoint: a chart that fails costs the chart only
            write_plots(out, cfg.task, history.rows, history.steps)
            if cfg.output.tensorboard:
                tensorboard = tensorboard or TensorBoard(out)
                tensorboard.add_epoch(cfg.task, row, history.steps)
        except Exception as exc:  # noqa: BLE001
            log.warning("charts of epoch %d not written: %s: %s", epoch, type(exc).__name__, exc)
    if tensorboard is not None:
        tensorboard.close()
    log.info("weights digest %s", weights_digest(training.net))  # the same on every rank
    return run_requests


def weights_digest(model: torch.nn.Module) -> str:
    """The first 16 hex digits of the SHA-256 of the model's state (tensors in key order):
    equal on every rank when DistributedDataParallel kept the replicas in step."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 0-dim counters too
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def write_summary(
    cfg: Config,
    task,
    history: History,
    run_requests: RequestStats,
    out: Path,
    *,
    pretrained: bool,
    main: bool = True,
) -> dict:
    """Write ``summary.json`` (this invocation's epochs, the last epoch's row; rank 0 only)
    and log the storage and summary lines; return the last epoch's row.

    Raises:
        DatasetError: no epoch ran at all.
    """
    if not history.rows:
        raise DatasetError("no epoch ran")
    last = history.rows[-1]
    run_epochs_rows = history.rows[history.first_epoch - 1 :]  # the earlier ones were resumed
    summary = run_summary(run_epochs_rows, run_requests) if run_epochs_rows else {}
    if not main:
        return last
    write_json(out / "summary.json", {**summary, "pretrained": pretrained, "last_epoch": last})
    if summary:
        log.info(
            "storage over epochs %d-%d: %d requests, %.0f bytes/request, %d retries, "
            "TTFB p50 %.2f ms p99 %.2f ms, errors: %s",
            summary["first_epoch"],
            summary["last_epoch_run"],
            summary["requests"],
            summary["bytes_per_request"],
            summary["retries"],
            summary["ttfb_p50_ms"],
            summary["ttfb_p99_ms"],
            summary["errors"] or "none",
        )
    log.info(
        "summary: %s %s on %s, epoch %d: %s, %.1f samples/s, "
        "%.2f MB/s delivered (%.2f MB/s per reader), AU %.3f; outputs in %s",
        cfg.task,
        cfg.access.pattern,
        cfg.storage.type,
        last["epoch"],
        task.describe(last),
        last["samples_per_s"],
        last["throughput_mbps"],
        last["read_mbps"],
        last["au"],
        out,
    )
    return last


def _read_rows(path: Path, *, before: int) -> list[dict]:
    """The rows of epochs before ``before`` in a CSV written earlier (``metrics_by_rank.csv``
    or ``trace.csv`` of the epochs a resumed run already has); empty when it is missing."""
    if before <= 1 or not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) < before]
