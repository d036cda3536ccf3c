"""Write a benchmark run's results: CSVs, plots, a Markdown report and the console's text.

This module formats; the answers and verdicts come from :mod:`bench.loading.diagnosis`. Units: MB =
10^6 bytes, seconds.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.loading.diagnosis import (  # noqa: E402
    AU_THRESHOLD,
    BASELINE_KIND,
    MIN_BASELINE_S,
    Answer,
    answers,
    au_applies,
    baseline_measured,
    cores_possible,
    cpu_per_mb_applies,
    measured,
)
from bench.ratios import UNSTABLE_SPREAD, median_spread, passes, ratio_text  # noqa: E402
from common.files import atomic_write_bytes, save_figure  # noqa: E402
from training.outputs import write_csv, write_yaml  # noqa: E402

if TYPE_CHECKING:
    from bench.loading.baselines import BaselineResult
    from bench.loading.peers import PeerResult

#: The baseline's CPU figures in a results row (:meth:`bench.resources.CpuUse.figures`).
BASELINE_CPU_COLUMNS = [
    "baseline_cpu_ms_per_mb", "baseline_host_cpu_ms_per_mb", "baseline_host_busy_cores",
    "baseline_host_steal_cores",
]  # fmt: skip
RESULT_COLUMNS = [
    "config", "mode", "access", "storage", "client_lib", "workers", "ranks", "pass", "cache",
    "steps", "samples", "samples_per_s", "throughput_mbps", "au", "au_min", "data_wait_share",
    "data_wait_s", "data_wait_max_s", "compute_s", "wall_s", "bytes_read", "read_s", "read_mbps",
    "requests", "bytes_per_request",
    "retries", "ttfb_p50_ms", "ttfb_p99_ms", "errors", "peak_rss_mib",
    "cpu_ms_per_mb", "host_cpu_ms_per_mb", "host_busy_cores", "host_steal_cores",
    "baseline_mbps", "baseline_objects_per_s",
    *BASELINE_CPU_COLUMNS, "ratio_to_baseline", "peer_samples_per_s", "ratio_to_peer", "error",
    "baseline_s",  # added last, so that the columns before it keep their places
    "repeat", "ratio_to_baseline_median", "ratio_to_baseline_min", "ratio_to_baseline_max",
    "ratio_to_peer_median", "ratio_to_peer_min", "ratio_to_peer_max", "unstable",
    "samples_per_s_after_warmup",
]  # fmt: skip
STEP_COLUMNS = [
    "case", "pass", "rank", "step", "samples", "bytes_read", "read_s", "data_wait_s", "compute_s",
    "requests", "loss", "repeat",
]  # fmt: skip


def write_tables(out: Path, results: list[dict], steps: list[dict]) -> None:
    """Write ``results.csv`` and ``steps.csv`` atomically (after every pass: none is lost)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", results, RESULT_COLUMNS)
    write_csv(out / "steps.csv", steps, STEP_COLUMNS)


def write_report(
    out: Path, cfg_dict: dict, results: list[dict], steps: list[dict], extras: dict
) -> None:
    """Write every output file of a benchmark run into ``out`` (see README, "Benchmark")."""
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", cfg_dict)
    write_tables(out, results, steps)
    plot_throughput(measured(results), out / "throughput.png")
    plot_data_wait(steps, out / "data_wait.png")
    plot_au(measured(results), out / "au.png")
    atomic_write_bytes(out / "report.md", markdown(cfg_dict, results, extras).encode("utf-8"))


def _warm(results: list[dict]) -> list[dict]:
    """The last pass of each configuration (warm when passes > 1)."""
    last: dict[str, dict] = {}
    for row in passes(results):
        last[row["config"]] = row
    return list(last.values())


