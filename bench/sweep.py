"""`make sweep`: the most simulated accelerators a storage keeps at or above a workload's AU
threshold, for each access pattern: MLPerf Storage's question, answered by one torchrun launch.

A simulated accelerator is a rank in the benchmark's ``emulate`` mode: its DataLoader workers
(the profile's ``read_threads``) read real bytes of a dataset generated to the profile (MLPerf
does not decode them), and each step sleeps the profile's computation time
(:mod:`bench.workloads`). One launch of ``sweep.max_accelerators`` ranks runs the whole search
(:mod:`bench.search`): rank 0 chooses each point (how many accelerators, with which access
pattern and seed) and sends it to every rank; the ranks of the point (spread evenly over the
nodes, :mod:`bench.ranks`) read while the others wait; every point is one cold pass
(:func:`bench.run.run_pass`: each file evicted from the page cache before it is read, where
this machine holds the files), warm-up steps excluded. The answer is run ``sweep.repeats``
times in all: the search's run, then new seeds.

Writes ``outputs/sweep/<timestamp>/``: ``sweep.csv`` (one row per point and repeat),
``report.md`` (one answer sentence per storage and access pattern, MLPerf's dataset rules,
every point), ``au_vs_accelerators.png``, ``throughput_vs_accelerators.png`` and the config.
Storages: the filesystem, and S3 (``sweep.storages``; without an endpoint, a local server
started for the sweep and filled with the dataset, as ``make bench`` does). The checkpoint
workload is not here yet.

Why one module of this size: the sweep's steps (dataset, points, search, answer, outputs) are
read in order by one reader asking "how many accelerators"; the search itself is
:mod:`bench.search` and the passes are :mod:`bench.run`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from bench.ranks import BenchRanks, error_text, everywhere, in_turn, on_main
from bench.run import run_pass
from bench.runner import Case, run_case
from bench.search import SearchResult, search_accelerators
from bench.storages import Storages, prepare_fs
from bench.workloads import Rule, Workload, check_rules, workload
from common.files import atomic_write_bytes, save_figure
from datagen.images import SynthSpec
from datagen.synthetic import SPLIT_DIR, generate_dataset
from pipelines.storage.filesystem import FileSystemStorage
from training import distributed
from training.config import Config, ConfigError
from training.data import class_names
from training.distributed import Ranks
from training.meter import percentile
from training.outputs import write_csv, write_yaml

log = logging.getLogger(__name__)

SWEEP_COLUMNS = [
    "workload", "accelerator", "storage", "access", "client_lib", "accelerators", "repeat",
    "seed", "au", "au_min", "passed", "samples_per_s", "throughput_mbps", "nominal_mbps",
    "data_wait_p50_ms", "data_wait_p99_ms", "cache", "error",
]  # fmt: skip

#: Repeats of an answer whose samples/s spread by more than this (max - min over the mean)
#: are said to disagree.
SPREAD_LIMIT = 0.05


@dataclass
class Search:
    """One access pattern's search on one storage, as rank 0 saw it.

    Attributes:
        storage, access: what was searched.
        result: the search's points and answer (None when it failed).
        repeats: the rows of the runs at the answer (one per seed).
        error: why the search stopped, or ``""``.
        repeat_error: why a repeat of the answer failed, or ``""`` (the answer stands on the
            runs before it).
    """

    storage: str
    access: str
    result: SearchResult | None = None
    repeats: list[dict] = field(default_factory=list)
    error: str = ""
    repeat_error: str = ""


def sweep_dataset(cfg: Config, w: Workload, ranks: Ranks) -> Path:
    """The dataset the sweep reads: ``data/bccd`` for ``bccd``; otherwise ``sweep.samples``
    JPEGs drawn to the profile's sample size (:mod:`datagen.synthetic`, lognormal with the
    profile's mean and standard deviation) under ``<sweep.data_dir>/<profile>-<samples>``,
    written by rank 0 when missing (or left incomplete: its split file is written last) while
    the other ranks wait.

    Samples larger than a JPEG the generator draws (unet3d's 146.6 MB volumes) are a JPEG
    followed by random bytes up to their size (:data:`datagen.images.LARGEST_JPEG_BYTES`).

    Raises:
        ConfigError: the dataset would not fit on the disk that takes it (checked before it is
            generated).
    """
    if w.name == "bccd":
        return Path(cfg.storage.root) / cfg.storage.prefixes[0]
    folder = Path(cfg.sweep.data_dir) / f"{w.key}-{cfg.sweep.samples}"
    spec = SynthSpec(mean_bytes=round(w.sample_bytes), std_bytes=round(w.sample_stdev_bytes))

    def generate() -> None:
        if (folder / SPLIT_DIR / "train.txt").exists():  # written last: the dataset is whole
            return
        check_disk(cfg, w, folder)
        print(f"generating {cfg.sweep.samples} samples of {w.key} into {folder}")
        generate_dataset(
            FileSystemStorage(folder), spec, cfg.sweep.samples, test_fraction=0.0,
            overwrite=True,  # over what an interrupted generation left
            workers=os.cpu_count() or 1,
        )  # fmt: skip

    in_turn(generate, ranks)
    return folder


def check_disk(cfg: Config, w: Workload, folder: Path) -> None:
    """Refuse a dataset that would not fit on the disk that takes it: its samples, their
    shards (with ``shards`` in ``sweep.access``) and a local S3 server's copy of both (with
    ``s3`` in ``sweep.storages`` and no endpoint; it lives under ``outputs/``, assumed to be
    on the same disk), against the free space of ``folder``'s filesystem.

    Raises:
        ConfigError: with the figures and the most samples that would fit.
    """
    copies = 2 if "shards" in cfg.sweep.access else 1
    if "s3" in cfg.sweep.storages and not (
        cfg.storage.endpoint_url or os.environ.get("S3_ENDPOINT")
    ):
        copies *= 2
    per_sample = w.sample_bytes * copies
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    if cfg.sweep.samples * per_sample > 0.9 * free:
        fit = int(0.9 * free // per_sample)
        raise ConfigError(
            f"sweep.samples={cfg.sweep.samples} of {w.key} ({w.sample_bytes / 1e6:.1f} MB each, "
            f"{copies} cop{'y' if copies == 1 else 'ies'}: the samples, their shards, a local "
            f"S3 server's copy) need about {cfg.sweep.samples * per_sample / 1e9:.1f} GB but "
            f"{free / 1e9:.1f} GB are free on {existing}: set sweep.samples to at most {fit}, "
            "or sweep.data_dir to a larger disk"
        )


def workers_per_rank(cfg: Config, w: Workload) -> int:
    """DataLoader workers of each simulated accelerator: ``sweep.workers``, or the profile's
    ``read_threads`` when it is -1."""
    return w.read_threads if cfg.sweep.workers < 0 else cfg.sweep.workers


def points_config(cfg: Config, w: Workload, root: Path, computation_time_s: float) -> Config:
    """The benchmark configuration every point runs: the dataset at ``root`` (VOC), the
    profile's batch size and readers, its computation time, no baselines."""
    workers = workers_per_rank(cfg, w)
    shard_mb = (
        w.samples_per_file * w.sample_bytes / 1e6
        if w.samples_per_file > 1
        else cfg.dataset.shard_size_mb
    )
    return replace(
        cfg,
        storage=replace(cfg.storage, type="fs", root=str(root.parent), prefixes=[root.name]),
        dataset=replace(
            cfg.dataset,
            format="voc",
            train_split="train",
            classes=[],
            limit=None,
            shard_size_mb=shard_mb,
        ),
        loader=replace(cfg.loader, batch_size=w.batch_size, num_workers=workers),
        bench=replace(
            cfg.bench,
            decode=cfg.sweep.decode,
            computation_time_s=computation_time_s,
            steps=cfg.sweep.steps,
            warmup_steps=cfg.sweep.warmup_steps,
            baselines=False,
            peers=False,
            ranks=list(range(1, cfg.sweep.max_accelerators + 1)),
        ),
    )


