"""A whole training run: data, loaders, model, epochs, measurements and outputs.

Read in this order: :func:`run` → :func:`_run` (the steps) → :func:`training.run_data.prepare_data`
(storage, splits, shards, loaders) → :func:`training.trainer.build_training` (model, optimizer,
schedule; :func:`~training.trainer.resume_from` a checkpoint) → :func:`run_epochs`
(:func:`train_and_evaluate` on every rank: :func:`training.engine.train_one_epoch` with
:func:`training.engine.step_fn`, then the task's ``evaluate``; the ranks' parts gathered and written
by :class:`training.epoch_outputs.EpochOutputs`) → :func:`training.epoch_outputs.write_summary`.

``run(cfg)`` is what ``make train`` executes (through ``scripts/train.py``). Outputs, in
``cfg.output.dir``: ``config.yaml`` (resolved settings), ``metrics.csv`` (one row per epoch),
``steps.csv`` (one row per step), ``summary.json`` (run totals), ``benchmark.log``, ``model.pt``
(state_dict), ``model.json`` + ``index_to_name.json`` (what serving needs to rebuild the model) and
``checkpoint.pt`` (what ``--resume`` continues from: after an epoch, or a step checkpoint written
mid-epoch on SIGTERM / SIGINT or every ``train.checkpoint_every_steps``:
:mod:`training.preemption`).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from models import own_model
from pipelines.storage.base import RequestStats
from training import distributed
from training.config import Config
from training.data import resolve_split
from training.distributed import ONE_RANK, Ranks
from training.engine import step_fn, train_one_epoch
from training.epoch_outputs import (
    METRICS_COLUMNS,
    TRACE_COLUMNS,
    EpochOutputs,
    RankEpoch,
    log_epoch,
    trace_rows,
    write_summary,
)
from training.meter import EpochMeter
from training.outputs import attach_log_file, detach_log_file, write_json, write_yaml
from training.preemption import StepCheckpoints, restore_rng
from training.run_data import RunData, prepare_data
from training.tasks import Task, load_task
from training.trainer import (
    History,
    Training,
    build_training,
    resume_from,
    weights_digest,
    wrap_for_ranks,
)

__all__ = ["METRICS_COLUMNS", "TRACE_COLUMNS", "run", "run_epochs", "train_and_evaluate"]

log = logging.getLogger(__name__)


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
    """Run every step on this rank (data, model, resume, epochs, summary); rank 0 writes outputs."""
    cfg = resolve_split(cfg)  # config.yaml says whether a hash split was used
    log.debug("config: %s", cfg.to_dict())  # the log file only; the console gets its path
    log.info("config: %s", out / "config.yaml")
    if ranks.main:
        write_yaml(out / "config.yaml", cfg.to_dict())
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    task = load_task(cfg)
    data = prepare_data(cfg, task, ranks)
    training = build_training(cfg, task, data, device)
    history = History()
    if resume:
        history = resume_from(out / "checkpoint.pt", training, device, ranks)
    wrap_for_ranks(training, device)
    if ranks.main:
        write_json(out / "index_to_name.json", task.index_to_name(data.classes))
        if "model_file" in training.spec:  # the user's model: the run keeps its file
            own_model.copy_into(own_model.resolve(training.spec["reference"]), out)
        write_json(out / "model.json", training.spec)
    run_requests = run_epochs(cfg, task, data, training, history, device, out, ranks, started)
    last = write_summary(
        cfg, task, history, run_requests, out, pretrained=training.pretrained, main=ranks.main
    )
    distributed.barrier()  # no rank leaves (and tears the group down) before rank 0 is done
    return last


def run_epochs(
    cfg: Config,
    task: Task,
    data: RunData,
    training: Training,
    history: History,
    device: torch.device,
    out: Path,
    ranks: Ranks = ONE_RANK,
    started: float = 0.0,
) -> RequestStats:
    """Train and evaluate each epoch still to run, then gather every rank's part of it.

    Rank 0 writes each epoch's outputs (:class:`training.epoch_outputs.EpochOutputs`).

    Args:
        started: the run's start (``time.perf_counter``): ``trace.csv``'s times count from it.

    Returns:
        This invocation's storage requests over all ranks (TTFB lists are not checkpointed).
    """
    if history.first_epoch > cfg.train.epochs:
        log.info("nothing to do: the checkpoint is at epoch %d of %d",
                 history.first_epoch - 1, cfg.train.epochs)  # fmt: skip
    run_requests = RequestStats()
    outputs = EpochOutputs(cfg, out, METRICS_COLUMNS + task.quality_columns(data.classes), history)
    checkpoints = StepCheckpoints(cfg, training, history, out, ranks, started)
    with checkpoints.stop:
        for epoch in range(history.first_epoch, cfg.train.epochs + 1):
            resumed = history.position if epoch == history.first_epoch else None
            mine, quality = train_and_evaluate(
                cfg, task, data, training, device, epoch, ranks, checkpoints, resumed
            )
            gathered: list[RankEpoch] = distributed.gather(mine)
            common = {
                "task": cfg.task, "access": data.pattern, "storage": cfg.storage.type,
                "pretrained": training.pretrained, "boxes_dropped": data.train_counts.dropped,
                "lr": training.optimizer.param_groups[0]["lr"], **quality,
            }  # fmt: skip
            row = outputs.add(gathered, common)
            for part in gathered:
                run_requests.merge(part.requests)
            if ranks.distributed:
                s = mine.summary
                log.info(
                    "epoch %d, this rank: %d samples (%d dropped), data wait %.1f s, AU %.3f",
                    epoch, s["samples"], s["samples_dropped"], s["data_wait_s"], s["au"],
                )  # fmt: skip
            if ranks.main:
                log_epoch(epoch, row, task, gathered)
                outputs.write(epoch, training, ranks.world_size)
            checkpoints.clock.reset()  # the epoch's checkpoint is written
    outputs.close()
    log.info("weights digest %s", weights_digest(training.net))  # the same on every rank
    return run_requests


def train_and_evaluate(
    cfg: Config,
    task: Task,
    data: RunData,
    training: Training,
    device: torch.device,
    epoch: int,
    ranks: Ranks,
    checkpoints: StepCheckpoints,
    resumed: dict | None = None,
) -> tuple[RankEpoch, dict]:
    """This rank's epoch: train on its share of the split, then evaluate.

    Args:
        checkpoints: the run's step checkpoints (stops and periodic ones).
        resumed: the step checkpoint's position when this epoch resumes from one (the samples
            consumed before it are left out, its steps and figures carried on).

    Returns:
        ``(part, quality)``: this rank's :class:`~training.epoch_outputs.RankEpoch` and the
        task's held-out figures (the same on every rank).

    Raises:
        training.preemption.Preempted: a stop was requested (the step checkpoint is written).
    """
    train_loader, eval_loader = data.train_loader, data.eval_loader
    mine, meter = None, None
    if resumed is not None:
        mine = resumed["ranks"][ranks.rank]
        train_loader.skip_consumed(epoch, [part["consumed"] for part in resumed["ranks"]])
        meter = EpochMeter.resumed(epoch, mine["meter"], time.time() - resumed["time"])
        restore_rng(mine["rng"])
    train_loader.set_epoch(epoch)
    reads: list | None = [] if cfg.output.trace else None
    control = checkpoints.control(epoch, reads, mine)
    step = step_fn(task, training.model, training.optimizer, training.scheduler, device, epoch,
                   training.precision)  # fmt: skip
    meter = train_one_epoch(
        training.model, step, train_loader, epoch, num_samples=train_loader.num_samples,
        on_corrupt=cfg.access.on_corrupt, trace=reads, agree=control.agree,
        after_step=control.after_step, meter=meter,
    )  # fmt: skip
    distributed.share_buffers(training.net)  # rank 0's BatchNorm statistics everywhere
    eval_loader.set_epoch(epoch)
    quality = task.evaluate(
        training.net,  # not the DDP wrapper: ranks evaluate different numbers of batches
        eval_loader, device, num_samples=eval_loader.num_samples, classes=data.classes,
        precision=training.precision,
    )  # fmt: skip
    summary = meter.summary()
    summary["samples_dropped"] = max(
        0, train_loader.rank_samples(epoch) - summary["samples"] - summary["skipped"]
    )
    steps = [{**vars(s), "rank": ranks.rank} for s in meter.steps]
    trace = (mine["trace"] if mine else []) + trace_rows(
        reads or (), epoch, ranks.rank, checkpoints.started
    )
    return RankEpoch(summary, meter.requests, steps, trace), quality
