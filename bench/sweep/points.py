"""One sweep point: the configuration its simulated accelerators run, and its row.

A simulated accelerator is a rank in the benchmark's ``emulate`` mode (:mod:`bench.loading.case`):
its DataLoader workers (the profile's ``read_threads``) read real bytes of the dataset with the
access pattern, nothing is decoded (MLPerf does not decode), and each step sleeps the profile's
computation time; with ``sweep.sync: step`` the ranks wait for each other at every step, as
data-parallel training and DLIO do. Read-ahead is bounded (:data:`PREFETCH_FACTOR`,
:data:`SHUFFLE_BUFFER`, one batch per transfer) and the first step is left out
(``sweep.warmup_steps``, MLPerf's rule).
"""

from __future__ import annotations

import math
import socket
import time
import warnings
from pathlib import Path

from bench.loading.case import Case, run_case
from bench.loading.config import BenchConfig, BenchSection, bench_config
from bench.storages import prepare_fs
from bench.sweep.config import SweepConfig
from bench.sweep.limits import point_limit
from bench.sweep.workloads import Workload
from common.settings import replace
from training.data import class_names
from training.meter import percentile

#: Batches each DataLoader worker of a point reads ahead: one, so that when the measured steps
#: begin at most one batch per reader is in flight or waiting (PyTorch's default of 2, with
#: several batches per transfer, read gigabytes of unet3d before the clock started and
#: credited them to the measured steps).
PREFETCH_FACTOR = 1

#: Samples each reader of the streaming patterns (shards, objects) holds in a shuffle buffer:
#: none (a buffer of one). A buffer is filled before the first sample leaves it, so a buffer
#: of 64 read 64 samples per reader ahead of the clock; the epoch's shuffled shard (object)
#: order is the shuffle, as MLPerf's one-sample files are shuffled by file order.
SHUFFLE_BUFFER = 1

SWEEP_COLUMNS = [
    "workload", "accelerator", "storage", "access", "client_lib", "accelerators", "nodes",
    "repeat", "seed", "au", "au_min", "passed", "samples_per_s", "throughput_mbps",
    "train_io_mean_MB_per_second", "data_wait_p50_ms", "data_wait_p99_ms", "client_cpu_busy",
    "peak_rss_mib", "memory_available_share", "cache_share", "limit", "cache", "steps",
    "error",
]  # fmt: skip


def allow_readers_beyond_cores() -> None:
    """Silence PyTorch's warning of more DataLoader workers than cores (readers wait on storage)."""
    warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)


def workers_per_rank(cfg: SweepConfig, w: Workload) -> int:
    """DataLoader workers per simulated accelerator: ``sweep.workers``, -1: ``read_threads``."""
    return w.read_threads if cfg.sweep.workers < 0 else cfg.sweep.workers


def points_config(
    cfg: SweepConfig, w: Workload, root: Path, computation_time_s: float, largest: int
) -> BenchConfig:
    """The benchmark configuration every point runs.

    The dataset at ``root`` (VOC), the profile's batch size and readers with read-ahead bounded
    (:data:`PREFETCH_FACTOR`, one batch per transfer, :data:`SHUFFLE_BUFFER`), its computation time,
    the sweep's steps and sync, ranks up to ``largest``, no baselines.
    """
    workers = workers_per_rank(cfg, w)
    shard_mb = (
        w.samples_per_file * w.sample_bytes / 1e6
        if w.samples_per_file > 1
        else cfg.dataset.shard_size_mb
    )
    bench = BenchSection(
        decode=cfg.sweep.decode,
        computation_time_s=computation_time_s,
        steps=cfg.sweep.steps,
        warmup_steps=cfg.sweep.warmup_steps,
        sync=cfg.sweep.sync,
        baselines=False,
        peers=False,
        ranks=list(range(1, largest + 1)),
    )
    return replace(
        bench_config(cfg, bench),
        storage=replace(cfg.storage, type="fs", root=str(root.parent), prefixes=[root.name]),
        dataset=replace(
            cfg.dataset,
            format="voc",
            train_split="train",
            classes=[],
            limit=None,
            shard_size_mb=shard_mb,
        ),
        access=replace(cfg.access, shuffle_buffer=SHUFFLE_BUFFER),
        loader=replace(
            cfg.loader,
            batch_size=w.batch_size,
            num_workers=workers,
            prefetch_factor=PREFETCH_FACTOR,
            worker_batches=1,
        ),
    )