def measure_step_time(cfg: Config, ranks: Ranks) -> float:
    """The detector's training step time on this machine (seconds, the mean of 3 steps after
    one of warm-up, on ``data/bccd``), measured by rank 0 and shared: the ``bccd`` profile's
    computation time."""

    def measure() -> float:
        timing = replace(cfg, bench=replace(cfg.bench, steps=3, warmup_steps=1, decode=True))
        prep = prepare_fs(timing)
        part = run_case(
            Case("train", "random", "fs", "-", 0), timing, prep.source.storage, prep.records,
            None, class_names(timing, prep.records), pass_index=0, repeat=1,
        )  # fmt: skip
        seconds = part.row["compute_s"] / part.row["steps"]
        print(f"bccd: the detector's training step takes {seconds:.3f} s here")
        return seconds

    return on_main(measure, ranks)  # an error ends the sweep on every rank


def run_sweep(cfg: Config, out: Path, ranks: Ranks) -> tuple[list[dict], list[Search], dict]:
    """Run the sweep (see the module doc). Every rank calls it; rank 0 gets the rows, the
    searches and the facts of the report, the others empty ones.

    Raises:
        ConfigError: an unknown profile, samples the generator cannot make, or
            ``sweep.max_accelerators`` that is not this launch's world size.
    """
    w = workload(cfg.sweep.workload, cfg.sweep.accelerator)
    if cfg.sweep.max_accelerators != ranks.world_size:
        raise ConfigError(
            f"sweep.max_accelerators is {cfg.sweep.max_accelerators} but this launch has "
            f"{ranks.world_size} rank(s): make sweep NPROC=N sets it to N x NNODES"
        )
    root = sweep_dataset(cfg, w, ranks)
    seconds = w.computation_time_s or measure_step_time(cfg, ranks)
    pcfg = points_config(cfg, w, root, seconds)
    br = BenchRanks(ranks, pcfg.bench.ranks)
    on_main(lambda: out.mkdir(parents=True, exist_ok=True), ranks)
    lib = cfg.sweep.client_lib
    rows: list[dict] = []
    searches: list[Search] = []
    with contextlib.ExitStack() as stack:
        storages = Storages(pcfg, out, br, stack, cfg.sweep.storages, [lib], stop=False)
        names: dict[str, list[str]] = {}  # class names, once per storage

        def point(storage: str, access: str, k: int, repeat: int) -> dict | None:
            """Every rank: measure ``k`` accelerators (rank 0 gets the row)."""
            client = lib if storage == "s3" else "-"
            prep = storages.get(storage, client)
            if storage not in names:
                names[storage] = everywhere(lambda: class_names(pcfg, prep.records))
            seeded = replace(pcfg, train=replace(pcfg.train, seed=pcfg.train.seed + repeat))
            case = Case("emulate", access, storage, client, workers_per_rank(cfg, w), k)
            # cold where the files can be evicted before each read (fs, a local server)
            pass_index = 0 if prep.local_dir is not None else 1
            measured = run_pass(case, pass_index, prep, None, seeded, names[storage], br)
            if measured is None:
                return None
            return sweep_row(w, case, repeat, seeded, *measured[:2])

        if ranks.main:
            for storage in cfg.sweep.storages:
                for access in cfg.sweep.access:
                    searches.append(search_one(cfg, w, storage, access, point, rows, br.nodes))
            distributed.gather(None, long=True)  # the end, for the other ranks
        else:  # follow rank 0's points until it says the end
            while (command := distributed.gather(None, long=True)[0]) is not None:
                try:
                    point(*command)
                except Exception:  # rank 0 records it; the next command comes all the same
                    pass
        records = next(iter(storages.prepared.values())).records if storages.prepared else []
        distributed.barrier(long=True)  # every rank is done with a local server
    facts = {
        "workload": w, "computation_time_s": seconds, "samples": len(records),
        "nodes": br.nodes, "host_memory_bytes": psutil.virtual_memory().total,
        "dataset": str(root),
    }  # fmt: skip
    return rows, searches, facts


