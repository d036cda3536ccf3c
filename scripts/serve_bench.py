"""How do the served models hold up under load?

    make archive && make serve-bench                 # every archive in model_store
    make serve-bench MODEL=detector REQUESTS=1000 CONCURRENCY=1,2,4,8,16 BAD=0.1

Starts TorchServe from the model store on free loopback ports (its cold start timed: from the
start to every model's workers READY), sends ``--requests`` requests per concurrency level to
each model (:mod:`bench.serve_load`: real images of the evaluation split, round robin; a share
``--bad`` of deliberately bad bodies, each of which must get its 4xx), reads TorchServe's own
metrics and the workers before and after, runs the same model in this process on the same
images right after each served run (``--repeats`` runs per level, the requests shared among
them: the served/in-process ratio is the median of the runs' ratios, with its range, flagged
unstable when it spreads more than 10 %), stops the server. Writes
``outputs/serve-bench/<timestamp>/`` (results.csv, report.md, latency.png, throughput.png) and
prints a table. Exit status: 0; 1 when an answer was wrong or a
worker restarted; 2 for a user error (one line).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import yaml

from bench.ratios import median_spread, ratio_text, unstable
from bench.serve_load import (
    InProcess,
    bad_bodies,
    good_bodies,
    schedule,
    send_all,
    server_metrics,
    summarize,
    worker_ids,
)
from cli.args import add_keys_argument
from common.errors import say_error
from common.files import save_figure
from common.process import free_ports
from serve.archive import archived_task
from serve.properties import BASE_CONFIG, ServeError, read_properties
from serve.torchserve import start_server, stop_server
from training.outputs import run_folder, write_csv, write_yaml

COLUMNS = [
    "model", "task", "concurrency", "requests", "bad_share", "requests_per_s", "images_per_s",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "statuses", "wrong",
    "first_wrong", "worker_restarts", "server_queue_ms", "server_inference_ms", "handler_ms",
    "prediction_ms", "in_process_images_per_s", "in_process_batch_images_per_s", "threads",
    "served_vs_in_process", "cold_start_s", "repeat", "served_vs_in_process_median",
    "served_vs_in_process_min", "served_vs_in_process_max", "unstable",
]  # fmt: skip
#: Images the in-process run takes (the first of the split): enough for a steady rate.
IN_PROCESS_IMAGES = 16
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-store", default="model_store", help="folder of *.mar archives")
    parser.add_argument("--models", default="", help="comma-separated model names; empty: all")
    parser.add_argument("--requests", type=int, default=1000, help="requests per concurrency")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per concurrency level, the requests shared among them, each followed by the "
        "in-process run (A B A B): the served/in-process ratio is their median and range",
    )
    parser.add_argument("--concurrency", default="8", help="comma-separated concurrency levels")
    parser.add_argument("--bad", type=float, default=0.0, help="share of bad bodies, 0 to 1")
    parser.add_argument("--out", default="outputs/serve-bench", help="parent of the run folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the server start")
    add_keys_argument(parser, config=False)
    return parser


class UserError(Exception):
    """A mistake the message explains."""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module doc for the exit status."""
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        store, models, levels = check_args(args)
        rows = run(args, store, models, levels)
    except (UserError, ServeError, FileNotFoundError) as exc:
        say_error(str(exc))
        return 2
    out = run_folder(args.out)
    write_outputs(out, vars(args), rows)
    print(table(rows))
    print(f"report: {out / 'report.md'}")
    bad = [r for r in rows if r["wrong"] or r["worker_restarts"]]
    return 1 if bad else 0


def check_args(args) -> tuple[Path, list[str], list[int]]:
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


def run(args, store: Path, models: list[str], levels: list[int]) -> list[dict]:
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
    """The rows of one model: per concurrency level, ``args.repeats`` runs (the level's
    requests shared among them), each followed by the model run in this process on the same
    images; every row of a level carries the median and range of its runs' ratios."""
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
    """``requests`` requests at ``level`` concurrent to the served model: its row's served
    figures, TorchServe's own per-request figures and whether a worker restarted."""
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
    """A function of a cumulative microsecond metric: its growth per request over the run, ms."""
    done = after.get("requests", 0) - before.get("requests", 0)

    def per(key: str) -> float:
        return (after.get(key, 0) - before.get(key, 0)) / done / 1e3 if done else float("nan")

    return per