def epoch_steps(samples: int, w: Workload, accelerators: int, warmup_steps: int) -> int:
    """Steps per rank in one epoch of ``samples`` over ``accelerators`` less warm-up; >= 1."""
    return max(1, samples // (w.batch_size * accelerators) - warmup_steps)


def measure_step_time(cfg: SweepConfig) -> float:
    """The detector's mean training step here (s; 3 steps after 1 of warm-up, on ``data/bccd``)."""
    timing = bench_config(cfg, BenchSection(steps=3, warmup_steps=1, decode=True))
    target = prepare_fs(timing, shards=False)
    part = run_case(
        Case("train", "random", "fs", "-", 0), timing, target.source.storage, target.records,
        None, class_names(timing, target.records), pass_index=0, repeat=1,
    )  # fmt: skip
    seconds = part.row["compute_s"] / part.row["steps"]
    print(f"bccd: the detector's training step takes {seconds:.3f} s here")
    return seconds


def sweep_row(
    w: Workload, case: Case, repeat: int, cfg: BenchConfig, row: dict, steps: list, nodes: int
) -> dict:
    """A ``sweep.csv`` row from a point's row (:func:`bench.loading.case.combine`) and its steps.

    MB/s measured = bytes read / wall time (10^6 bytes/s); ``train_io_mean_MB_per_second`` is DLIO's
    figure, samples/s x the profile's mean sample size / 1024^2 (DLIO's ``statscounter.py``, what
    MLPerf Storage publishes); data wait per step p50 / p99 over every rank's steps; the client's
    figures and the limit the point shows (:func:`bench.sweep.limits.point_limit`).
    """
    waits = [s["data_wait_s"] for s in steps]
    passed = row["au"] >= w.au_threshold
    out = {
        "workload": w.name, "accelerator": w.accelerator, "storage": case.storage,
        "access": case.access, "client_lib": case.client_lib, "accelerators": case.ranks,
        "nodes": nodes, "repeat": repeat, "seed": cfg.train.seed, "au": row["au"],
        "au_min": row["au_min"], "passed": passed, "samples_per_s": row["samples_per_s"],
        "throughput_mbps": row["throughput_mbps"],
        "train_io_mean_MB_per_second": row["samples_per_s"] * w.sample_bytes / 2**20,
        "data_wait_p50_ms": percentile(waits, 50) * 1e3,
        "data_wait_p99_ms": percentile(waits, 99) * 1e3,
        "client_cpu_busy": row.get("client_cpu_busy", math.nan),
        "peak_rss_mib": row.get("peak_rss_mib", math.nan),
        "memory_available_share": row.get("memory_available_share", math.nan),
        "cache_share": row.get("cache_share", math.nan), "cache": row["cache"],
        "steps": row["steps"], "error": "",
    }  # fmt: skip
    out["limit"] = point_limit(out, passed) or ""
    return out


def summary_json(w: Workload, row: dict, facts: dict, started: float, ended: float) -> dict:
    """A point as DLIO's ``summary.json`` (``statscounter.py``) names its figures.

    One point is one measured block: every per-epoch list holds one value, every standard deviation
    is 0. This tool's own figures, which DLIO has no names for, are under ``measured``.
    """
    sps = row["samples_per_s"]
    return {
        "start": _iso(started),
        "end": _iso(ended),
        "num_accelerators": row["accelerators"],
        "num_hosts": row["nodes"],
        "hostname": socket.gethostname(),
        "workload": w.key,
        "metric": {
            "train_au_percentage": [row["au"] * 100],
            "train_au_mean_percentage": row["au"] * 100,
            "train_au_meet_expectation": "success" if row["passed"] else "fail",
            "train_au_stdev_percentage": 0.0,
            "train_throughput_samples_per_second": [sps],
            "train_throughput_mean_samples_per_second": sps,
            "train_throughput_stdev_samples_per_second": 0.0,
            "train_io_mean_MB_per_second": row["train_io_mean_MB_per_second"],
            "train_io_stdev_MB_per_second": 0.0,
        },
        "num_files_train": facts["samples"],
        "num_samples_per_file": 1,
        "host_cpu_count": facts["host_cores"],
        "host_memory_GB": [m / 2**30 for m in facts["host_memory_bytes"]],
        "measured": {
            "storage": row["storage"],
            "access": row["access"],
            "client_lib": row["client_lib"],
            "run": row["repeat"],
            "throughput_MB_per_second_10e6": row["throughput_mbps"],
            "au_worst_rank_percentage": _percent(row["au_min"]),
            "client_cpu_busy_percentage": _percent(row["client_cpu_busy"]),
            "cache_share_percentage": _percent(row["cache_share"]),
            "limit": row["limit"],
            "cache": row["cache"],
        },
    }


def _percent(share: float) -> float | None:
    """A share as a percentage; None (JSON's null) where it is unknown (NaN)."""
    return share * 100 if share == share else None


def _iso(t: float) -> str:
    """A wall-clock time (``time.time()``) as DLIO writes it, local ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