def search_one(
    cfg: Config, w: Workload, storage: str, access: str, point, rows: list, nodes: int
) -> Search:
    """Rank 0: search one storage and access pattern, sending each point to every rank, then
    repeat the answer; a point that fails ends this search with its error."""
    search = Search(storage, access)
    first_runs: dict[int, dict] = {}  # this search's row of each count

    def measure(k: int, repeat: int) -> dict:
        print(f"{w.name} {storage}/{access}: {k} accelerator(s), run {repeat + 1}")
        distributed.gather((storage, access, k, repeat), long=True)  # the point, to every rank
        row = point(storage, access, k, repeat)
        rows.append(row)
        if repeat == 0:
            first_runs[k] = row
        return row

    try:
        search.result = search_accelerators(
            lambda k: measure(k, 0)["au"], w.au_threshold, cfg.sweep.max_accelerators, nodes
        )
    except Exception as exc:
        search.error = error_text(exc)
        log.error("%s/%s: the search stopped: %s", storage, access, search.error)
        return search
    answer = search.result.answer
    print(f"{w.name} {storage}/{access}: answer so far {answer} accelerator(s)")
    if answer:
        search.repeats = [first_runs[answer]]
        try:
            for repeat in range(1, cfg.sweep.repeats):
                search.repeats.append(measure(answer, repeat))
        except Exception as exc:  # the answer stands, on fewer runs
            search.repeat_error = error_text(exc)
            log.error("%s/%s: a repeat failed: %s", storage, access, search.repeat_error)
    return search


