"""What a benchmark run's figures mean: the answers that ``report.md`` and the console lead with.

From the rows of ``results.csv`` (:data:`bench.loading.report.RESULT_COLUMNS`), per storage and
access pattern (:func:`answers`): whether the loader keeps the emulated accelerator at or above
:data:`AU_THRESHOLD`, its samples/s and MB/s read alone, against the raw baseline, and what limits
it (:func:`limit`); and which figures mean nothing for a row (:func:`au_applies`,
:func:`cpu_per_mb_applies`, :func:`baseline_measured`, :func:`cores_possible`). Units: MB = 10^6
bytes, seconds, samples/s; a "reader" is a DataLoader worker (or the main process with none) of one
rank.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from bench.ratios import fmt_ratio, passes, unstable

#: MLPerf Storage's pass mark for accelerator utilisation: a training run passes when
#: AU = compute time / wall time is at least this (MLPerf Storage rules, Rules.md 3.3.2
#: "trainingAcceleratorUtilizationCheck"; the minimum is 90 % for the 3D U-Net and ResNet-50
#: training workloads, 70 % for CosmoFlow).
AU_THRESHOLD = 0.90

#: A raw baseline timed over less than this (seconds) is not a measurement: over a few
#: milliseconds its MB/s rests on the start of its threads, the first open or connection and
#: the scheduler (one preemption on a shared machine costs milliseconds), and its CPU figures
#: are a handful of the kernel's 10 ms per-process clock ticks (USER_HZ = 100; see
#: :mod:`bench.resources`); 0.1 s is ten ticks. Its MB/s, the ratio to it and its CPU figures
#: are marked ``n/a``.
MIN_BASELINE_S = 0.1

#: A measured pass shorter than this (seconds) is dominated by start-up (DataLoader worker
#: processes, each worker's first request, the shuffle buffer filling): what limits it is not
#: told (the project's choice, from passes of the embedded dataset on a 2-core machine).
SHORT_PASS_S = 0.2

#: Readers that spent at least this share of a pass inside storage requests were waiting on
#: the storage rather than busy with per-sample work (the project's choice: most of the time).
WAITING_SHARE = 0.5

#: A machine whose cores were busy or stolen by the hypervisor for at least this share of a
#: pass was CPU-bound (the project's choice, as the README's "CPU: busy or waiting?").
SATURATED_SHARE = 0.9

#: In the CPU split of a ratio to the baseline (busy cores x CPU per MB, see
#: :mod:`bench.resources`), a factor under this is one that loses against the baseline (the
#: project's choice: a 10 % margin over the counters' error on passes of a second or more).
SPLIT_LOSES = 0.9

#: Busy cores up to this share above the machine's count are the counters' error on a full
#: machine (10 ms process ticks, samples every 50 ms, interpolated: see :mod:`bench.resources`,
#: whose README section allows "a few percent"); beyond it a figure of busy cores is not a
#: measurement and is marked ``n/a`` (:func:`cores_possible`).
CORES_TOLERANCE = 0.05

#: On a saturated machine, a loader whose processes spent less than this share of the
#: machine's CPU per MB shares the limit with other processes (a local S3 server on the same
#: cores), and the answer says so (the project's choice: most of it).
CLIENT_SHARE = 0.5

#: What limits a ``read`` pass (:class:`Limit`'s ``kind``).
STORAGE = "storage requests"
CLIENT_CPU = "client CPU"
DECODING = "decoding"
UNDETERMINED = "undetermined"

#: What the raw baseline of each storage does (README, "Baselines, measured in the same run").
BASELINE_KIND = {
    "fs": "reading the same files front to back, as `cat` does",
    "s3": "parallel boto3 GETs of the same objects",
}


def measured(results: list[dict]) -> list[dict]:
    """The rows of passes that ran (not those of configurations that failed)."""
    return [r for r in results if not r.get("error")]


def _nan(row: dict, key: str) -> float:
    value = row.get(key, math.nan)
    return math.nan if value is None or value == "" else float(value)


def au_applies(row: dict) -> bool:
    """Whether the row's AU means anything (``read`` rows have no compute: their AU is 0)."""
    return row.get("mode") != "read"


def cpu_per_mb_applies(row: dict) -> bool:
    """Whether the row's CPU ms per MB is the loader's (not in ``train`` rows: the model's)."""
    return row.get("mode") != "train"


def baseline_measured(row: dict) -> bool:
    """Whether the row has a raw baseline timed at least :data:`MIN_BASELINE_S`.

    Rows without ``baseline_s`` (older results) count as measured when they have a baseline MB/s.
    """
    if math.isnan(_nan(row, "baseline_mbps")):
        return False
    seconds = _nan(row, "baseline_s")
    return math.isnan(seconds) or seconds >= MIN_BASELINE_S