def plot_throughput(results: list[dict], path: Path) -> None:
    """Bar chart: MB/s per configuration (last pass), with the baseline as a tick."""
    rows = _warm(results)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    names = [r["config"] for r in rows]
    ax.barh(names, [r["throughput_mbps"] for r in rows], color="#4363d8", label="delivered MB/s")
    with_base = [r for r in rows if baseline_measured(r)]  # not too short to be a measurement
    if with_base:  # none with bench.baselines false (matplotlib cannot place an all-NaN series)
        ax.scatter(
            [r["baseline_mbps"] for r in with_base],
            [r["config"] for r in with_base],
            marker="|", s=200, color="black", label="raw baseline MB/s",
        )  # fmt: skip
    ax.set_xscale("log")  # baselines are often orders of magnitude above decode-bound rows
    ax.set_xlabel("MB/s (10^6 bytes/s), log scale")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax.set_title("Throughput per configuration (last pass)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_data_wait(steps: list[dict], path: Path) -> None:
    """Plot each configuration's per-step data wait (s) in its last pass (rank 0's steps)."""
    steps = [s for s in steps if s.get("rank", 0) == 0]
    last_pass: dict[str, int] = {}
    for s in steps:
        last_pass[s["case"]] = max(last_pass.get(s["case"], 0), s["pass"])
    fig, ax = plt.subplots(figsize=(10, 5))
    for case, p in last_pass.items():
        waits = [s["data_wait_s"] for s in steps if s["case"] == case and s["pass"] == p]
        ax.plot(range(len(waits)), waits, label=case, linewidth=1)
    ax.set_xlabel("measured step")
    ax.set_ylabel("data wait (s)")
    ax.set_title("Per-step data wait (last pass)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def plot_au(results: list[dict], path: Path) -> None:
    """Bar chart: accelerator utilisation per emulate/train configuration, MLPerf's 90% line."""
    rows = [r for r in _warm(results) if r["mode"] != "read"]
    fig, ax = plt.subplots(figsize=(10, 0.35 * max(1, len(rows)) + 1.5))
    ax.barh([r["config"] for r in rows], [r["au"] for r in rows], color="#3cb44b")
    ax.axvline(AU_THRESHOLD, color="red", linestyle="--", label="MLPerf Storage 90%")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AU = compute / wall")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax.set_title("Accelerator utilisation (last pass)")
    fig.tight_layout()
    save_figure(fig, path)


def _fmt(value, digits: int = 2) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


#: What a figure marked ``n/a`` in the table means, by column (:func:`table_notes`).
NA_NOTES = {
    "AU": "AU, AUmin n/a: read rows have no compute, so no accelerator to keep busy.",
    "CPU/MB": (
        "CPU/MB n/a: in train rows the model's forward and backward passes, not the loader,"
        " spend most of the CPU."
    ),
    "x base": (
        f"x base n/a: the raw baseline read for under {MIN_BASELINE_S * 1e3:.0f} ms, too short"
        " to be a measurement (`baseline_s` in results.csv); more `bench.read_steps` or a larger"
        " dataset give it time."
    ),
    "x base (mode)": (
        "x base n/a in emulate and train rows: their MB/s is set by the compute per step, not"
        " by the loader; the loader against the raw baseline is read mode's (results.csv keeps"
        " every row's ratio)."
    ),
}


def _marked(results: list[dict]) -> list[str]:
    """The columns of :data:`NA_NOTES` that have an ``n/a`` among ``results``' rows."""
    rows = measured(results)
    marked = {
        "AU": any(not au_applies(r) for r in rows),
        "CPU/MB": any(not cpu_per_mb_applies(r) for r in rows),
        "x base": any(
            not math.isnan(r.get("baseline_mbps", math.nan)) and not baseline_measured(r)
            for r in rows
        ),
        "x base (mode)": any(
            not math.isnan(r.get("baseline_mbps", math.nan)) and r.get("mode") != "read"
            for r in rows
        ),
    }
    return [column for column, any_marked in marked.items() if any_marked]


def table(results: list[dict]) -> str:
    """A short fixed-width table of every pass (its median repeat, :func:`passes`).

    Columns: config, cache, samples/s and MB/s (over all ranks), AU (mean over ranks, and the worst
    rank's), data-wait share (%), the loader's CPU ms per MB, and the ratios to the raw baseline and
    the peer (median over the repeats with their range; ``!``: spread over
    :data:`bench.ratios.UNSTABLE_SPREAD`). ``n/a``: meaningless for its row (:func:`table_notes`);
    ``–``: not measured.
    """
    header = (
        f"{'configuration':34} {'pass':>4} {'cache':5} {'img/s':>8} {'MB/s':>8} {'AU':>5} "
        f"{'AUmin':>5} {'wait%':>6} {'CPU/MB':>6} {'x base':>22} {'x peer':>17}"
    )
    lines = [header, "-" * len(header)]
    for r in passes(results):
        if r.get("error"):
            lines.append(f"{r['config']:34} {r['pass']:>4} FAILED: {r['error']}")
            continue
        au = _fmt(r["au"]) if au_applies(r) else "n/a"
        au_min = _fmt(r.get("au_min", r["au"])) if au_applies(r) else "n/a"
        cpu = _fmt(r["cpu_ms_per_mb"], 1) if cpu_per_mb_applies(r) else "n/a"
        has_base = not math.isnan(r.get("baseline_mbps", math.nan))
        ratio_applies = baseline_measured(r) and r["mode"] == "read"
        base = "n/a" if has_base and not ratio_applies else ratio_text(r, "ratio_to_baseline")
        lines.append(
            f"{r['config']:34} {r['pass']:>4} {r['cache'][:5]:5} {_fmt(r['samples_per_s'], 1):>8} "
            f"{_fmt(r['throughput_mbps']):>8} {au:>5} {au_min:>5} "
            f"{_fmt(100 * r['data_wait_share'], 0):>6} {cpu:>6} {base:>22} "
            f"{ratio_text(r, 'ratio_to_peer'):>17}"
        )
    return "\n".join(lines)


def table_notes(results: list[dict]) -> list[str]:
    """Why figures of :func:`table` are ``n/a``, one line per column that has one."""
    return [NA_NOTES[column] for column in _marked(results)]


def preface(cfg_dict: dict, results: list[dict]) -> str:
    """What the answers measure against: the emulated accelerator, the AU pass mark, read mode.

    Also the raw baselines of the storages in ``results``, and what cold and warm mean.
    """
    bench, batch = cfg_dict["bench"], cfg_dict["loader"]["batch_size"]
    seconds = bench["computation_time_s"]
    storages = dict.fromkeys(r["storage"] for r in results if r.get("storage") in BASELINE_KIND)
    baselines = "; ".join(f"{s}, {BASELINE_KIND[s]}" for s in storages) or "none"
    decoding = (
        "decoding the images as training does (`--set bench.decode=false` reads without decoding)"
        if bench["decode"]
        else "without decoding (`bench.decode: false`)"
    )
    return (
        f"The emulated accelerator computes for {seconds} s per step of {batch} samples per"
        f" rank (MLPerf Storage's emulation: it consumes up to {batch / seconds:.0f} samples/s"
        f" per rank); MLPerf Storage passes a training run whose accelerator utilisation"
        f" (AU = compute time / wall time) is at least {AU_THRESHOLD:.2f}. Read alone is read"
        f" mode: the loader with no compute, {decoding}. The raw baseline, measured right after"
        f" each pass over the same objects and as many bytes: {baselines}. Cold: every file"
        " evicted from the page cache before it is read; warm: the next pass. MB = 10^6 bytes."
    )


def answer_lines(answers_: list[Answer], width: int | None = None) -> list[str]:
    """The answers as Markdown bullets, or with ``width`` as plain text wrapped to that width."""
    lines = []
    for a in answers_:
        text = " ".join(a.sentences)
        if width is None:
            lines.append(f"- **{a.label}**: {text}")
        else:
            lines += ["", *textwrap.wrap(f"{a.label}: {text}", width, subsequent_indent="  ")]
    return lines


def console(cfg_dict: dict, results: list[dict], cores: int | None = None) -> str:
    """What ``make bench`` prints at the end: the answers, the table, its ``n/a`` notes."""
    width = 100
    lines = textwrap.wrap(preface(cfg_dict, results), width)
    lines += [*answer_lines(answers(results, cfg_dict["bench"]["decode"], cores), width), ""]
    lines += [table(results), *table_notes(results)]
    return "\n".join(lines)


def failures(results: list[dict]) -> list[str]:
    """The report's section on configurations that failed (none: no lines)."""
    failed = [r for r in results if r.get("error")]
    if not failed:
        return []
    lines = ["## Failed configurations", ""]
    lines += [f"- {r['config']} (pass {r['pass']}): {r['error']}" for r in failed]
    return [*lines, ""]


def markdown(cfg_dict: dict, results: list[dict], extras: dict, cores: int | None = None) -> str:
    """The report: answers, what ran, results table, failures, baselines, peers, plots.

    ``cores``: the machine's (default ``os.cpu_count()``).
    """
    bench = cfg_dict["bench"]
    lines = [
        "# Storage benchmark report",
        "",
        "## Answer",
        "",
        preface(cfg_dict, results),
        "",
        *answer_lines(answers(results, bench["decode"], cores)),
        "",
        *_results_section(cfg_dict, results),
        *failures(results),
        *baselines_section(extras.get("baselines", []), cores),
        "",
        *peers_section(bench, extras.get("peers", {}), extras.get("peer_errors", {})),
        "",
        "## Plots",
        "",
        "![throughput](throughput.png)",
        "",
        "![data wait](data_wait.png)",
        "",
        "![AU](au.png)",
        "",
    ]
    return "\n".join(lines)


def _results_section(cfg_dict: dict, results: list[dict]) -> list[str]:
    """The report's section on what ran and the table of every pass, with its ``n/a`` notes."""
    bench = cfg_dict["bench"]
    notes = table_notes(results)
    return [
        "## Results",
        "",
        f"Dataset: `{cfg_dict['storage']['root']}` split `{cfg_dict['dataset']['train_split']}`"
        f" (limit {cfg_dict['dataset']['limit']}); batch size {cfg_dict['loader']['batch_size']};"
        f" {bench['warmup_steps']} warm-up + {bench['steps']} measured steps per pass"
        f" ({bench['read_steps']} in read mode);"
        f" {bench['passes']} passes (first cold); rank counts {bench.get('ranks', [1])};"
        f" emulate compute {bench['computation_time_s']} s/step.",
        "",
        "MB/s are 10^6 bytes/s delivered to the loop (bytes read / wall time of the measured"
        " steps); with several ranks, samples/s and MB/s are over all of them, AU is the mean"
        " over the ranks (MLPerf Storage) and AUmin the worst rank's; AU = compute / wall"
        " (MLPerf Storage); CPU/MB = CPU ms per MB of the benchmark"
        " process and its DataLoader workers; x base = MB/s over the raw baseline's"
        " MB/s, measured right after the pass; x peer = samples/s over the peer's, measured"
        " right after that (warm read passes). Each pass ran"
        f" {bench.get('repeats', 1)} time(s), interleaved with its baseline and peer (A B A B);"
        " the table shows the median repeat's figures and each ratio's median over the repeats"
        f" with its range; `!`: the repeats spread more than {UNSTABLE_SPREAD:.0%}, unstable:"
        " the machine was busy, not a finding.",
        "",
        "```",
        table(results),
        "```",
        "",
        *([*(f"- {note}" for note in notes), ""] if notes else []),
    ]


def baselines_section(
    baselines: list[tuple[str, int, BaselineResult]], cores: int | None = None
) -> list[str]:
    """The report's section on the raw baselines: a table row per baseline, then its ``n/a`` notes.

    Args:
        baselines: ``(configuration, pass index, baseline measured right after that pass)``.
        cores: the machine's CPU cores (default ``os.cpu_count()``): busy cores above it are no
            measurement.

    Returns:
        Markdown lines, from the section's heading to its notes.
    """
    lines = [
        "## Baselines",
        "",
        "Each measured right after the pass it is compared with, over the same objects and as"
        " many epochs of them (cold: each file evicted from the page cache before it is read).",
        "",
        "CPU: busy cores of the whole machine while it ran, and CPU ms per MB of this process"
        " and of the whole machine (a local S3 server included); `results.csv` has the same"
        " figures for each configuration.",
        "",
        "| configuration | pass | baseline | objects | MB | seconds | objects/s | MB/s"
        " | busy cores | CPU ms/MB (process / machine) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    short = impossible = False
    for config, pass_index, b in baselines:
        row, too_short, too_many_cores = _baseline_row(config, pass_index, b, cores)
        lines.append(row)
        short, impossible = short or too_short, impossible or too_many_cores
    if short or impossible:
        lines.append("")
    if short:
        lines.append(
            f"- n/a: timed over less than {MIN_BASELINE_S * 1e3:.0f} ms, too short to be a"
            " measurement (start-up, and the CPU counters' 10 ms ticks); more `bench.read_steps`"
            " or a larger dataset give it time."
        )
    if impossible:
        lines.append(
            f"- busy cores n/a: more than the machine's {cores or os.cpu_count()} cores, the"
            " counters' error over a short window."
        )
    return lines


def _baseline_row(
    config: str, pass_index: int, b: BaselineResult, cores: int | None
) -> tuple[str, bool, bool]:
    """One baseline's table row, whether it was too short, whether it had too many busy cores."""
    cpu = b.cpu.figures(b.bytes)
    rates = [_fmt(b.objects_per_s, 1), _fmt(b.mbps), _fmt(cpu["host_busy_cores"])]
    per_mb = f"{_fmt(cpu['cpu_ms_per_mb'], 1)} / {_fmt(cpu['host_cpu_ms_per_mb'], 1)}"
    short = impossible = False
    if b.seconds < MIN_BASELINE_S:  # not a measurement
        short = True
        rates, per_mb = ["n/a"] * 3, "n/a"
    elif not cores_possible(cpu["host_busy_cores"], cores):
        impossible = True
        rates[2] = "n/a"
    row = (
        f"| {config} | {pass_index} | {b.name} ({b.threads} thread{'s' * (b.threads > 1)})"
        f" | {b.objects} | {_fmt(b.bytes / 1e6, 1)} | {_fmt(b.seconds, 3)}"
        f" | {' | '.join(rates)} | {per_mb} |"
    )
    return row, short, impossible


def peers_section(
    bench: dict, peers: dict[str, list[PeerResult]], peer_errors: dict[str, str]
) -> list[str]:
    """The report's section on the peer loaders: each comparison's samples/s, and the failed peers.

    Args:
        bench: the run's ``bench`` settings (``peers``, ``ranks``).
        peers: comparison → the peer measured right after each repeat of its pass (samples/s).
        peer_errors: comparison → why its peer failed.

    Returns:
        Markdown lines, from the section's heading to its last row.
    """
    lines = ["## Peers", ""]
    if bench["peers"] and 1 not in bench.get("ranks", [1]):
        lines += ["Not measured: peers are single-process loaders, measured when `bench.ranks`"
                  " has 1.", ""]  # fmt: skip
    lines += [
        "Each measured right after the warm read pass it is compared with, once per repeat.",
        "",
        "| comparison | peer | samples/s (median, range over repeats) |",
        "|---|---|---|",
    ]
    for name, runs in peers.items():
        median, low, high = median_spread([p.samples_per_s for p in runs])
        spread = f" ({_fmt(low, 1)}-{_fmt(high, 1)})" if len(runs) > 1 else ""
        lines.append(f"| {name} | {runs[0].name} | {_fmt(median, 1)}{spread} |")
    for name, error in peer_errors.items():
        lines.append(f"| {name} | failed: {error} | – |")
    return lines
