"""MLPerf Storage v3.0's workload profiles and rules, and the sweep's dataset and launch checks."""

from __future__ import annotations

import pytest

from bench.sweep.config import SweepConfig
from bench.sweep.rules import (
    RulesNotMet,
    after_rules,
    before_rules,
    dataset_rules,
    min_samples,
    refuse_unmet,
)
from bench.sweep.workloads import WORKLOADS, workload
from training.config import ConfigError, load_config

#: The values of the v3.0 release's files, mlcommons/storage tag v3.0,
#: configs/dlio/workload/<key>.yaml (read at the commit each profile names): record_length_bytes,
#: record_length_bytes_stdev, num_samples_per_file, batch_size, read_threads, computation_time,
#: metric.au, num_files_train, epochs. retinanet_b200 and unet3d_b200 also as copied by a
#: submitter (mlcommons/storage_results_v3.0, SAMSUNG/code-08dbf816/configs/dlio/workload/),
#: who changed only read_threads (CodeAnalysis.md of that repository).
RELEASE = {
    "retinanet_b200": (322_957, 0, 1, 24, 8, 0.04755, 0.85, 1_170_301, 8),
    "retinanet_mi355": (322_957, 0, 1, 32, 8, 0.0634, 0.85, 1_170_301, 8),
    "retinanet_h100": (153_600, 51_200, 1, 16, 8, 0.180, 0.85, 1_743_042, 5),
    "retinanet_a100": (153_600, 51_200, 1, 16, 8, 0.210, 0.85, 1_743_042, 5),
    "unet3d_b200": (146_600_628, 68_341_808, 1, 7, 4, 0.162, 0.90, 7200, 5),
    "unet3d_h100": (146_600_628, 68_341_808, 1, 7, 4, 0.323, 0.90, 168, 5),
    "unet3d_a100": (146_600_628, 68_341_808, 1, 7, 4, 0.636, 0.90, 168, 5),
    "resnet50_h100": (114_660.07, 0, 1251, 400, 8, 0.224, 0.90, 1024, 5),
    "resnet50_a100": (114_660.07, 0, 1251, 400, 8, 0.435, 0.90, 1024, 5),
    "cosmoflow_h100": (2_828_486, 71_311, 1, 1, 4, 0.00350, 0.70, 524_288, 5),
    "cosmoflow_a100": (2_828_486, 71_311, 1, 1, 4, 0.00551, 0.70, 524_288, 5),
}


@pytest.mark.parametrize("key", sorted(RELEASE))
def test_every_profile_holds_the_release_files_values_and_cites_them(key):
    w = WORKLOADS[key]
    assert (
        w.sample_bytes, w.sample_stdev_bytes, w.samples_per_file, w.batch_size, w.read_threads,
        w.computation_time_s, w.au_threshold, w.mlperf_files, w.epochs,
    ) == RELEASE[key]  # fmt: skip
    assert w.source.startswith("mlcommons/storage v3.0 (ce28a98) configs/dlio/workload/")
    assert f"{key}.yaml (read at " in w.source
    closed = w.name in ("retinanet", "unet3d") and w.accelerator in ("b200", "mi355")
    assert w.division == ("closed" if closed else "whatif")


def test_the_default_is_retinanet_on_b200_and_bccd_is_measured_here():
    cfg = load_config(None, command=SweepConfig)
    w = workload(cfg.sweep.workload, cfg.sweep.accelerator)
    assert w.key == "retinanet_b200" and w.division == "closed"
    assert workload("bccd").computation_time_s is None


def test_an_unknown_or_unshipped_profile_says_why():
    with pytest.raises(ConfigError, match="no workload profile 'bert'.*retinanet_b200"):
        workload("bert")
    with pytest.raises(ConfigError, match="ships no configs/dlio/workload/unet3d_mi355.yaml"):
        workload("unet3d", "mi355")