def cores_possible(busy_cores: float, cores: int | None = None) -> bool:
    """Whether ``busy_cores`` is at most ``cores``, give or take :data:`CORES_TOLERANCE`.

    ``busy_cores`` is busy CPU seconds per second, machine-wide; ``cores`` defaults to
    ``os.cpu_count()``. More is the counters' error over too short a window. NaN is not possible.
    """
    cores = cores or os.cpu_count()
    return not math.isnan(busy_cores) and (
        cores is None or busy_cores <= cores * (1 + CORES_TOLERANCE)
    )


@dataclass(frozen=True)
class Limit:
    """What limits one ``read`` pass.

    Attributes:
        kind: :data:`STORAGE`, :data:`CLIENT_CPU`, :data:`DECODING` or :data:`UNDETERMINED`.
        text: the sentence that says so, with the figures behind it.
    """

    kind: str
    text: str


@dataclass(frozen=True)
class Answer:
    """The answer for one storage, access pattern, client library, worker and rank count.

    Attributes:
        label: which configuration, e.g. ``s3 (boto3), shards, 2 workers``.
        au_met: whether every emulate pass kept the accelerator at or above :data:`AU_THRESHOLD`;
            None when no emulate pass ran.
        limits: what limits each ``read`` pass, by pass (``cold``, ``warm``).
        sentences: the answer in plain sentences, in the order to print them.
    """

    label: str
    au_met: bool | None
    limits: dict[str, Limit] = field(default_factory=dict)
    sentences: list[str] = field(default_factory=list)


def answers(results: list[dict], decode: bool, cores: int | None = None) -> list[Answer]:
    """One :class:`Answer` per storage, library, pattern, worker and rank count, in run order.

    Args:
        results: the run's rows (``results.csv``), failed ones included.
        decode: the run decoded the images (``bench.decode``).
        cores: the machine's cores (default ``os.cpu_count()``).
    """
    groups: dict[tuple, list[dict]] = {}
    for row in passes(results):  # each pass's median repeat, with its ratios' medians
        key = tuple(row.get(k) for k in ("storage", "client_lib", "access", "workers", "ranks"))
        groups.setdefault(key, []).append(row)
    return [_answer(rows, decode, cores) for rows in groups.values()]


def label(row: dict) -> str:
    """A row's configuration without its mode, e.g. ``s3 (boto3), random, 2 workers, 4 ranks``."""
    lib = row.get("client_lib", "-")
    text = row["storage"] + (f" ({lib})" if lib not in ("-", "", None) else "")
    workers = int(row.get("workers", 0))
    text += f", {row['access']}, {workers} worker{'s' * (workers != 1)}"
    ranks = int(row.get("ranks", 1) or 1)
    return text + (f", {ranks} ranks" if ranks > 1 else "")


def _passes(rows: list[dict], mode: str) -> list[tuple[str, dict]]:
    """The first (cold) and last (warm) pass of ``mode`` among ``rows``, named."""
    mine = sorted((r for r in rows if r.get("mode") == mode), key=lambda r: int(r["pass"]))
    picked = mine[:1] + mine[-1:] if len(mine) > 1 else mine
    return [(str(r.get("cache", "")).split(" ")[0] or f"pass {r['pass']}", r) for r in picked]


def _answer(rows: list[dict], decode: bool, cores: int | None) -> Answer:
    name = label(rows[0])
    ok = measured(rows)
    failed = [r for r in rows if r.get("error")]
    sentences = [
        f"Its {r['mode']} pass {r['pass']} failed: {r['error']}."
        for r in failed
        if not any(f["mode"] == r["mode"] and int(f["pass"]) < int(r["pass"]) for f in failed)
    ]  # a configuration stops at its first failed pass: say that one
    if not ok:
        return Answer(name, None, {}, sentences)
    emulate, train, read = (_passes(ok, m) for m in ("emulate", "train", "read"))
    au_met, accelerator = _accelerator(emulate)
    sentences.insert(0, accelerator)
    limits = {}
    if read:
        sentences.append(_delivered(read))
        limits = {p: limit(r, decode, cores) for p, r in read}
        kinds = {lim.kind for lim in limits.values()}
        if len(kinds) == 1 and len(limits) > 1:  # the same limit: the last pass's figures
            last, lim = list(limits.items())[-1]
            sentences.append(f"Cold and warm alike; {last}: {lim.text}")
        else:
            sentences += [f"{p.capitalize()}: {lim.text}" for p, lim in limits.items()]
    else:
        sentences.append(
            "Not read alone (`bench.modes` has no read): its samples/s, MB/s, raw ceiling and"
            " limit are measured in read mode."
        )
    if train:
        sentences.append(_trained(train))
    return Answer(name, au_met, limits, sentences)


