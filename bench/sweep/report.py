"""What a sweep prints and writes: a line per point, then its files.

``sweep.csv``, ``report.md`` (one answer per storage and access pattern with its limit, the
workload, MLPerf Storage's rules, every point), a DLIO-style ``summary.json`` per point, two plots
and the config.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from bench.ratios import UNSTABLE_SPREAD, median_spread, unstable
from bench.sweep.config import SweepConfig
from bench.sweep.limits import (
    CACHE_SHARE_LIMIT,
    CAP,
    CLIENT_CPU,
    CLIENT_MEMORY,
    CPU_BUSY_LIMIT,
    MEMORY_AVAILABLE_LIMIT,
    cache_served,
    limit_sentence,
)
from bench.sweep.points import PREFETCH_FACTOR, SWEEP_COLUMNS, summary_json, workers_per_rank
from bench.sweep.workloads import Workload
from common.files import atomic_write_bytes, save_figure
from training.outputs import write_csv, write_json, write_yaml

if TYPE_CHECKING:
    from bench.sweep.search import Search

#: The report says so when the worst rank's AU is more than this below the mean (MLPerf's
#: answer uses the mean; a gap this large means one rank's reads lagged the others').
WORST_GAP = 0.05


def accelerator_label(w: Workload) -> str:
    """A simulated accelerator of ``w`` for sentences: its kind (``b200``), or bccd's step time."""
    return "accelerator(s) with this machine's step time" if w.name == "bccd" else w.accelerator


def point_line(w: Workload, row: dict) -> str:
    """The console's line for a point as it is measured."""
    verdict = "passed" if row["passed"] else "failed"
    limit = f"; {row['limit']} limit" if row["limit"] else ""
    return (
        f"{w.name} {row['storage']}/{row['access']}: {row['accelerators']} accelerator(s), "
        f"run {row['repeat'] + 1}: AU {row['au']:.2f} (worst rank {row['au_min']:.2f}), "
        f"{row['samples_per_s']:,.0f} samples/s, {row['throughput_mbps']:,.1f} MB/s, client "
        f"CPU {_share(row['client_cpu_busy'])} busy: {verdict}{limit}"
    )


def limit_kind(search: Search, facts: dict) -> str:
    """The search's limit; the cap of an ``auto`` launch (sized by the memory) is client memory."""
    kind = search.result.limit
    if kind == CAP and facts.get("sizing") is not None:
        return CLIENT_MEMORY
    return kind


def answer_line(w: Workload, search: Search, facts: dict) -> str:
    """The report's and console's sentence for a search: the answer, its figures, what ran out."""
    head = f"- {search.storage}, {search.access}:"
    if search.error:
        return f"{head} no answer: {search.error}"
    if search.refused:
        unmet = ", ".join(r.name for r in search.rules if not r.met)
        return f"{head} no result: MLPerf Storage v3.0's rules not met ({unmet}; see below)."
    result, acc = search.result, accelerator_label(w)
    threshold = f"AU >= {w.au_threshold:.0%} on {w.name}"
    kind = limit_kind(search, facts)
    sizing = facts.get("sizing")
    reason = ""
    if kind == CLIENT_MEMORY and result.limit == CAP:
        reason = sizing.sentence()
    elif kind == CAP and facts.get("points"):
        reason = f"the largest of sweep.points {facts['points']}"
    limit = limit_sentence(kind, result.limit_at, facts["nodes"], reason=reason)
    if result.answer == 0:
        first = min(result.points, key=lambda p: p.accelerators)
        return (
            f"{head} not even {first.accelerators} simulated {acc} at {threshold}"
            f" (AU {first.au:.2f}). {limit}{shared_cores(search, kind, facts)}"
        )
    runs = search.runs
    sps, low, high = median_spread([r["samples_per_s"] for r in runs])
    mbps = statistics.median(r["throughput_mbps"] for r in runs)
    dlio = statistics.median(r["train_io_mean_MB_per_second"] for r in runs)
    au = statistics.median(r["au"] for r in runs)
    worst = min(r["au_min"] for r in runs)
    per_node = result.answer // facts["nodes"]
    line = (
        f"{head} {result.answer} simulated {acc} ({per_node} per client node) at {threshold}:"
        f" {sps:,.0f} samples/s, {mbps:,.1f} MB/s measured, {dlio:,.1f} MiB/s as DLIO reports"
        f" it (AU {au:.2f}; median of {len(runs)} run(s))."
    )
    if au - worst > WORST_GAP:
        line += f" The worst rank's AU was {worst:.2f}: one rank's reads lagged."
    if len(runs) > 1:
        mean = statistics.mean(r["samples_per_s"] for r in runs)
        line += f" Runs {low:,.0f}-{high:,.0f} samples/s (mean {mean:,.0f}, MLPerf's figure)" + (
            f": they spread more than {UNSTABLE_SPREAD:.0%}, unstable: the machine was"
            " busy, so the answer is not a finding."
            if unstable(sps, low, high)
            else "."
        )
    if statistics.mean(r["au"] for r in runs) < w.au_threshold:
        line += " Its runs averaged below the threshold: the boundary is noisy here."
    if any(cache_served(r) for r in runs):
        line += (
            f" More than {CACHE_SHARE_LIMIT:.0%} of the bytes came from the page cache: this"
            " answer measured memory, not the storage."
        )
    line += f" {limit}{shared_cores(search, kind, facts)}"
    if search.repeat_error:
        line += f" A run at the answer failed: {search.repeat_error}"
    return line