def sweep_row(w: Workload, case: Case, repeat: int, cfg: Config, row: dict, steps: list) -> dict:
    """A ``sweep.csv`` row from a point's results row and its ranks' steps: measured MB/s
    (bytes read / wall), nominal MB/s (samples/s x the profile's sample size, as MLPerf
    Storage and DLIO report it), data wait per step (p50, p99 over every rank's steps)."""
    waits = [s["data_wait_s"] for s in steps]
    return {
        "workload": w.name, "accelerator": w.accelerator, "storage": case.storage,
        "access": case.access, "client_lib": case.client_lib, "accelerators": case.ranks,
        "repeat": repeat, "seed": cfg.train.seed, "au": row["au"], "au_min": row["au_min"],
        "passed": row["au"] >= w.au_threshold, "samples_per_s": row["samples_per_s"],
        "throughput_mbps": row["throughput_mbps"],
        "nominal_mbps": row["samples_per_s"] * w.sample_bytes / 1e6,
        "data_wait_p50_ms": percentile(waits, 50) * 1e3,
        "data_wait_p99_ms": percentile(waits, 99) * 1e3, "cache": row["cache"], "error": "",
    }  # fmt: skip


def accelerator_label(w: Workload) -> str:
    """What a simulated accelerator of ``w`` is, for sentences: its kind (``h100``), or for
    ``bccd`` one with this machine's step time."""
    return "accelerator(s) with this machine's step time" if w.name == "bccd" else w.accelerator


def answer_line(w: Workload, search: Search) -> str:
    """The report's sentence for one search (MLPerf's number, with what it delivered)."""
    head = f"- {search.storage}, {search.access}:"
    if search.error:
        return f"{head} no answer: {search.error}"
    answer, acc = search.result.answer, accelerator_label(w)
    threshold = f"AU >= {w.au_threshold:.0%} on {w.name}"
    if answer == 0:
        first = search.result.points[0]
        return (
            f"{head} not even {first.accelerators} simulated {acc} at {threshold}"
            f" (AU {first.au:.2f})."
        )
    runs = search.repeats
    sps = statistics.mean(r["samples_per_s"] for r in runs)
    mbps = statistics.mean(r["throughput_mbps"] for r in runs)
    au = statistics.mean(r["au"] for r in runs)
    line = (
        f"{head} {answer} simulated {acc} at {threshold}: {sps:,.0f} samples/s, "
        f"{mbps:,.1f} MB/s measured (AU {au:.2f}; mean of {len(runs)} run(s))."
    )
    if len(runs) > 1 and sps > 0:
        values = [r["samples_per_s"] for r in runs]
        spread = (max(values) - min(values)) / sps
        line += f" Repeats spread {spread:.1%} in samples/s"
        line += (
            f": more than {SPREAD_LIMIT:.0%}, so the answer is uncertain."
            if spread > SPREAD_LIMIT
            else "."
        )
    if au < w.au_threshold:
        line += " Its repeats averaged below the threshold: the boundary is noisy here."
    if search.result.capped:
        line += " Every count tried passed: more ranks (NPROC) may keep more busy."
    if search.repeat_error:
        line += f" A repeat failed: {search.repeat_error}"
    return line


