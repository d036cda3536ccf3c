"""What runs before a sweep's ranks start: the closed rules needing no run, and how many ranks."""

from __future__ import annotations

import psutil

from bench.loading.case import Case, run_case
from bench.storages import prepare_fs
from bench.sweep.config import SweepConfig
from bench.sweep.dataset import sweep_dataset
from bench.sweep.points import allow_readers_beyond_cores, points_config, workers_per_rank
from bench.sweep.run import check_before
from bench.sweep.sizing import PeakMemory, Sizing, hand_to_ranks, size_node
from bench.sweep.workloads import Workload, workload
from common.settings import replace
from training.data import class_names
from training.distributed import ONE_RANK

#: Steps of the one-rank measurement, at least: enough for every DataLoader worker to read a
#: few batches (its memory grows with what it has read and sent).
PROBE_STEPS = 12


def launch_size(cfg: SweepConfig) -> int:
    """How many ranks a sweep started without torchrun needs on this machine.

    The largest of ``sweep.points`` when given, else ``sweep.max_accelerators``, or with ``auto``
    what :func:`probe_node` finds (handed to the ranks for the report). With ``sweep.rules: closed``
    the rules that need nothing run are checked first, for this one node.

    Raises:
        bench.sweep.rules.RulesNotMet: ``closed`` and a rule fails.
        ConfigError: an unknown profile, a dataset that does not fit on the disk.
    """
    w = workload(cfg.sweep.workload, cfg.sweep.accelerator)
    check_before(cfg, w, 1, psutil.virtual_memory().total)
    if cfg.sweep.points:
        return max(cfg.sweep.points)
    if cfg.sweep.max_accelerators != "auto":
        return cfg.sweep.max_accelerators
    sizing = probe_node(cfg, w)
    hand_to_ranks(sizing)
    print(f"sweep: {sizing.sentence()}", flush=True)
    return sizing.accelerators


def probe_node(cfg: SweepConfig, w: Workload) -> Sizing:
    """Measure one simulated accelerator's peak memory and size the node from it.

    This process and its workers read :data:`PROBE_STEPS` steps or more of the sweep's dataset
    (generated first when missing) on the filesystem with the first pattern of ``sweep.access``.
    """
    allow_readers_beyond_cores()
    root = sweep_dataset(cfg, w, ONE_RANK)
    seconds = w.computation_time_s or 0.2  # bccd's step time does not change the memory
    steps = max(PROBE_STEPS, 3 * workers_per_rank(cfg, w))
    pcfg = points_config(cfg, w, root, seconds, 1)
    pcfg = replace(pcfg, bench=replace(pcfg.bench, steps=steps, warmup_steps=1))
    access = cfg.sweep.access[0]
    target = prepare_fs(pcfg, shards=access == "shards")
    case = Case("emulate", access, "fs", "-", workers_per_rank(cfg, w), 1)
    print(f"sweep: measuring one simulated {w.accelerator}'s memory ({access}, {steps} steps)")
    with PeakMemory() as peak:
        run_case(
            case, pcfg, target.source.storage, target.records,
            target.shards if access == "shards" else None, class_names(pcfg, target.records),
            pass_index=1, repeat=max(1, -(-(steps + 1) * w.batch_size // len(target.records))),
        )  # fmt: skip
    memory = psutil.virtual_memory()
    return size_node(peak.peak_bytes, memory.available, memory.total)