def shared_cores(search: Search, kind: str, facts: dict) -> str:
    """A sentence for a client CPU limit where a local S3 server shares its cores; else ``""``."""
    if kind == CLIENT_CPU and search.storage == "s3" and facts.get("local_s3"):
        return (
            " The local S3 server started for the sweep runs on these cores too: with a remote"
            " endpoint (S3_ENDPOINT) the client has them to itself."
        )
    return ""


def write_outputs(
    out: Path, cfg: SweepConfig, rows: list[dict], searches: list[Search], facts: dict
) -> None:
    """Write ``sweep.csv``, ``report.md``, ``points/*/summary.json``, two plots and ``config.yaml``.

    Each file is written atomically.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", cfg.to_dict())
    write_csv(out / "sweep.csv", rows, SWEEP_COLUMNS)
    w = facts["workload"]
    for row in rows:
        name = f"{row['storage']}-{row['access']}-{row['accelerators']}acc-run{row['repeat'] + 1}"
        summary = summary_json(w, row, facts, row["started"], row["ended"])
        write_json(out / "points" / name / "summary.json", summary)
    if rows:
        plot(rows, w, out)
    text = "\n".join(report_lines(cfg, rows, searches, facts)) + "\n"
    atomic_write_bytes(out / "report.md", text.encode("utf-8"))


def report_lines(
    cfg: SweepConfig, rows: list[dict], searches: list[Search], facts: dict
) -> list[str]:
    """The lines of ``report.md``."""
    w = facts["workload"]
    lines = [
        f"# How many simulated {accelerator_label(w)} can this storage keep busy? ({w.name})",
        "",
        *[answer_line(w, s, facts) for s in searches],
        "",
        '## What "limit" means',
        "",
        "Each answer names what ran out at the first count that failed (or at the answer, when"
        " the client ran out while it still passed): **the storage** (the AU fell while the"
        f" client had headroom: its cores below {CPU_BUSY_LIMIT:.0%} busy including steal, its"
        f" available memory above {MEMORY_AVAILABLE_LIMIT:.0%}), **the client's CPU** or"
        " **the client's memory** (then the storage was not measured to its end: add client"
        " nodes), or **the cap** (every count up to the most this launch runs passed).",
        "",
        "## Workload",
        "",
        workload_paragraph(cfg, w, facts),
        "",
        "MB/s measured = bytes read / wall time (10^6 bytes/s); DLIO's"
        " `train_io_mean_MB_per_second` = samples/s x the profile's mean sample size / 1024^2,"
        " the figure MLPerf Storage publishes (each point's `points/*/summary.json` has DLIO's"
        " field names).",
        "",
        f"## MLPerf Storage v3.0's rules ({cfg.sweep.rules})",
        "",
        *[r.line() for r in facts["before_rules"]],
        *[f"{r.line()} ({s.storage}, {s.access})" for s in searches for r in s.rules],
        "",
        "## Points",
        "",
        "| storage | access | accelerators | per node | run | AU | AU worst | samples/s | MB/s"
        " | DLIO MiB/s | data wait p50 / p99 ms | client CPU | cache share | limit | cache |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_point_row(r) for r in rows],
        "",
    ]
    if rows:
        lines += [
            "![AU](au_vs_accelerators.png)",
            "",
            "![throughput](throughput_vs_accelerators.png)",
            "",
        ]
    return lines


def workload_paragraph(cfg: SweepConfig, w: Workload, facts: dict) -> str:
    """The report's paragraph on what every point ran.

    The workload's profile, the accelerators' step, the dataset, the counts swept on which client
    nodes, the steps, and how cold the reads were.

    Args:
        cfg: the sweep's settings.
        w: its workload.
        facts: :func:`bench.sweep.run.run_sweep`'s (``computation_time_s`` in seconds,
            ``host_memory_bytes`` in bytes).
    """
    sync = (
        "wait for each other at every step"
        if cfg.sweep.sync == "step"
        else "step on their own (sweep.sync: none)"
    )
    largest = _counts(cfg, facts)
    return (
        f"`{w.key}` ({w.division}) from {w.source}: samples of {_size(w.sample_bytes)} mean,"
        f" batch {w.batch_size}, {workers_per_rank(cfg, w)} DataLoader worker(s) per"
        f" accelerator reading {PREFETCH_FACTOR} batch ahead each,"
        f" {facts['computation_time_s']:.4g} s of computation per step, AU threshold"
        f" {w.au_threshold:.0%}; decoding {'on' if cfg.sweep.decode else 'off (as MLPerf)'};"
        f" the accelerators {sync}. Dataset: {facts['samples']:,} samples"
        f" at `{facts['dataset']}`. {largest[0].upper()}{largest[1:]} on {facts['nodes']}"
        f" client node(s) ({', '.join(str(c) for c in facts['host_cores'])} cores,"
        f" {', '.join(f'{m / 2**30:.0f}' for m in facts['host_memory_bytes'])} GiB);"
        f" {_steps(cfg)} per point; every point reads cold (each file evicted from the page"
        " cache before it is read, where this machine holds the files; otherwise the cache"
        " may serve reads: the `cache` column says which, and `cache share` how much did)."
    )


def _counts(cfg: SweepConfig, facts: dict) -> str:
    """The accelerator counts the sweep ran, with how an ``auto`` launch was sized (report text)."""
    sizing = facts.get("sizing")
    largest = (
        f"up to {facts['largest']} accelerator(s)"
        if not cfg.sweep.points
        else f"the counts {cfg.sweep.points}"
    )
    if sizing is not None and not cfg.sweep.points:
        largest += f" ({sizing.sentence()})"
    return largest


def _steps(cfg: SweepConfig) -> str:
    """The steps of every point, for the report."""
    left_out = f"{cfg.sweep.warmup_steps} step(s) left out"
    if cfg.sweep.rules == "closed":
        return f"one epoch per rank ({left_out})"
    return f"{left_out} and {cfg.sweep.steps} measured per rank"


def _point_row(r: dict) -> str:
    """One row of the report's table of points."""
    return (
        f"| {r['storage']} | {r['access']} | {r['accelerators']}"
        f" | {r['accelerators'] // r['nodes']} | {r['repeat'] + 1} | {r['au']:.3f}"
        f" | {r['au_min']:.3f} | {r['samples_per_s']:,.1f} | {r['throughput_mbps']:,.1f}"
        f" | {r['train_io_mean_MB_per_second']:,.1f} | {r['data_wait_p50_ms']:.1f} /"
        f" {r['data_wait_p99_ms']:.1f} | {_share(r['client_cpu_busy'])}"
        f" | {_share(r['cache_share'])} | {r['limit'] or '-'} | {r['cache']} |"
    )