def archive_handler_config(archive: Path, name: str) -> dict:
    """The archive's model-config YAML: ``batchSize`` and the ``handler:`` knobs, flattened."""
    with zipfile.ZipFile(archive) as zf:
        yamls = [n for n in zf.namelist() if n.endswith(".yaml") and "/" not in n]
        config = yaml.safe_load(zf.read(yamls[0])) if yamls else {}
    return {**(config or {}), **((config or {}).get("handler") or {})}


def table(rows: list[dict]) -> str:
    """The console's table."""
    lines = ["model        conc  run  images/s  p50 ms  p99 ms  statuses                 wrong  "
             "in-process  served/in-process (median, range)"]  # fmt: skip
    for r in rows:
        ratio = ratio_text(r, "served_vs_in_process") if r.get("repeat", 0) == 0 else ""
        lines.append(
            f"{r['model']:<12} {r['concurrency']:>4}  {r.get('repeat', 0) + 1:>3}  "
            f"{r['images_per_s']:>8.1f}  {r['latency_p50_ms']:>6.0f}  "
            f"{r['latency_p99_ms']:>6.0f}  {r['statuses']:<24} {r['wrong']:>5}  "
            f"{r['in_process_images_per_s']:>10.1f}  {ratio:>17}"
        )
    if any(r.get("unstable") for r in rows):
        lines.append("!: the runs' ratios spread more than 10 %: unstable, the machine was busy")
    return "\n".join(lines)


def write_outputs(out: Path, settings: dict, rows: list[dict]) -> None:
    """``results.csv``, ``report.md``, ``latency.png``, ``throughput.png``, ``settings.yaml``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.files import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows, COLUMNS)
    write_yaml(out / "settings.yaml", settings)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        for p, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            ax.plot([r["concurrency"] for r in mine], [r[f"latency_{p}_ms"] for r in mine], style,
                    label=f"{m} {p}")  # fmt: skip
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("client latency, ms")
    ax.set_title("latency vs concurrency")
    ax.legend()
    save_figure(fig, out / "latency.png")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        ax.plot([r["concurrency"] for r in mine], [r["images_per_s"] for r in mine], "o-",
                label=f"{m} served")  # fmt: skip
        ax.axhline(mine[0]["in_process_images_per_s"], ls=":", color=ax.lines[-1].get_color(),
                   label=f"{m} in-process, batch 1")  # fmt: skip
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("good images answered per second")
    ax.set_ylim(bottom=0)
    ax.set_title("throughput vs concurrency")
    ax.legend()
    save_figure(fig, out / "throughput.png")
    lines = [
        "# Serving under load", "",
        f"TorchServe cold start (start to every model READY): {rows[0]['cold_start_s']:.1f} s."
        if rows else "", "",
        "| model | concurrency | run | requests | bad | images/s | p50 / p90 / p99 / max ms"
        " | statuses | wrong | worker restarts | server queue / inference ms | in-process"
        " images/s (batch 1 / archive's batch) | served / in-process (the run's; median and"
        " range of the level's runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['concurrency']} | {r.get('repeat', 0) + 1} | {r['requests']} |"
            f" {r['bad_share']:g} |"
            f" {r['images_per_s']:.1f} | {r['latency_p50_ms']:.0f} / {r['latency_p90_ms']:.0f} /"
            f" {r['latency_p99_ms']:.0f} / {r['latency_max_ms']:.0f} | {r['statuses']} |"
            f" {r['wrong']} | {r['worker_restarts']} | {r['server_queue_ms']:.1f} /"
            f" {r['server_inference_ms']:.1f} | {r['in_process_images_per_s']:.1f} /"
            f" {r['in_process_batch_images_per_s']:.1f} | {r['served_vs_in_process']:.2f};"
            f" {ratio_text(r, 'served_vs_in_process')} |"
            for r in rows
        ],
        "",
        "Each level ran as interleaved runs (served, then the same model in this process on the"
        " same images: A B A B); `!`: the runs' ratios spread more than 10 %, unstable, the"
        " machine was busy.",
        "",
        "images/s: good images answered 200 per second of wall time; latency: every request, "
        "client side, send to last byte; server queue / inference: TorchServe's own "
        "ts_queue_latency_microseconds / ts_inference_latency_microseconds per request over "
        "the run. First wrong answers: "
        + ("; ".join(f"{r['model']}@{r['concurrency']}: {r['first_wrong']}" for r in rows
                     if r["first_wrong"]) or "none."),  # fmt: skip
        "",
        "![latency](latency.png)", "", "![throughput](throughput.png)",
    ]  # fmt: skip
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode("utf-8"))


if __name__ == "__main__":
    sys.exit(main())
