"""`make sweep`: per access pattern, the most accelerators a storage keeps at the AU threshold.

One torchrun launch of as many ranks as the sweep may use (:func:`largest_count`) runs it all: rank
0 chooses each point (accelerators, storage, access pattern, seed) and sends it to every rank; the
point's ranks (spread evenly over the nodes, :mod:`bench.ranks`) read while the others wait
(:mod:`bench.sweep.points`). Every point is one cold pass (:func:`bench.loading.run.run_pass`: each
file evicted from the page cache before it is read, where this machine holds the files). Per storage
and access pattern the counts are searched (:mod:`bench.sweep.search`) or taken from
``sweep.points``, then the answer is run again (``sweep.repeats``; ``sweep.rules: closed``: the
search's run is the warm-up and :data:`bench.sweep.rules.RUNS` more are the result). The outputs are
:mod:`bench.sweep.report`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.loading.case import Case
from bench.loading.config import BenchConfig
from bench.loading.run import run_pass
from bench.ranks import BenchRanks, error_text, everywhere, node_of_this_rank, on_main
from bench.storages import Storages
from bench.sweep.config import SweepConfig
from bench.sweep.dataset import dataset_folder, dataset_samples, sweep_dataset
from bench.sweep.points import (
    allow_readers_beyond_cores,
    epoch_steps,
    measure_step_time,
    points_config,
    sweep_row,
    workers_per_rank,
)
from bench.sweep.report import point_line
from bench.sweep.rules import RUNS, Rule, after_rules, before_rules, refuse_unmet
from bench.sweep.search import Point, Search, measure_points, search_accelerators
from bench.sweep.sizing import from_launcher
from bench.sweep.workloads import Workload, workload
from common.settings import replace
from training import distributed
from training.config import ConfigError
from training.data import class_names
from training.distributed import Ranks

log = logging.getLogger(__name__)


def largest_count(cfg: SweepConfig, ranks: Ranks) -> int:
    """The most simulated accelerators this launch's sweep runs.

    The largest of ``sweep.points``, else the launch's world size (``sweep.max_accelerators`` is
    ``auto`` or must equal it).

    Raises:
        ConfigError: the launch has fewer ranks than that, or ``sweep.max_accelerators`` is not its
            world size.
    """
    if cfg.sweep.points:
        if max(cfg.sweep.points) > ranks.world_size:
            raise ConfigError(
                f"sweep.points {cfg.sweep.points} needs {max(cfg.sweep.points)} ranks but this "
                f"launch has {ranks.world_size}: make sweep ACCELERATORS=... starts as many"
            )
        return max(cfg.sweep.points)
    wanted = cfg.sweep.max_accelerators
    if wanted != "auto" and wanted != ranks.world_size:
        raise ConfigError(
            f"sweep.max_accelerators is {wanted} but this launch has {ranks.world_size} "
            "rank(s): make sweep NPROC=N sets it to N x NNODES"
        )
    return ranks.world_size


def host_facts() -> dict:
    """Each node's cores, memory and name, in node order (a collective: every rank calls it)."""
    mine = (node_of_this_rank(), os.cpu_count() or 1, psutil.virtual_memory().total)
    nodes = {node: (cores, memory) for node, cores, memory in distributed.gather(mine)}
    order = sorted(nodes)
    return {
        "host_cores": [nodes[n][0] for n in order],
        "host_memory_bytes": [nodes[n][1] for n in order],
        "hostname": socket.gethostname(),
    }


def check_before(cfg: SweepConfig, w: Workload, nodes: int, memory_bytes: int) -> list[Rule]:
    """The rules checkable before the sweep runs, for ``nodes`` nodes of ``memory_bytes`` in all.

    Raises:
        bench.sweep.rules.RulesNotMet: ``sweep.rules: closed`` and a rule fails; lists the unmet
            rules.
    """
    samples = dataset_samples(dataset_folder(cfg, w)) or cfg.sweep.samples
    fewest = min(cfg.sweep.points) if cfg.sweep.points else nodes
    rules = before_rules(w, samples, fewest, nodes, memory_bytes, cfg.sweep.warmup_steps)
    if cfg.sweep.rules == "closed":
        refuse_unmet(rules)
    return rules