def test_rules_need_five_times_the_memory_and_500_steps_per_accelerator():
    w = workload("retinanet", "b200")  # 322,957-byte samples, batch 24
    gib = 2**30
    need = min_samples(w, accelerators=8, hosts=2, memory_bytes=32 * gib)
    assert need == max(-(-5 * 32 * gib // 322_957), 500 * 24 * 8)
    assert all(r.met for r in dataset_rules(w, need, 8, 2, 32 * gib))
    few = dataset_rules(w, 1000, 8, 2, 32 * gib)
    assert [(r.name, r.met) for r in few] == [("memory", False), ("steps", False)]
    assert "5 steps per epoch for each of 8 accelerator(s)" in few[1].text
    assert "at least 5x the memory of the 2 client node(s), 171.8 GB" in few[0].text


def test_closed_refuses_a_small_dataset_a_whatif_profile_and_a_second_excluded_step():
    gib = 2**30
    rules = before_rules(workload("retinanet", "h100"), 1000, 1, 1, 24 * gib, warmup_steps=2)
    with pytest.raises(RulesNotMet) as refused:
        refuse_unmet(rules)
    text = str(refused.value)
    for name in ("a whatif workload", "dataset 0.154 GB", "62 steps per epoch", "2 step(s)"):
        assert name in text, text
    b200 = workload("retinanet", "b200")
    big = min_samples(b200, 1, 1, 24 * gib)
    refuse_unmet(before_rules(b200, big, 1, 1, 24 * gib, warmup_steps=1))  # every rule holds


def test_closed_rules_on_what_was_measured_need_five_runs_above_the_threshold_and_cold_reads():
    w = workload("retinanet", "b200")
    cold = {"au": 0.9, "cache": "cold (each file evicted before it is read)"}
    warm = {"au": 0.9, "cache": "warm"}
    ok = after_rules(w, [cold] * 5, [cold] * 7, 2, memory_met=False)
    assert all(r.met for r in ok)
    low = after_rules(w, [cold] * 4 + [{**cold, "au": 0.8}], [cold] * 7, 2, memory_met=False)
    assert [r.name for r in low if not r.met] == ["runs"]
    few = after_rules(w, [cold] * 3, [cold] * 5, 2, memory_met=False)
    assert [r.name for r in few if not r.met] == ["runs"]
    cached = after_rules(w, [cold] * 5, [cold, warm], 2, memory_met=False)
    assert [r.name for r in cached if not r.met] == ["cache"]
    assert all(r.met for r in after_rules(w, [cold] * 5, [cold, warm], 2, memory_met=True))


def test_the_sweep_dataset_is_generated_to_the_profile_and_again_after_an_interruption(
    tmp_path, monkeypatch
):
    from bench.sweep.dataset import sweep_dataset
    from training.distributed import ONE_RANK

    cfg = load_config(None, [f"sweep.data_dir={tmp_path}", "sweep.samples=3"], SweepConfig)
    folder = tmp_path / "retinanet_b200-3"
    (folder / "JPEGImages").mkdir(parents=True)
    (folder / "JPEGImages" / "synth_000000.jpg").write_bytes(b"cut short")  # no split file
    assert sweep_dataset(cfg, workload("retinanet"), ONE_RANK) == folder
    ids = (folder / "ImageSets/Main/train.txt").read_text().split()
    sizes = [(folder / "JPEGImages" / f"{i}.jpg").stat().st_size for i in ids]
    assert len(ids) == 3 and all(100_000 < n < 700_000 for n in sizes)  # ~323 kB samples
    monkeypatch.delenv("S3_ENDPOINT", raising=False)  # a local server's copy counts
    overrides = [f"sweep.data_dir={tmp_path}", "sweep.samples=10000000"]
    many = load_config(None, overrides, SweepConfig)
    with pytest.raises(ConfigError, match=r"146.6 MB each, 4 copies.*set sweep.samples to at most"):
        sweep_dataset(many, workload("unet3d"), ONE_RANK)  # samples, shards, the server's copy
    random_only = load_config(
        None,
        [f"sweep.data_dir={tmp_path}", "sweep.samples=10000000", "sweep.access=[random]"],
        SweepConfig,
    )
    with pytest.raises(ConfigError, match=r"2 copies: the samples, a local S3 server's copy"):
        sweep_dataset(random_only, workload("unet3d"), ONE_RANK)  # no shards written
    assert not (tmp_path / "unet3d_b200-10000000").exists()


def test_a_sweep_launch_that_does_not_fit_says_how_to_launch(tmp_path):
    from bench.sweep.run import largest_count
    from training.distributed import Ranks

    overrides = ["sweep.max_accelerators=4", f"sweep.data_dir={tmp_path}"]
    cfg = load_config(None, overrides, SweepConfig)
    with pytest.raises(ConfigError, match=r"max_accelerators is 4 but this launch has 2.*NPROC"):
        largest_count(cfg, Ranks(0, 2))
    auto = load_config(None, command=SweepConfig)
    assert largest_count(auto, Ranks(0, 6)) == 6  # auto: the launch's ranks
    points = load_config(None, ["sweep.points=[1, 2, 4]"], SweepConfig)
    assert largest_count(points, Ranks(0, 4)) == 4
    with pytest.raises(ConfigError, match=r"sweep.points \[1, 2, 4\] needs 4 ranks"):
        largest_count(points, Ranks(0, 2))
