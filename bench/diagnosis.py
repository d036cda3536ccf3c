"""What a benchmark run's figures mean: the verdicts that ``report.md`` and the console state.

:mod:`bench.report` formats; this module decides, from the rows of ``results.csv``
(:data:`bench.report.RESULT_COLUMNS`). Units: MB = 10^6 bytes, seconds.
"""

from __future__ import annotations

import math
import os

#: MLPerf Storage's pass mark for accelerator utilisation: a training run passes when
#: AU = compute time / wall time is at least this (MLPerf Storage rules, Rules.md 3.3.2
#: "trainingAcceleratorUtilizationCheck"; the minimum is 90 % for the 3D U-Net and ResNet-50
#: training workloads, 70 % for CosmoFlow).
AU_THRESHOLD = 0.90


def measured(results: list[dict]) -> list[dict]:
    """The rows of passes that ran (not those of configurations that failed)."""
    return [r for r in results if not r.get("error")]


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