def run_sweep(cfg: SweepConfig, out: Path, ranks: Ranks) -> tuple[list[dict], list[Search], dict]:
    """Run the sweep (see the module doc); every rank calls it.

    Returns:
        On rank 0 the rows, the searches and the facts of the report; empty ones on the others.

    Raises:
        ConfigError: an unknown profile, a launch that does not fit (:func:`largest_count`), counts
            that are not whole multiples of the nodes, or a dataset that does not fit on the disk.
        bench.sweep.rules.RulesNotMet: ``closed`` and a rule fails before anything runs.
    """
    allow_readers_beyond_cores()
    w = workload(cfg.sweep.workload, cfg.sweep.accelerator)
    facts = launch_facts(cfg, w, ranks)
    root = sweep_dataset(cfg, w, ranks)
    facts.update(dataset=str(root), samples=dataset_samples(root))
    seconds = w.computation_time_s or on_main(lambda: measure_step_time(cfg), ranks)
    facts["computation_time_s"] = seconds
    pcfg = points_config(cfg, w, root, seconds, facts["largest"])
    bench_ranks = BenchRanks(ranks, pcfg.bench.ranks)
    on_main(lambda: out.mkdir(parents=True, exist_ok=True), ranks)
    rows: list[dict] = []
    searches: list[Search] = []
    with contextlib.ExitStack() as stack:
        storages = Storages(
            pcfg, out, bench_ranks, stack, cfg.sweep.storages, [cfg.sweep.client_lib],
            stop=False, shards="shards" in cfg.sweep.access,
        )  # fmt: skip
        facts["local_s3"] = storages.local_s3
        point = _SweepPoints(cfg, w, pcfg, storages, bench_ranks).measure
        if ranks.main:
            for storage in cfg.sweep.storages:
                for access in cfg.sweep.access:
                    searches.append(search_one(cfg, w, storage, access, point, rows, facts))
            distributed.gather(None, long=True)  # the end, for the other ranks
        else:  # follow rank 0's points until it says the end
            _follow_points(point)
        distributed.barrier(long=True)  # every rank is done with a local server
    return rows, searches, facts


def launch_facts(cfg: SweepConfig, w: Workload, ranks: Ranks) -> dict:
    """What the report says of this launch before anything runs (a collective: every rank calls it).

    The workload, the most accelerators it runs, each node's cores and memory (bytes), the sizing of
    an ``auto`` launch, and the rules checkable before the sweep.

    Raises:
        ConfigError: a launch that does not fit (:func:`largest_count`), or ``sweep.points`` counts
            that are not whole multiples of the nodes.
        bench.sweep.rules.RulesNotMet: ``closed`` and a rule fails (:func:`check_before`).
    """
    largest = largest_count(cfg, ranks)
    facts = {"workload": w, "largest": largest, "points": cfg.sweep.points, **host_facts()}
    facts["sizing"] = None if cfg.sweep.points else from_launcher()
    facts["nodes"] = nodes = len(facts["host_cores"])
    facts["memory_bytes"] = sum(facts["host_memory_bytes"])
    if any(k % nodes for k in cfg.sweep.points):
        raise ConfigError(
            f"sweep.points {cfg.sweep.points}: every count must be a multiple of the {nodes} "
            "nodes (MLPerf Storage runs the same number of accelerators on every node)"
        )
    facts["before_rules"] = on_main(
        lambda: check_before(cfg, w, nodes, facts["memory_bytes"]), ranks
    )
    return facts


