"""What a training run writes after each epoch and at its end, and the log lines that say so."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from pipelines.formats.records import DatasetError
from pipelines.storage.base import RequestStats
from training.charts import TensorBoard, write_plots
from training.config import Config
from training.meter import aggregate, request_summary
from training.outputs import save_torch, write_csv, write_json
from training.tasks import Task
from training.trainer import History, Training, checkpoint_state

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
    "restart_gap_s",
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


def trace_rows(reads, epoch: int, rank: int, started: float) -> list[dict]:
    """``trace.csv`` rows of the reads the loop received.

    Args:
        reads: ``(step, worker, id, bytes, read_at, read_s)`` tuples
            (:func:`training.engine.measure_steps`'s ``trace``).
        started: the invocation's start (``time.perf_counter``): the rows' times count from it.
    """
    return [
        {"epoch": epoch, "rank": rank, "worker": worker, "step": step, "id": image_id,
         "bytes": nbytes, "read_start_s": read_at - started,
         "read_end_s": read_at + read_s - started}
        for step, worker, image_id, nbytes, read_at, read_s in reads
    ]  # fmt: skip


@dataclass
class RankEpoch:
    """One rank's part of an epoch, as it travels to rank 0.

    Attributes:
        summary: its figures (:meth:`training.meter.EpochMeter.summary`) with ``samples_dropped``.
        requests: its storage requests.
        steps: its ``steps.csv`` rows.
        trace: its ``trace.csv`` rows (empty without ``output.trace``).
    """

    summary: dict
    requests: RequestStats
    steps: list[dict]
    trace: list[dict]


class EpochOutputs:
    """The files a run writes after each epoch (rank 0), with the rows of the epochs before.

    Args:
        cfg: the run's configuration.
        out: the run's folder.
        columns: ``metrics.csv``'s columns (:data:`METRICS_COLUMNS` and the task's).
        history: the epochs so far (from the checkpoint when resuming); rows of a resumed
            run's earlier epochs in ``metrics_by_rank.csv`` and ``trace.csv`` are kept, those
            of an epoch written after the checkpoint are not (it runs again).
    """

    def __init__(self, cfg: Config, out: Path, columns: list[str], history: History):
        self.cfg, self.out, self.columns, self.history = cfg, out, columns, history
        self.by_rank = _read_rows(out / "metrics_by_rank.csv", before=history.first_epoch)
        trace = cfg.output.trace
        self.traced = _read_rows(out / "trace.csv", before=history.first_epoch) if trace else []
        self.tensorboard: TensorBoard | None = None  # opened after the first epoch, if asked

    def add(self, gathered: list[RankEpoch], common: dict) -> dict:
        """Add an epoch's rows from every rank's part; return its ``metrics.csv`` row.

        That row is the epoch over all ranks (:func:`training.meter.aggregate`), with ``common``.
        """
        parts = [g.summary for g in gathered]
        row = {**aggregate(parts, [g.requests for g in gathered]), **common}
        for rank, part in enumerate(parts):
            self.by_rank.append(
                {**part, "ranks": len(parts), "au_min": part["au"],
                 "data_wait_max_s": part["data_wait_s"], **common, "rank": rank}
            )  # fmt: skip
        self.history.rows.append(row)
        self.history.steps.extend(s for g in gathered for s in g.steps)
        self.traced.extend(t for g in gathered for t in g.trace)
        return row

    def write(self, epoch: int, training: Training, world_size: int) -> None:
        """Write the CSVs, ``model.pt``, the charts, then ``checkpoint.pt`` after ``epoch``.

        The CSVs: ``metrics.csv``, ``metrics_by_rank.csv``, ``steps.csv``, ``trace.csv``
        (``output.trace``). The charts: the plots, and TensorBoard's events with
        ``output.tensorboard``; a chart that fails is a warning (it costs the chart only).
        TensorBoard's events of steps a resumed run repeats are purged (``purge_step``).
        """
        history, out = self.history, self.out
        write_csv(out / "metrics.csv", history.rows, self.columns)
        write_csv(out / "metrics_by_rank.csv", self.by_rank, ["rank", *self.columns])
        write_csv(out / "steps.csv", history.steps, STEP_COLUMNS)
        if self.cfg.output.trace:
            write_csv(out / "trace.csv", self.traced, TRACE_COLUMNS)
        save_torch(out / "model.pt", training.net.state_dict())
        try:
            write_plots(out, self.cfg.task, history.rows, history.steps)
            if self.cfg.output.tensorboard:
                self.tensorboard = self.tensorboard or TensorBoard(out, self._purge_step())
                self.tensorboard.add_epoch(self.cfg.task, history.rows[-1], history.steps)
        except Exception as exc:  # noqa: BLE001
            log.warning("charts of epoch %d not written: %s: %s", epoch, type(exc).__name__, exc)
        save_torch(  # last: a run killed before this point runs the epoch again
            out / "checkpoint.pt",
            checkpoint_state(training, epoch, world_size, self.cfg.to_dict(), history),
        )

    def _purge_step(self) -> int | None:
        """Resuming (after an epoch or from a step checkpoint): the global step of the first step
        run again (TensorBoard hides the events written at and after it by the run that
        stopped); None for a fresh run."""
        first = self.history.first_epoch
        if first <= 1 and self.history.position is None:
            return None
        return 1 + len({(r["epoch"], r["step"]) for r in self.history.steps if r["epoch"] < first})

    def close(self) -> None:
        """Close TensorBoard's event file, if one was opened."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def log_epoch(epoch: int, row: dict, task: Task, gathered: list[RankEpoch]) -> None:
    """The epoch's line (over all ranks) and, with several ranks, the worst rank's."""
    log.info(
        "epoch %d: %d samples (%d skipped), %.1f samples/s, read %.2f MB/s, "
        "delivered %.2f MB/s, data wait %.1f s, compute %.1f s, AU %.3f, loss %.4f, %s",
        epoch, row["samples"], row["skipped"], row["samples_per_s"], row["read_mbps"],
        row["throughput_mbps"], row["data_wait_s"], row["compute_s"], row["au"], row["loss"],
        task.describe(row),
    )  # fmt: skip
    if len(gathered) > 1:
        worst = min(range(len(gathered)), key=lambda r: gathered[r].summary["au"])
        log.info(
            "epoch %d over %d ranks: AU mean %.3f, worst %.3f (rank %d); longest data wait "
            "%.1f s; %d samples dropped to keep the ranks in step",
            epoch, len(gathered), row["au"], row["au_min"], worst, row["data_wait_max_s"],
            row["samples_dropped"],
        )  # fmt: skip


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
    """Write ``summary.json`` and log the storage and summary lines (rank 0); return the last row.

    ``summary.json``: this invocation's epochs (:func:`run_summary`), ``pretrained`` and the last
    epoch's ``metrics.csv`` row.

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
        p50, p99 = summary["ttfb_p50_ms"], summary["ttfb_p99_ms"]
        ttfb = (
            f"TTFB p50 {p50:.2f} ms p99 {p99:.2f} ms"
            if p50 == p50  # NaN: the client does not expose it (s3dlio)
            else "TTFB not exposed by the client"
        )
        log.info(
            "storage over epochs %d-%d: %d requests, %.0f bytes/request, %d retries, %s, "
            "errors: %s",
            summary["first_epoch"],
            summary["last_epoch_run"],
            summary["requests"],
            summary["bytes_per_request"],
            summary["retries"],
            ttfb,
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
    """Rows of epochs before ``before`` in a CSV a resumed run wrote earlier ([] if missing)."""
    if before <= 1 or not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) < before]
