"""MLPerf Storage workload profiles and its dataset rules."""

from __future__ import annotations

import pytest

from bench.workloads import WORKLOADS, check_rules, min_samples, workload
from training.config import ConfigError


def test_every_profile_names_its_source_and_fits_together():
    for key, w in WORKLOADS.items():
        assert key == w.key
        assert "mlcommons/storage@" in w.source or w.name == "bccd", key
        assert w.source.endswith(f"{key}.yaml") or w.name == "bccd", key
        assert w.sample_bytes > 0 and w.batch_size >= 1 and w.read_threads >= 1
        assert 0 < w.au_threshold <= 1
        assert w.computation_time_s is None or 0 < w.computation_time_s < 1
    # the values of MLPerf Storage v2.0's files (configs/dlio/workload/*.yaml at caa90c9c)
    resnet = workload("resnet50", "h100")
    assert (resnet.batch_size, resnet.samples_per_file, resnet.computation_time_s) == (
        400,
        1251,
        0.224,
    )
    assert workload("unet3d", "a100").computation_time_s == 0.636
    assert workload("retinanet").au_threshold == 0.85
    assert workload("bccd").computation_time_s is None  # measured on the machine at hand


def test_an_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no workload profile 'bert'.*resnet50_h100"):
        workload("bert")
    with pytest.raises(ConfigError, match="for accelerator 'b200'"):
        workload("unet3d", "b200")


def test_rules_need_five_times_the_memory_and_500_steps_per_accelerator():
    w = workload("retinanet", "h100")  # 153,600-byte samples, batch 16
    gib = 2**30
    # 8 accelerators on 2 hosts of 16 GiB: 5 x 32 GiB of 153.6 kB samples
    need = min_samples(w, accelerators=8, hosts=2, host_memory_bytes=16 * gib)
    assert need == max(-(-5 * 32 * gib // 153_600), 500 * 16 * 8)
    assert all(r.met for r in check_rules(w, need, 8, 2, 16 * gib))
    few = check_rules(w, 1000, 8, 2, 16 * gib)
    assert [(r.name, r.met) for r in few] == [("memory", False), ("steps", False)]
    assert "7 steps per epoch for each of 8 accelerator(s)" in few[1].text
    assert "at least 5x the memory of the 2 client node(s), 171.8 GB" in few[0].text


def test_the_sweep_dataset_is_generated_to_the_profile_and_again_after_an_interruption(
    tmp_path, monkeypatch
):
    from bench.sweep import sweep_dataset
    from training.config import load_config
    from training.distributed import ONE_RANK

    cfg = load_config(None, [f"sweep.data_dir={tmp_path}", "sweep.samples=3"])
    folder = tmp_path / "retinanet_h100-3"
    (folder / "JPEGImages").mkdir(parents=True)
    (folder / "JPEGImages" / "synth_000000.jpg").write_bytes(b"cut short")  # no split file
    assert sweep_dataset(cfg, workload("retinanet"), ONE_RANK) == folder
    ids = (folder / "ImageSets/Main/train.txt").read_text().split()
    sizes = [(folder / "JPEGImages" / f"{i}.jpg").stat().st_size for i in ids]
    assert len(ids) == 3 and all(50_000 < n < 400_000 for n in sizes)  # ~153.6 kB samples
    monkeypatch.delenv("S3_ENDPOINT", raising=False)  # a local server's copy counts
    many = load_config(None, [f"sweep.data_dir={tmp_path}", "sweep.samples=10000000"])
    with pytest.raises(ConfigError, match=r"146.6 MB each, 4 copies.*set sweep.samples to at most"):
        sweep_dataset(many, workload("unet3d"), ONE_RANK)  # samples, shards, the server's copy
    assert not (tmp_path / "unet3d_h100-10000000").exists()


def test_a_sweep_launch_that_does_not_fit_max_accelerators_says_how_to_launch(tmp_path):
    from bench.sweep import run_sweep
    from training.config import load_config
    from training.distributed import ONE_RANK

    cfg = load_config(None, ["sweep.max_accelerators=4", f"sweep.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"max_accelerators is 4 but this launch has 1.*NPROC"):
        run_sweep(cfg, tmp_path / "out", ONE_RANK)
    assert not list(tmp_path.iterdir())  # nothing generated or written