@dataclass
class _SweepPoints:
    """The sweep's points on its prepared storages, as every rank measures them (:meth:`measure`).

    Each storage's class names are found once.
    """

    cfg: SweepConfig
    w: Workload
    pcfg: BenchConfig
    storages: Storages
    bench_ranks: BenchRanks
    names: dict[str, list[str]] = field(default_factory=dict)

    def measure(self, storage: str, access: str, k: int, repeat: int) -> dict | None:
        """Every rank: measure ``k`` accelerators (rank 0 gets the row)."""
        cfg, w, pcfg = self.cfg, self.w, self.pcfg
        client = cfg.sweep.client_lib if storage == "s3" else "-"
        target = self.storages.get(storage, client)
        if storage not in self.names:
            self.names[storage] = everywhere(lambda: class_names(pcfg, target.records))
        steps = pcfg.bench.steps
        if cfg.sweep.rules == "closed":  # whole epochs, as MLPerf runs them
            steps = epoch_steps(len(target.records), w, k, pcfg.bench.warmup_steps)
        seeded = replace(
            pcfg,
            train=replace(pcfg.train, seed=pcfg.train.seed + repeat),
            bench=replace(pcfg.bench, steps=steps),
        )
        case = Case("emulate", access, storage, client, workers_per_rank(cfg, w), k)
        # cold where the files can be evicted before each read (fs, a local server)
        pass_index = 0 if target.local_dir is not None else 1
        started = time.time()
        measured = run_pass(
            case, pass_index, target, None, seeded, self.names[storage], self.bench_ranks
        )
        if measured is None:
            return None
        row = sweep_row(w, case, repeat, seeded, *measured[:2], self.bench_ranks.nodes)
        return {**row, "started": started, "ended": time.time()}


def _follow_points(point: Callable[[str, str, int, int], dict | None]) -> None:
    """Measure, on ranks other than 0, each point rank 0 sends until it says the end."""
    while (command := distributed.gather(None, long=True)[0]) is not None:
        try:
            point(*command)
        except Exception:  # rank 0 records it; the next command comes all the same
            pass


def search_one(
    cfg: SweepConfig,
    w: Workload,
    storage: str,
    access: str,
    point: Callable[[str, str, int, int], dict | None],
    rows: list,
    facts: dict,
) -> Search:
    """Search one storage and access pattern on rank 0, then run the answer again.

    With ``sweep.points`` the points are measured instead of searched; each is sent to every rank. A
    point that fails ends this search with its error.
    """
    search = Search(storage, access)
    first_runs: dict[int, dict] = {}  # this search's row of each count

    def run(k: int, repeat: int) -> dict:
        distributed.gather((storage, access, k, repeat), long=True)  # the point, to every rank
        row = point(storage, access, k, repeat)
        rows.append(row)
        print(point_line(w, row), flush=True)
        if repeat == 0:
            first_runs[k] = row
        return row

    def measure(k: int) -> Point:
        row = run(k, 0)
        return Point(k, row["au"], row["passed"], row["limit"] or None)

    try:
        if cfg.sweep.points:
            search.result = measure_points(measure, cfg.sweep.points)
        else:
            search.result = search_accelerators(measure, facts["largest"], facts["nodes"])
    except Exception as exc:
        search.error = error_text(exc)
        log.error("%s/%s: the search stopped: %s", storage, access, search.error)
        return search
    answer = search.result.answer
    print(f"{w.name} {storage}/{access}: answer so far {answer} accelerator(s), limit "
          f"{search.result.limit}", flush=True)  # fmt: skip
    if not answer:
        return search
    closed = cfg.sweep.rules == "closed"
    if closed:
        search.warmup = first_runs[answer]
    else:
        search.runs = [first_runs[answer]]
    more = RUNS if closed else cfg.sweep.repeats - 1
    try:
        for repeat in range(1, more + 1):
            search.runs.append(run(answer, repeat))
    except Exception as exc:  # the answer stands, on fewer runs
        search.repeat_error = error_text(exc)
        log.error("%s/%s: a repeat failed: %s", storage, access, search.repeat_error)
    if closed:
        mine = [r for r in rows if (r["storage"], r["access"]) == (storage, access)]
        memory_met = all(r.met for r in facts["before_rules"] if r.name == "memory")
        search.rules = after_rules(w, search.runs, mine, answer, memory_met=memory_met)
    return search