def _accelerator(emulate: list[tuple[str, dict]]) -> tuple[bool | None, str]:
    """Whether the emulate passes kept the accelerator at the pass mark, and the sentence."""
    if not emulate:
        return None, "The emulated accelerator was not run (`bench.modes` has no emulate)."
    mark = f"MLPerf Storage's pass mark of {AU_THRESHOLD:.2f}"
    figures = ", ".join(f"{r['au']:.2f} {p}" for p, r in emulate)
    met = [p for p, r in emulate if r["au"] >= AU_THRESHOLD]
    if len(met) == len(emulate):
        text = f"Keeps the emulated accelerator busy: AU {figures}, at or above {mark}."
    elif not met:
        wait = emulate[-1][1].get("data_wait_share", math.nan)
        text = f"Does not keep the emulated accelerator busy: AU {figures}, below {mark}"
        text += "." if math.isnan(wait) else f"; it waited for data {wait:.0%} of the time."
    else:
        text = f"Keeps the emulated accelerator busy {' and '.join(met)} only: AU {figures}"
        text += f" ({mark})."
    for p, r in emulate:
        worst = _nan(r, "au_min")
        if int(r.get("ranks", 1) or 1) > 1 and worst < AU_THRESHOLD <= r["au"]:
            text += f" Its slowest rank's AU {p}: {worst:.2f}."
    return len(met) == len(emulate), text


def _trained(train: list[tuple[str, dict]]) -> str:
    """The sentence on the real model (``train`` mode), from its last pass."""
    p, r = train[-1]
    text = f"Training the real model: {_num(r['samples_per_s'])} samples/s at AU {r['au']:.2f} {p}"
    if r["au"] >= AU_THRESHOLD:
        return text + ", its compute, not the data, set the pace."
    return text + f", waiting for data {r.get('data_wait_share', math.nan):.0%} of the time."


def _delivered(read: list[tuple[str, dict]]) -> str:
    """The sentence on what the loader reads alone, per pass, against the raw baseline."""
    rates = [
        f"{_num(r['samples_per_s'])} samples/s, {_num(r['throughput_mbps'])} MB/s {p}"
        for p, r in read
    ]
    rows = [r for _, r in read]
    if all(math.isnan(_nan(r, "baseline_mbps")) for r in rows):
        return f"Read alone (read mode): {' and '.join(rates)}; no raw baseline measured."
    if all(not math.isnan(_nan(r, "baseline_mbps")) and not baseline_measured(r) for r in rows):
        times = sorted(_nan(r, "baseline_s") for r in rows)
        took = " to ".join(dict.fromkeys(_duration(t) for t in (times[0], times[-1])))
        return (
            f"Read alone (read mode): {' and '.join(rates)}. The raw baseline is n/a: it read"
            f" the same {_nan(rows[0], 'baseline_mbps') * _nan(rows[0], 'baseline_s'):.1f} MB"
            f" in {took}, under the {_duration(MIN_BASELINE_S)} a measurement needs."
        )
    parts = [f"{rate} ({_ceiling(r)})" for rate, r in zip(rates, rows, strict=True)]
    return "Read alone (read mode): " + " and ".join(parts) + "."


def _ceiling(row: dict) -> str:
    """The row against its raw baseline: the share of the baseline's MB/s, or why there is none."""
    base, seconds = _nan(row, "baseline_mbps"), _nan(row, "baseline_s")
    if math.isnan(base):
        return "no raw baseline measured"
    if not baseline_measured(row):
        return (
            f"raw baseline n/a: it read the same {base * seconds:.1f} MB in {_duration(seconds)},"
            f" under the {_duration(MIN_BASELINE_S)} a measurement needs"
        )
    ratio = _nan(row, "ratio_to_baseline_median")
    if math.isnan(ratio):
        ratio = _nan(row, "ratio_to_baseline")
    if math.isnan(ratio):
        ratio = row["throughput_mbps"] / base
    share = f"{_percent(ratio)} of" if ratio <= 1 else f"{ratio:.2f}x"
    low, high = _nan(row, "ratio_to_baseline_min"), _nan(row, "ratio_to_baseline_max")
    spread = (
        ""
        if math.isnan(low) or low == high
        else f", {fmt_ratio(low)}x-{fmt_ratio(high)}x over the repeats"
    )
    text = f"{share} the raw baseline's {_num(base)} MB/s{spread}"
    if unstable(ratio, low, high):
        text += "; unstable: the machine was busy, not a finding"
    return text


