"""`make serve-bench`'s measurements: TorchServe on free loopback ports, loaded level by level.

Each model is loaded at each concurrency level in interleaved runs (served, then in this process: A
B A B); the server's metrics and workers are read before and after; the server is stopped.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import yaml

from bench.ratios import median_spread, unstable
from bench.serving.load import (
    InProcess,
    bad_bodies,
    good_bodies,
    schedule,
    send_all,
    server_metrics,
    summarize,
    worker_ids,
)
from common.errors import UserError
from common.process import free_ports
from serve.archive import archived_task
from serve.properties import BASE_CONFIG, read_properties
from serve.torchserve import start_server, stop_server

#: Images the in-process run takes (the first of the split): enough for a steady rate.
IN_PROCESS_IMAGES = 16
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def check_args(args: argparse.Namespace) -> tuple[Path, list[str], list[int]]:
    """The store, the models to load and the concurrency levels.

    Raises:
        UserError: no archive, an unknown model, a bad number.
    """
    store = Path(args.model_store)
    archives = sorted(p.stem for p in store.glob("*.mar"))
    if not archives:
        raise UserError(f"no archives in {store}: make archive first")
    models = [m.strip() for m in args.models.split(",") if m.strip()] or archives
    unknown = [m for m in models if m not in archives]
    if unknown:
        raise UserError(f"no {unknown[0]}.mar in {store}; there: {', '.join(archives)}")
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        raise UserError(
            f"--concurrency {args.concurrency!r}: whole numbers, e.g. 1,2,4,8"
        ) from None
    if not levels or min(levels) < 1 or args.requests < 1 or not 0 <= args.bad < 1:
        raise UserError("concurrency and requests must be >= 1, bad a share in [0, 1)")
    if not 1 <= args.repeats <= args.requests:
        raise UserError("repeats must be between 1 and the requests per level")
    return store, models, levels


def run(args: argparse.Namespace, store: Path, models: list[str], levels: list[int]) -> list[dict]:
    """Serve ``models`` only (a store of their archives), load them, measure; stop the server."""
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try:
        only = work / "store"
        only.mkdir()
        for name in models:
            (only / f"{name}.mar").symlink_to((store / f"{name}.mar").resolve())
        ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        print(f"starting TorchServe with {', '.join(models)} on ports {ports['inference']}...")
        start = time.perf_counter()
        info = start_server(
            only, work / "run", ports=ports, timeout_s=args.timeout, log=lambda _: None
        )
        cold = time.perf_counter() - start
        print(f"ready after {cold:.1f} s (cold start)")
        try:
            return [row for name in models for row in measure(args, store / f"{name}.mar", name,
                                                               info, levels, cold)]  # fmt: skip
        finally:
            stop_server(work / "run")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, archive: Path, name: str, info, levels: list[int], cold: float) -> list[dict]:
    """The rows of one model: per concurrency level, ``args.repeats`` runs sharing its requests.

    Each run is followed by the model in this process on the same images; every row of a level
    carries the median and range of its runs' ratios.
    """
    task = archived_task(archive)
    goods = good_bodies(task)
    handler = archive_handler_config(archive, name)
    max_request = int(read_properties(BASE_CONFIG).get("max_request_size", 6553500))
    bads = bad_bodies(goods[0].data, int(handler.get("max_image_pixels", 40_000_000)), max_request)
    batch = int(handler.get("batchSize", 1))
    local = InProcess(archive, task, [g.data for g in goods[:IN_PROCESS_IMAGES]])
    local.images_per_s(1)  # warm-up: the first run pays for lazy initialisation
    rows = []
    repeats = getattr(args, "repeats", 1)
    for level in levels:
        mine = []
        for repeat in range(repeats):
            share = args.requests // repeats + (repeat < args.requests % repeats)
            row = served_run(args, name, task, info, level, goods, bads, share)
            alone = local.images_per_s(1)  # right after the served run: A B A B
            batched = local.images_per_s(batch) if batch > 1 else alone
            row.update(
                repeat=repeat, in_process_images_per_s=alone,
                in_process_batch_images_per_s=batched, threads=torch.get_num_threads(),
                served_vs_in_process=row["images_per_s"] / alone if alone else float("nan"),
                cold_start_s=cold,
            )  # fmt: skip
            mine.append(row)
        median, low, high = median_spread([r["served_vs_in_process"] for r in mine])
        for row in mine:
            row.update(
                served_vs_in_process_median=median, served_vs_in_process_min=low,
                served_vs_in_process_max=high, unstable="in-process" if unstable(
                    median, low, high) else "",
            )  # fmt: skip
        rows += mine
    return rows


def served_run(args, name, task, info, level, goods, bads, requests: int) -> dict:
    """Send ``requests`` at ``level`` concurrency to the served model; the row's served figures.

    With TorchServe's own per-request figures, and whether a worker restarted.
    """
    before, workers = (
        server_metrics(info.metrics_url).get(name, {}),
        worker_ids(info.management_url, name),
    )
    bodies = schedule(goods, bads, requests, args.bad)
    samples, wall = send_all(task, info.prediction_url(name), bodies, level)
    after = server_metrics(info.metrics_url).get(name, {})
    served = summarize(samples, wall)
    per = per_request(before, after)
    print(f"{name} concurrency {level}: {served['images_per_s']:.1f} images/s, p50 "
          f"{served['latency_p50_ms']:.0f} ms, p99 {served['latency_p99_ms']:.0f} ms, "
          f"{served['statuses']}, {served['wrong']} wrong")  # fmt: skip
    return {
        "model": name, "task": task, "concurrency": level, "bad_share": args.bad, **served,
        "worker_restarts": int(worker_ids(info.management_url, name) != workers),
        "server_queue_ms": per("queue_us"), "server_inference_ms": per("inference_us"),
        "handler_ms": after.get("handler_ms", float("nan")),
        "prediction_ms": after.get("prediction_ms", float("nan")),
    }  # fmt: skip


def per_request(before: dict, after: dict):
    """A function of a cumulative microsecond metric: its growth per request over the run (ms)."""
    done = after.get("requests", 0) - before.get("requests", 0)

    def per(key: str) -> float:
        return (after.get(key, 0) - before.get(key, 0)) / done / 1e3 if done else float("nan")

    return per


def archive_handler_config(archive: Path, name: str) -> dict:
    """The archive's model-config YAML, ``handler:`` knobs flattened in (``batchSize``...)."""
    with zipfile.ZipFile(archive) as zf:
        yamls = [n for n in zf.namelist() if n.endswith(".yaml") and "/" not in n]
        config = yaml.safe_load(zf.read(yamls[0])) if yamls else {}
    return {**(config or {}), **((config or {}).get("handler") or {})}
