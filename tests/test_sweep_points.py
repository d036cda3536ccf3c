"""A sweep point's read-ahead is bounded as stated; a random-only sweep writes no shards; the
closed rules refuse before anything is generated (in this process, on the embedded dataset or a
tiny generated one)."""

from __future__ import annotations

import json
import math
import time

from bench.storages import prepare_fs
from bench.sweep.config import SweepConfig
from bench.sweep.points import points_config
from bench.sweep.workloads import workload
from common.settings import replace
from pipelines.access.loaders import build_loader
from scripts.sweep import main as sweep_main
from tests.helpers import REPO
from training.config import load_config
from training.data import class_names
from training.engine import measure_steps
from training.tasks import class_to_index, load_task


def early_samples(cfg, target, *, compute_s: float = 0.3) -> tuple[int, int]:
    """Samples of the measured steps whose read began before the measured clock started, with
    ``cfg``'s loader settings (each step sleeps ``compute_s``); and the bound the sweep
    states, one batch per DataLoader worker."""
    loader = build_loader(
        target.source.storage, target.records, access="random", transform=None,
        class_to_index=class_to_index(load_task(cfg), class_names(cfg, target.records)),
        settings=cfg.loader, shuffle=True, seed=0,
    )  # fmt: skip
    loader.set_epoch(0)
    trace: list = []
    meter = measure_steps(
        loader, lambda batch, step: time.sleep(compute_s) or math.nan, 0, num_samples=None,
        max_steps=8, warmup_steps=1, trace=trace,
    )  # fmt: skip
    early = [t for t in trace if t[0] >= 1 and t[4] < meter.started]
    return len(early), cfg.loader.num_workers * cfg.loader.batch_size


def test_read_ahead_when_the_measured_steps_begin_is_one_batch_per_reader():
    base = load_config(REPO / "configs/detection.yaml", command=SweepConfig)
    w = workload("bccd")  # batch 4, 2 readers
    sweep_cfg = points_config(base, w, REPO / "data/bccd", 0.3, 1)
    target = prepare_fs(sweep_cfg, shards=False)
    early, bound = early_samples(sweep_cfg, target)
    assert 0 < early <= bound  # read while the warm-up step computed: one batch per reader
    # PyTorch's default of two batches per worker reads further ahead: the bound is the setting's
    default = replace(sweep_cfg, loader=replace(sweep_cfg.loader, prefetch_factor=2))
    assert early_samples(default, target)[0] > bound


def test_a_random_only_sweep_writes_no_shards_and_a_summary_per_point(tmp_path, capsys):
    code = sweep_main([
        "--out", str(tmp_path / "out"), "--set", f"sweep.data_dir={tmp_path / 'data'}",
        "--set", "sweep.samples=30", "--set", "sweep.storages=[fs]",
        "--set", "sweep.access=[random]", "--set", "sweep.points=[1]", "--set", "sweep.steps=3",
        "--set", "sweep.workers=0", "--set", "sweep.repeats=1",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    dataset = tmp_path / "data" / "retinanet_b200-30"
    assert (dataset / "ImageSets/Main/train.txt").exists()
    assert not (dataset / "shards").exists()  # no access pattern reads them
    (run,) = (tmp_path / "out").iterdir()
    summary = json.loads((run / "points/fs-random-1acc-run1/summary.json").read_text())
    metric = summary["metric"]
    assert summary["num_accelerators"] == 1 and summary["num_files_train"] == 30
    sps = metric["train_throughput_mean_samples_per_second"]
    assert metric["train_io_mean_MB_per_second"] == sps * 322_957 / 2**20  # DLIO's formula
    report = (run / "report.md").read_text()
    assert "Dataset: 30 samples" in report and "Limit:" in report
    printed = capsys.readouterr().out
    assert "retinanet fs/random: 1 accelerator(s), run 1: AU" in printed  # each point shown
    assert "client CPU" in printed


def test_closed_rules_refuse_the_default_dataset_before_generating_it(tmp_path, capsys):
    code = sweep_main([
        "--out", str(tmp_path / "out"), "--set", f"sweep.data_dir={tmp_path / 'data'}",
        "--set", "sweep.rules=closed",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "rules are not met" in err and "NOT met: dataset" in err and "steps per epoch" in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