def limit(row: dict, decode: bool, cores: int | None = None) -> Limit:
    """What limits a ``read`` pass, from its own figures.

    In this order: a pass shorter than :data:`SHORT_PASS_S` is :data:`UNDETERMINED`; a machine whose
    cores were saturated (busy plus stolen at least :data:`SATURATED_SHARE` of ``cores``) is
    CPU-bound; readers that spent at least :data:`WAITING_SHARE` of the pass in storage requests
    (``read_s`` over ``wall_s`` per reader) waited on the storage (:data:`STORAGE`); otherwise the
    time went to per-sample work on the client. CPU-bound is :data:`DECODING` when ``decode``, else
    :data:`CLIENT_CPU`, with the CPU split (:func:`cpu_split`), naming the other processes when the
    loader's own share of the machine's CPU is under :data:`CLIENT_SHARE`.

    Args:
        row: a ``read`` row of ``results.csv``.
        decode: the run decoded the images (``bench.decode``).
        cores: the machine's cores (default ``os.cpu_count()``).
    """
    cores = cores or os.cpu_count()
    wall, nbytes = row["wall_s"], row["bytes_read"]
    if wall < SHORT_PASS_S or not row.get("samples"):
        return Limit(
            UNDETERMINED,
            f"too short to tell what limits it: the pass read {nbytes / 1e6:.1f} MB in"
            f" {wall * 1e3:.0f} ms, where start-up (worker processes, first requests, the shuffle"
            " buffer filling) weighs as much as reading. More `bench.read_steps`, or a larger"
            " dataset (`make synth`), measure the storage rather than the start-up.",
        )
    readers = max(int(row.get("workers", 0)), 1) * int(row.get("ranks", 1) or 1)
    in_requests = row["read_s"] / (wall * readers)
    busy, steal = _nan(row, "host_busy_cores"), _nan(row, "host_steal_cores")
    used = busy + (0.0 if math.isnan(steal) else steal)
    one_node = int(row.get("ranks", 1) or 1) == 1  # machine-wide figures of one machine
    saturated = (
        one_node and cores and cores_possible(busy, cores) and used >= SATURATED_SHARE * cores
    )
    if not saturated and in_requests >= WAITING_SHARE:
        return Limit(STORAGE, _waiting(row, readers, in_requests))
    size_kb = nbytes / row["samples"] / 1e3
    if decode:
        work = "JPEG decoding, transforms, batching"
    elif row["access"] == "shards":
        work = "tar parsing, sample dicts, batching"
    else:
        work = "a request per sample, sample dicts, batching"
    sample = f"a {size_kb:.1f} kB sample every {_duration(1 / row['samples_per_s'])} ({work})"
    full = f"the machine's {cores} cores were saturated ({used:.2f} busy or stolen)"
    if in_requests < WAITING_SHARE:
        text = (
            f"its readers spent {in_requests:.0%} of their time in storage requests and the"
            f" rest on per-sample work: {sample}"
        )
        if saturated:
            text += f"; {full}"
    else:  # saturated: requests in flight long, but waiting for the same busy cores
        text = f"{full} by per-sample work: {sample}, the storage requests waiting on them too"
    if decode:
        return Limit(
            DECODING,
            f"limited by decoding on the client's CPU, not by the storage: {text}."
            " `--set bench.decode=false` measures the read path alone.",
        )
    if row.get("storage") == "fs" and str(row.get("cache", "")).startswith("warm"):
        text += "; warm, the files come from the page cache"
    client, machine = _nan(row, "cpu_ms_per_mb"), _nan(row, "host_cpu_ms_per_mb")
    if saturated and client < CLIENT_SHARE * machine:  # most of the CPU was not the loader's
        server = ", a local S3 server among them when the run started one" * (
            row.get("storage") == "s3"
        )
        head = (
            "limited by this machine's CPU, which the loader shares with other processes"
            f" (its own {client:.1f} of the {machine:.1f} ms of CPU per MB machine-wide; the"
            f" rest is other processes on this machine{server}), not by the storage's reads"
        )
    else:
        head = "limited by the client's CPU, not by the storage"
    return Limit(CLIENT_CPU, f"{head}: {text}{cpu_split(row, cores)}.")


