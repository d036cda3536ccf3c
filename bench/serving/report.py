"""`make serve-bench`'s outputs: the console's table and the run's files.

``results.csv``, ``report.md``, ``latency.png``, ``throughput.png`` and ``settings.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from bench.ratios import ratio_text
from common.files import atomic_write_bytes, save_figure
from training.outputs import write_csv, write_yaml

COLUMNS = [
    "model", "task", "concurrency", "requests", "bad_share", "requests_per_s", "images_per_s",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "statuses", "wrong",
    "first_wrong", "worker_restarts", "server_queue_ms", "server_inference_ms", "handler_ms",
    "prediction_ms", "in_process_images_per_s", "in_process_batch_images_per_s", "threads",
    "served_vs_in_process", "cold_start_s", "repeat", "served_vs_in_process_median",
    "served_vs_in_process_min", "served_vs_in_process_max", "unstable",
]  # fmt: skip


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
    """Write ``results.csv``, ``report.md``, the two plots and ``settings.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows, COLUMNS)
    write_yaml(out / "settings.yaml", settings)
    plot_latency(rows, out / "latency.png")
    plot_throughput(rows, out / "throughput.png")
    atomic_write_bytes(out / "report.md", ("\n".join(report_lines(rows)) + "\n").encode("utf-8"))


def _pyplot() -> ModuleType:
    """matplotlib's pyplot, drawing into files only (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(rows: list[dict], path: Path) -> None:
    """Plot client latency (ms: p50, p90, p99) against concurrent requests, per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == m]
        for p, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            ax.plot([r["concurrency"] for r in mine], [r[f"latency_{p}_ms"] for r in mine], style,
                    label=f"{m} {p}")  # fmt: skip
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("client latency, ms")
    ax.set_title("latency vs concurrency")
    ax.legend()
    save_figure(fig, path)


def plot_throughput(rows: list[dict], path: Path) -> None:
    """Plot good images answered per second against concurrency, per model, in-process rate dotted.

    The in-process rate is at batch 1.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in dict.fromkeys(r["model"] for r in rows):
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
    save_figure(fig, path)


def report_lines(rows: list[dict]) -> list[str]:
    """The lines of ``report.md``: cold start, runs, what figures mean, wrong answers, plots."""
    return [
        "# Serving under load", "",
        f"TorchServe cold start (start to every model READY): {rows[0]['cold_start_s']:.1f} s."
        if rows else "", "",
        "| model | concurrency | run | requests | bad | images/s | p50 / p90 / p99 / max ms"
        " | statuses | wrong | worker restarts | server queue / inference ms | in-process"
        " images/s (batch 1 / archive's batch) | served / in-process (the run's; median and"
        " range of the level's runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_report_row(r) for r in rows],
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


def _report_row(r: dict) -> str:
    """One run's row of the report's table."""
    return (
        f"| {r['model']} | {r['concurrency']} | {r.get('repeat', 0) + 1} | {r['requests']} |"
        f" {r['bad_share']:g} |"
        f" {r['images_per_s']:.1f} | {r['latency_p50_ms']:.0f} / {r['latency_p90_ms']:.0f} /"
        f" {r['latency_p99_ms']:.0f} / {r['latency_max_ms']:.0f} | {r['statuses']} |"
        f" {r['wrong']} | {r['worker_restarts']} | {r['server_queue_ms']:.1f} /"
        f" {r['server_inference_ms']:.1f} | {r['in_process_images_per_s']:.1f} /"
        f" {r['in_process_batch_images_per_s']:.1f} | {r['served_vs_in_process']:.2f};"
        f" {ratio_text(r, 'served_vs_in_process')} |"
    )