def rules_lines(w: Workload, facts: dict, accelerators: int) -> list[str]:
    """MLPerf Storage's dataset rules for this sweep's dataset at ``accelerators``."""
    rules: list[Rule] = check_rules(
        w, facts["samples"], max(accelerators, 1), facts["nodes"], facts["host_memory_bytes"]
    )
    return [f"- {'met' if r.met else 'NOT met'}: {r.text}" for r in rules]


def write_outputs(out: Path, cfg: Config, rows: list[dict], searches: list[Search], facts: dict):
    """``sweep.csv``, ``report.md``, the two plots and ``config.yaml`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", cfg.to_dict())
    write_csv(out / "sweep.csv", rows, SWEEP_COLUMNS)
    plot(rows, facts["workload"], out)
    w = facts["workload"]
    largest = max((s.result.answer for s in searches if s.result), default=1)
    lines = [
        f"# How many simulated {accelerator_label(w)} can this storage keep busy? ({w.name})",
        "",
        *[answer_line(w, s) for s in searches],
        "",
        f"Workload: `{w.key}` from {w.source}: samples of {_size(w.sample_bytes)} mean,"
        f" batch {w.batch_size}, {workers_per_rank(cfg, w)} DataLoader worker(s) per"
        f" accelerator, {facts['computation_time_s']:.3f} s of"
        f" computation per step, AU threshold {w.au_threshold:.0%}; decoding"
        f" {'on' if cfg.sweep.decode else 'off (as MLPerf)'}. Dataset: {facts['samples']}"
        f" samples at `{facts['dataset']}`. Up to {cfg.sweep.max_accelerators} accelerator(s)"
        f" on {facts['nodes']} node(s); {cfg.sweep.warmup_steps} warm-up + {cfg.sweep.steps}"
        " measured steps per point; every point reads cold (each file evicted from the page"
        " cache before it is read, where this machine holds the files; otherwise the cache"
        " may serve reads: the `cache` column says which).",
        "",
        "MB/s measured = bytes read / wall time; nominal = samples/s x the profile's sample"
        " size (MLPerf Storage / DLIO's figure).",
        "",
        "## MLPerf Storage's dataset rules",
        "",
        *rules_lines(w, facts, largest),
        "",
        "## Points",
        "",
        "| storage | access | accelerators | run | AU | AU min | samples/s | MB/s"
        " | nominal MB/s | data wait p50 / p99 ms | cache |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['storage']} | {r['access']} | {r['accelerators']} | {r['repeat'] + 1}"
            f" | {r['au']:.3f}"
            f" | {r['au_min']:.3f} | {r['samples_per_s']:.1f} | {r['throughput_mbps']:.2f}"
            f" | {r['nominal_mbps']:.2f} | {r['data_wait_p50_ms']:.1f} /"
            f" {r['data_wait_p99_ms']:.1f} | {r['cache']} |"
            for r in rows
        ],
        "",
        "![AU](au_vs_accelerators.png)",
        "",
        "![throughput](throughput_vs_accelerators.png)",
        "",
    ]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode("utf-8"))


def _size(nbytes: float) -> str:
    """A sample size for the report: kB below 1 MB, MB above (10^3, 10^6 bytes)."""
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


def plot(rows: list[dict], w: Workload, out: Path) -> None:
    """AU and MB/s against accelerators, one line per storage and access pattern (the
    search's runs)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    first = [r for r in rows if r["repeat"] == 0]
    for name, key, label in (
        ("au_vs_accelerators.png", "au", "mean AU over the accelerators"),
        ("throughput_vs_accelerators.png", "throughput_mbps", "MB/s measured"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for storage, access in dict.fromkeys((r["storage"], r["access"]) for r in first):
            mine = sorted(
                (r for r in first if (r["storage"], r["access"]) == (storage, access)),
                key=lambda r: r["accelerators"],
            )
            xs, ys = [r["accelerators"] for r in mine], [r[key] for r in mine]
            ax.plot(xs, ys, "o-", label=f"{storage}/{access}")
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