def _waiting(row: dict, readers: int, in_requests: float) -> str:
    """The sentence of a pass whose readers waited on storage requests."""
    together = readers * row["read_mbps"]
    if in_requests > 1:  # objects: several requests in flight per reader
        waited = f"kept {in_requests:.1f} requests in flight per reader on average"
    else:
        waited = f"spent {in_requests:.0%} of the pass waiting in them"
    text = (
        f"limited by storage requests: its {readers} reader{'s' * (readers > 1)} {waited}, at"
        f" {_num(row['read_mbps'])} MB/s each while reading ({_num(together)} MB/s together)"
    )
    if not baseline_measured(row):
        return text + "."
    base = row["baseline_mbps"]
    text += f"; the raw baseline read {_num(base)} MB/s. "
    if together < SPLIT_LOSES * base:
        return text + (
            "Fewer requests in flight than the baseline's: more DataLoader workers"
            " (`bench.worker_counts`) put more in flight."
        )
    return text + (
        "While requests were in flight the storage served them as fast as the baseline; the"
        " rest is the time each reader spends on its samples between requests."
    )


def cpu_split(row: dict, cores: int | None = None) -> str:
    """The row's ratio to the baseline split into busy cores x CPU per MB (:mod:`bench.resources`).

    Both factors are machine-wide (busy cores: the row's over the baseline's; CPU per MB: the
    baseline's over the row's); the text says which loses (under :data:`SPLIT_LOSES`) and whether
    the ``cores`` were saturated (:data:`SATURATED_SHARE`). Without a baseline to split against
    (none, timed under :data:`MIN_BASELINE_S`, or more busy cores than ``cores``): the row's own
    busy cores and CPU per MB. Empty when the row's figures are missing or not possible, or it has
    several ranks (its machine-wide figures may span machines).
    """
    cores = cores or os.cpu_count()
    keys = ("host_busy_cores", "host_cpu_ms_per_mb", "cpu_ms_per_mb")
    ours = [_nan(row, k) for k in keys]
    base = [_nan(row, f"baseline_{k}") for k in keys]
    ratio = _nan(row, "ratio_to_baseline")
    steal = _nan(row, "host_steal_cores")
    stolen = f"; {steal:.2f} more taken by the hypervisor" if steal >= 0.05 else ""
    if (
        any(math.isnan(v) or v <= 0 for v in ours)
        or not cores_possible(ours[0], cores)
        or int(row.get("ranks", 1) or 1) > 1
    ):
        return ""
    if (
        any(math.isnan(v) or v <= 0 for v in [*base, ratio])
        or not baseline_measured(row)
        or not cores_possible(base[0], cores)
    ):
        return (
            f". CPU counters: {ours[0]:.2f} of the machine's {cores} cores busy{stolen};"
            f" {ours[1]:.1f} ms of CPU per MB machine-wide, {ours[2]:.1f} of them the loader's"
            " processes (no raw baseline measured to split against)"
        )
    busy, per_mb = ours[0] / base[0], base[1] / ours[1]
    text = (
        f". CPU counters: {ratio:.2f}x the raw baseline = {busy:.2f} (cores busy, machine-wide:"
        f" {ours[0]:.2f} vs the baseline's {base[0]:.2f}{f' of {cores}' if cores else ''}"
        f"{stolen}) x {per_mb:.2f} (CPU per MB, machine-wide: {ours[1]:.1f} vs {base[1]:.1f} ms;"
        f" the loader's processes {ours[2]:.1f}, the baseline's {base[2]:.1f} ms)"
    )
    reasons = []
    if busy < SPLIT_LOSES:
        reasons.append(
            "it kept fewer cores busy than the baseline: its readers waited (on storage"
            " requests, or for each other) more than the baseline's"
        )
    if per_mb < SPLIT_LOSES:
        reasons.append(f"it needs {1 / per_mb:.2f}x the raw read's CPU for the same bytes")
        used = ours[0] + (0.0 if math.isnan(steal) else steal)
        if cores and used >= SATURATED_SHARE * cores:
            reasons.append(
                f"the machine's {cores} cores were saturated (busy or stolen), so it cannot go"
                " faster here without less CPU per sample or more cores"
            )
    return text + (": " + "; ".join(reasons) if reasons else "")


def _num(value: float) -> str:
    """A rate with about three significant digits: ``1,234``, ``56.7``, ``3.74``, ``0.039``."""
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.2g}"


def _percent(ratio: float) -> str:
    """A ratio as a percentage, two significant digits under 10 %: ``61%``, ``4.5%``, ``0.47%``."""
    pct = 100 * ratio
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


def _duration(seconds: float) -> str:
    """``1.2 s``, ``100 ms``, ``12.5 ms`` or ``850 us``."""
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= 0.1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"
