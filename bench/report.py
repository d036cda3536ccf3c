"""Write a benchmark run's results: CSVs, plots, a Markdown report and a console table."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from common.files import (
    atomic_write_bytes,
    save_figure,  # noqa: E402
)
from training.outputs import write_csv, write_yaml  # noqa: E402

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
]  # fmt: skip
STEP_COLUMNS = [
    "case", "pass", "rank", "step", "samples", "bytes_read", "read_s", "data_wait_s", "compute_s",
    "requests", "loss",
]  # fmt: skip
#: MLPerf Storage's pass mark for accelerator utilisation (training workloads).
MLPERF_AU = 0.90


def write_tables(out: Path, results: list[dict], steps: list[dict]) -> None:
    """Write ``results.csv`` and ``steps.csv`` (each atomically): after every pass, so that a
    failure or an interruption later in the run loses none of the passes already measured."""
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


def measured(results: list[dict]) -> list[dict]:
    """The rows of passes that ran (not those of configurations that failed)."""
    return [r for r in results if not r.get("error")]


def _warm(results: list[dict]) -> list[dict]:
    """The last pass of each configuration (warm when passes > 1)."""
    last: dict[str, dict] = {}
    for row in results:
        last[row["config"]] = row
    return list(last.values())


def plot_throughput(results: list[dict], path: Path) -> None:
    """Bar chart: MB/s per configuration (last pass), with the baseline as a tick."""
    rows = _warm(results)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    names = [r["config"] for r in rows]
    ax.barh(names, [r["throughput_mbps"] for r in rows], color="#4363d8", label="delivered MB/s")
    with_base = [r for r in rows if not math.isnan(r.get("baseline_mbps", math.nan))]
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
    """Per-step data wait (seconds) of each configuration's last pass, one line each (rank 0's
    steps where several ranks read)."""
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
    ax.axvline(MLPERF_AU, color="red", linestyle="--", label="MLPerf Storage 90%")
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


def table(results: list[dict]) -> str:
    """A short fixed-width table of every pass: config, cache, samples/s and MB/s (over all its
    ranks), AU (the mean over ranks, and the worst rank's), data-wait share, the loader's CPU
    ms per MB and the ratios."""
    header = (
        f"{'configuration':34} {'pass':>4} {'cache':5} {'img/s':>8} {'MB/s':>8} {'AU':>5} "
        f"{'AUmin':>5} {'wait%':>6} {'CPU/MB':>6} {'x base':>6} {'x peer':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.get("error"):
            lines.append(f"{r['config']:34} {r['pass']:>4} FAILED: {r['error']}")
            continue
        lines.append(
            f"{r['config']:34} {r['pass']:>4} {r['cache'][:5]:5} {_fmt(r['samples_per_s'], 1):>8} "
            f"{_fmt(r['throughput_mbps']):>8} {_fmt(r['au']):>5} "
            f"{_fmt(r.get('au_min', r['au'])):>5} {_fmt(100 * r['data_wait_share'], 0):>6} "
            f"{_fmt(r['cpu_ms_per_mb'], 1):>6} {_fmt(r['ratio_to_baseline']):>6} "
            f"{_fmt(r['ratio_to_peer']):>6}"
        )
    return "\n".join(lines)


#: The benchmark's performance goals (the ratios it must reach), for :func:`goals`.
SHARDS_GOAL = 0.9
RANDOM_S3_GOAL = 0.9


def goals(results: list[dict], decode: bool, cores: int | None = None) -> list[str]:
    """The performance goals checked against this run's ``read`` rows, one line each.

    - sequential shards reach ``SHARDS_GOAL`` x the raw baseline's MB/s (fs ``cat``, s3 GET
      pool), per storage and cache state;
    - random over S3 (boto3) reaches ``RANDOM_S3_GOAL`` x the GET pool's objects/s;
    - boto3 loaders against s3torchconnector's datasets (``ratio_to_peer`` >= 1).

    With ``decode`` the first line says that the rows are decode-bound (:data:`DECODING_NOTE`).
    A goal that is not met says by how much and why, from the row's own figures (see
    :func:`_shortfall`: too short a pass, readers waiting on storage, or the loader's time per
    sample; and :func:`_cpu_split`: busy cores against CPU per MB, on a machine of ``cores``
    cores, by default this one's). Rows missing from the matrix are not judged.
    """
    cores = cores or os.cpu_count()
    reads = [
        r
        for r in measured(results)
        if r["mode"] == "read" and r.get("client_lib") in ("-", "boto3")
    ]
    mode = "read" + ("" if decode else ", bench.decode false")
    lines = []
    for r in [r for r in reads if r["access"] == "shards"]:
        ratio = r.get("ratio_to_baseline", math.nan)
        if math.isnan(ratio):
            continue
        verdict = "met" if ratio >= SHARDS_GOAL else "NOT met"
        line = (
            f"- {r['config']} ({r['cache']}, {mode}): {ratio:.2f}x the raw baseline's"
            f" MB/s (goal {SHARDS_GOAL}): {verdict}"
        )
        if ratio < SHARDS_GOAL and r["samples"]:
            line += ". " + _shortfall(r, decode) + _cpu_split(r, ratio, cores)
        lines.append(line)
    for r in [r for r in reads if r["access"] == "random" and r["storage"] == "s3"]:
        base = r.get("baseline_objects_per_s", math.nan)
        if math.isnan(base):
            continue
        ratio = r["samples_per_s"] / base
        verdict = "met" if ratio >= RANDOM_S3_GOAL else "NOT met"
        lines.append(
            f"- {r['config']} ({r['cache']}, {mode}): {ratio:.2f}x the boto3 GET pool's objects/s"
            f" (goal {RANDOM_S3_GOAL}): {verdict}"
        )
    for r in [r for r in reads if r["storage"] == "s3"]:
        ratio = r.get("ratio_to_peer", math.nan)
        if math.isnan(ratio):
            continue
        line = f"- {r['config']} vs s3torchconnector's dataset: {ratio:.2f}x"
        if ratio >= 1:
            line += ": as fast or faster"
        else:
            line += (
                f": {100 * (1 - ratio):.0f} % slower. Each boto3 GET costs more Python CPU than"
                " the CRT client's native request; where the CPU also decodes, that time comes"
                " out of decoding. `client_lib: s3torchconnector` runs the same loader on the"
                " CRT client (its rows in the table)"
            )
        lines.append(line)
    if not lines:
        return ["- no read rows with baselines or peers in this matrix"]
    if decode:  # said first: otherwise a decode-bound 0.01x reads as a storage verdict
        lines.insert(0, DECODING_NOTE)
    return lines


#: The first goal line of a run that decodes (``bench.decode: true``).
DECODING_NOTE = (
    "- decoding on: these read rows include JPEG decoding, which on a CPU bounds them far"
    " below what the storage delivers; the goals are about the read path, which"
    " `--set bench.decode=false` measures alone"
)


#: A measured pass shorter than this is dominated by start-up (worker processes, first request).
SHORT_PASS_S = 0.2


#: Readers that spent at least this share of a pass in storage requests were waiting on the
#: storage, not busy with per-sample work.
WAITING_SHARE = 0.5


def _shortfall(row: dict, decode: bool) -> str:
    """Why a shards row is below the goal, from its own figures: a pass too short to leave
    start-up behind; readers that spent most of the pass waiting in storage requests
    (``read_s`` over ``wall_s`` per reader, :data:`WAITING_SHARE`); or else the loader's time
    per sample against a baseline that has none."""
    per_sample_us = 1e6 / row["samples_per_s"]
    size_kb = row["bytes_read"] / row["samples"] / 1e3
    readers = max(int(row["workers"]), 1) * int(row.get("ranks", 1))
    read_share = row["read_s"] / (row["wall_s"] * readers) if row["wall_s"] > 0 else math.nan
    if row["wall_s"] < SHORT_PASS_S:
        return (
            f"The pass read {row['bytes_read'] / 1e6:.1f} MB in {row['wall_s'] * 1e3:.0f} ms"
            " from its first read: start-up (worker processes, each worker's first request, the"
            " shuffle buffer filling) weighs on so short a pass as much as reading does. More"
            " `bench.read_steps`, or a larger dataset (`make synth`) where a cold pass cannot"
            " evict before each read (remote storage: one epoch), measure the storage rather"
            " than the start-up"
        )
    if read_share >= WAITING_SHARE:
        together = readers * row["read_mbps"]
        line = (
            f"Its {readers} reader(s) spent {read_share:.0%} of the pass in storage requests,"
            f" at {row['read_mbps']:.0f} MB/s each while reading ({together:.0f} MB/s together;"
            f" baseline {row['baseline_mbps']:.0f} MB/s). "
        )
        if together < SHARDS_GOAL * row["baseline_mbps"]:
            return line + (
                "Fewer reads in flight than the baseline's: more DataLoader workers"
                " (`bench.worker_counts`) put more shard streams in flight"
            )
        return line + (
            "The storage serves them as fast as the baseline; what is lost is the time each"
            " reader spends on its samples between reads (reading and parsing take turns), and"
            " a server on the same machine competes with that work for the CPU"
        )
    work = "decoding, transforms, " if decode else ""
    return (
        f"Storage requests took {read_share:.0%} of its readers' time; the rest is per-sample"
        f" work: a {size_kb:.1f} kB sample every {per_sample_us:.0f} us ({work}tar parsing,"
        " sample dicts, batching, transfer from DataLoader workers), which caps it at"
        f" {size_kb * 1e3 / per_sample_us:.0f} MB/s on this machine; the baseline does no"
        f" per-sample work ({row['baseline_mbps']:.0f} MB/s)"
    )


#: A machine whose cores were busy or stolen at least this share of a pass was CPU-bound.
SATURATED_SHARE = 0.9


def _cpu_split(row: dict, ratio: float, cores: int | None) -> str:
    """The ratio to the baseline split into its two factors (see :mod:`bench.resources`):
    busy cores (the row's over the baseline's) x CPU per MB (the baseline's over the row's),
    both machine-wide, and what they mean; empty when the row has no CPU figures. The machine
    counts as CPU-bound when busy plus stolen cores reach :data:`SATURATED_SHARE` of ``cores``.
    """
    keys = ("host_busy_cores", "host_cpu_ms_per_mb", "cpu_ms_per_mb")
    ours = [row.get(k, math.nan) for k in keys]
    base = [row.get(f"baseline_{k}", math.nan) for k in keys]
    if any(math.isnan(v) or v <= 0 for v in ours + base):
        return ""
    busy, per_mb = ours[0] / base[0], base[1] / ours[1]
    steal = row.get("host_steal_cores", math.nan)
    stolen = f"; {steal:.2f} more taken by the hypervisor" if steal >= 0.05 else ""
    text = (
        f". CPU counters: {ratio:.2f}x = {busy:.2f} (cores busy, machine-wide: {ours[0]:.2f}"
        f" vs the baseline's {base[0]:.2f}{f' of {cores}' if cores else ''}{stolen})"
        f" x {per_mb:.2f} (CPU per MB, machine-wide: {ours[1]:.1f} vs {base[1]:.1f} ms; the"
        f" loader's processes {ours[2]:.1f}, the baseline's {base[2]:.1f} ms)"
    )
    reasons = []
    if busy < SHARDS_GOAL:
        reasons.append(
            "it kept fewer cores busy than the baseline: its readers waited (on storage"
            " requests, or for each other) more than the baseline's"
        )
    if per_mb < SHARDS_GOAL:
        reasons.append(f"it needs {1 / per_mb:.2f}x the raw read's CPU for the same bytes")
        used = ours[0] + (0.0 if math.isnan(steal) else steal)
        if cores and used >= SATURATED_SHARE * cores:
            reasons.append(
                f"the machine's {cores} cores were saturated (busy or stolen), so it cannot go"
                " faster here without less CPU per sample or more cores"
            )
    return text + (": " + "; ".join(reasons) if reasons else "")


def failures(results: list[dict]) -> list[str]:
    """The report's section on configurations that failed (none: no lines)."""
    failed = [r for r in results if r.get("error")]
    if not failed:
        return []
    lines = ["## Failed configurations", ""]
    lines += [f"- {r['config']} (pass {r['pass']}): {r['error']}" for r in failed]
    return [*lines, ""]