def _share(value: float) -> str:
    """A share as a percentage, ``n/a`` where unknown."""
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.0%}")
    )


def _size(nbytes: float) -> str:
    """A sample size for the report: kB below 1 MB, MB above (10^3, 10^6 bytes)."""
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


def plot(rows: list[dict], w: Workload, out: Path) -> None:
    """Plot AU (mean; worst rank dotted) and MB/s against accelerators, per storage and access.

    Each count's first run is plotted.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    first = [r for r in rows if r["repeat"] == 0]
    for name, key, label in (
        ("au_vs_accelerators.png", "au", "AU over the accelerators (mean; worst dotted)"),
        ("throughput_vs_accelerators.png", "throughput_mbps", "MB/s measured"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for storage, access in dict.fromkeys((r["storage"], r["access"]) for r in first):
            mine = sorted(
                (r for r in first if (r["storage"], r["access"]) == (storage, access)),
                key=lambda r: r["accelerators"],
            )
            xs = [r["accelerators"] for r in mine]
            (line,) = ax.plot(xs, [r[key] for r in mine], "o-", label=f"{storage}/{access}")
            if key == "au":
                ax.plot(xs, [r["au_min"] for r in mine], ":", color=line.get_color())
        if key == "au":
            threshold = f"threshold {w.au_threshold:.0%}"
            ax.axhline(w.au_threshold, color="red", linestyle="--", label=threshold)
            ax.set_ylim(0, 1.05)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole accelerators
        ax.set_xlabel(f"simulated {w.accelerator} (ranks)")
        ax.set_ylabel(label)
        ax.set_title(f"{w.name}: {label}")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out / name)
