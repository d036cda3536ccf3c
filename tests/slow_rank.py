"""Two simulated accelerators, one of which reads slowly on purpose: run under torchrun (2 ranks,
gloo) by tests/test_sweep_sync.py. Rank 1's storage sleeps before every read; both ranks run
the same emulate pass, once with ``bench.sync: step`` and once with ``none``. Rank 0 prints one
JSON line: each mode's AU of every rank."""

from __future__ import annotations

import json
import os
import time

import torch.distributed as dist

from bench.loading.case import Case, run_case
from bench.loading.config import BenchConfig
from bench.ranks import RankSubset
from bench.storages import prepare_fs
from common.settings import replace
from tests.helpers import REPO
from training.config import load_config
from training.data import class_names

#: Seconds rank 1's storage sleeps before each read (two reads a step: 0.2 s against 0.05 s of
#: computation, so its AU is about 0.2 and, stepping together, every rank's too).
DELAY_S = 0.1


class SlowReads:
    """A storage whose whole-object reads sleep ``delay_s`` first (a slow disk for one rank);
    everything else is the wrapped storage's."""

    def __init__(self, storage, delay_s: float):
        self.storage = storage
        self.delay_s = delay_s

    def fetch(self, key: str):
        time.sleep(self.delay_s)
        return self.storage.fetch(key)

    def __getattr__(self, name: str):
        return getattr(self.storage, name)


def main() -> None:
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    cfg = load_config(
        REPO / "configs/detection.yaml",
        [
            f"storage.root={REPO / 'data'}", "bench.decode=false", "bench.steps=8",
            "bench.warmup_steps=1", "bench.computation_time_s=0.05", "loader.batch_size=2",
            "dataset.limit=40",
        ],
        BenchConfig,
    )  # fmt: skip
    target = prepare_fs(cfg, shards=False)
    storage = SlowReads(target.source.storage, DELAY_S if rank == 1 else 0.0)
    classes = class_names(cfg, target.records)
    aus = {}
    for sync in ("step", "none"):
        subset = RankSubset((0, 1), dist.new_group([0, 1]))
        part = run_case(
            Case("emulate", "random", "fs", "-", 0, 2),
            replace(cfg, bench=replace(cfg.bench, sync=sync)), storage, target.records, None,
            classes, pass_index=1, repeat=1, subset=subset, part=rank,
        )  # fmt: skip
        gathered = [None, None]
        dist.all_gather_object(gathered, part.row["au"])
        aus[sync] = gathered
    if rank == 0:
        print(json.dumps(aus), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