def markdown(cfg_dict: dict, results: list[dict], extras: dict) -> str:
    """The report: what ran, the results table, baselines, peers, the plots."""
    bench = cfg_dict["bench"]
    lines = [
        "# Storage benchmark report",
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
        " MB/s measured in the same run; x peer = samples/s over the peer's (warm read passes).",
        "",
        "```",
        table(results),
        "```",
        "",
        "## Performance goals",
        "",
        *goals(results, bench["decode"]),
        "",
        *failures(results),
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
    for config, pass_index, b in extras.get("baselines", []):
        cpu = b.cpu.figures(b.bytes)
        lines.append(
            f"| {config} | {pass_index} | {b.name} ({b.threads} thread{'s' * (b.threads > 1)})"
            f" | {b.objects} | {_fmt(b.bytes / 1e6, 1)} | {_fmt(b.seconds, 3)}"
            f" | {_fmt(b.objects_per_s, 1)} | {_fmt(b.mbps)} | {_fmt(cpu['host_busy_cores'])}"
            f" | {_fmt(cpu['cpu_ms_per_mb'], 1)} / {_fmt(cpu['host_cpu_ms_per_mb'], 1)} |"
        )
    lines += ["", "## Peers", ""]
    if bench["peers"] and 1 not in bench.get("ranks", [1]):
        lines += ["Not measured: peers are single-process loaders, measured when `bench.ranks`"
                  " has 1.", ""]  # fmt: skip
    lines += ["| comparison | peer | samples/s |", "|---|---|---|"]
    for name, p in extras.get("peers", {}).items():
        if p is None:
            from bench.peers import s3torchconnector_reason

            why = s3torchconnector_reason() or "not available"
            lines.append(f"| {name} | not measured: {why} | – |")
        else:
            lines.append(f"| {name} | {getattr(p, 'name', name)} | {_fmt(p.samples_per_s, 1)} |")
    for name, error in extras.get("peer_errors", {}).items():
        lines.append(f"| {name} | failed: {error} | – |")
    lines += [
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
