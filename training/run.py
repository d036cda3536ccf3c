"""A whole training run: data, loaders, model, epochs, measurements and outputs.

Read in this order: :func:`run` → :func:`_run` (the steps) → :func:`training.run_data.prepare_data`
(storage, splits, shards, loaders) → :func:`training.trainer.build_training` (model,
optimizer, schedule; :func:`~training.trainer.resume_from` a checkpoint) → :func:`run_epochs`
(:func:`training.engine.train_one_epoch` with :func:`training.engine.step_fn`, the task's
``evaluate``, the outputs of each epoch) → :func:`write_summary`.

``run(cfg)`` is what ``make train`` executes (through ``scripts/train.py``). Outputs, in
``cfg.output.dir``: ``config.yaml`` (resolved settings), ``metrics.csv`` (one row per epoch),
``steps.csv`` (one row per step), ``summary.json`` (run totals), ``benchmark.log``,
``model.pt`` (state_dict),
``model.json`` + ``index_to_name.json`` (what serving needs to rebuild the model) and
``checkpoint.pt`` (what ``--resume`` continues from).
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from pathlib import Path

import torch

from models import entry_point
from pipelines.formats.records import DatasetError
from pipelines.storage.base import RequestStats
from training import distributed
from training.charts import TensorBoard, write_plots
from training.config import Config
from training.data import resolve_split
from training.distributed import ONE_RANK, Ranks
from training.engine import step_fn, train_one_epoch
from training.meter import aggregate, request_summary
from training.outputs import (
    attach_log_file,
    detach_log_file,
    save_torch,
    write_csv,
    write_json,
    write_yaml,
)
from training.run_data import RunData, prepare_data
from training.tasks import task_module
from training.trainer import (
    History,
    Training,
    build_training,
    resume_from,
    weights_digest,
    wrap_for_ranks,
)

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
