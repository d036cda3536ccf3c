"""`make bench` end to end on a few BCCD images: filesystem + a local S3 server it starts itself."""

from __future__ import annotations

import csv
import re

import pytest

from bench.loading.case import Case, expand_matrix
from bench.loading.config import BenchConfig
from bench.loading.report import RESULT_COLUMNS, plot_throughput
from scripts import bench as bench_cli
from training.config import load_config

pytestmark = pytest.mark.integration


def test_matrix_is_every_combination_storage_major():
    overrides = ["bench.worker_counts=[0, 2]", "bench.client_libs=[boto3, s3torchconnector]"]
    cfg = load_config(None, overrides, BenchConfig)
    cases = expand_matrix(cfg)
    assert len(cases) == 3 * 3 * 2 * (1 + 2)  # modes x access x workers x (fs + 2 s3 clients)
    assert cases[0] == Case("read", "random", "fs", "-", 0)
    assert [c.storage for c in cases] == sorted((c.storage for c in cases), key=["fs", "s3"].index)
    assert cases[-1].name == "s3/s3torchconnector/shards/train/w2"


def test_bench_writes_results_steps_report_and_plots(voc_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    code = bench_cli.main([
        "--out", str(tmp_path / "bench"), "--workers", "0", "--batch-size", "2",
        "--set", f"storage.root={voc_root}", "--set", "storage.prefixes=['']",
        "--set", "dataset.shard_size_mb=0.1",
        "--set", "bench.modes=[read, emulate]", "--set", "bench.steps=2",
        "--set", "bench.read_steps=8",
        "--set", "bench.warmup_steps=1", "--set", "bench.computation_time_s=0.01",
        "--set", "model.image_size=64", "--set", "bench.repeats=1",
        "--set", "bench.client_libs=[s3torchconnector]",  # boto3's S3 rows: tests below
    ])  # fmt: skip
    assert code == 0
    (run,) = (tmp_path / "bench").iterdir()
    for name in ("results.csv", "steps.csv", "report.md", "config.yaml",
                 "throughput.png", "data_wait.png", "au.png"):  # fmt: skip
        assert (run / name).stat().st_size > 0, name
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == RESULT_COLUMNS
    assert len(rows) == 2 * 3 * 2 * 2  # modes x access x (fs, S3) x passes
    assert {r["cache"] for r in rows if r["pass"] == "0"} == {
        "cold (each file evicted before it is read)"  # fs, and the local S3 server's files
    }
    assert {r["cache"] for r in rows if r["pass"] == "1"} == {"warm"}
    for r in rows:
        # emulate: 2 measured steps of batch 2; read: 8, over two epochs of the 12 images, cold
        # (every file evicted before it is read) as warm
        expected = 4 if r["mode"] == "emulate" else 16
        assert int(r["samples"]) == expected, r["config"]
        assert float(r["baseline_mbps"]) > 0 and float(r["ratio_to_baseline"]) > 0
        assert float(r["peak_rss_mib"]) > 0
        cpu_columns = [c for c in RESULT_COLUMNS if "cpu_ms_per_mb" in c or "_cores" in c]
        assert len(cpu_columns) == 8 and all(float(r[c]) >= 0 for c in cpu_columns), [
            (c, r[c]) for c in cpu_columns
        ]
    s3_random = [r for r in rows if r["storage"] == "s3" and r["access"] == "random"]
    assert all(r["requests"] == r["samples"] for r in s3_random)  # one GET per sample
    warm_reads = [r for r in rows if r["mode"] == "read" and r["pass"] == "1"]
    compared = {
        (r["storage"], r["client_lib"], r["access"])
        for r in warm_reads
        if r["ratio_to_peer"] != "nan"
    }  # on S3 with the peers' own client library, the AWS CRT
    assert compared == {
        ("fs", "-", "random"), ("fs", "-", "shards"),
        ("s3", "s3torchconnector", "random"), ("s3", "s3torchconnector", "objects"),
    }  # fmt: skip
    emulate = [r for r in rows if r["mode"] == "emulate"]
    assert all(0 < float(r["au"]) <= 1 for r in emulate)
    assert sum(float(r["cpu_ms_per_mb"]) for r in rows) > 0  # the loaders' CPU is counted
    assert all(float(r["baseline_s"]) > 0 for r in rows)  # the column added last
    report = (run / "report.md").read_text()
    assert "| busy cores | CPU ms/MB (process / machine) |" in report
    # the answer first, per storage and access pattern; no development goal as a verdict
    assert report.startswith("# Storage benchmark report\n\n## Answer\n")
    answer = report.split("## Results")[0]
    for label in ("fs, random, 0 workers", "s3 (s3torchconnector), shards, 0 workers"):
        assert f"- **{label}**: " in answer and "the emulated accelerator busy" in answer
    assert "Performance goals" not in report and "NOT met" not in report
    out = capsys.readouterr().out
    assert "fs/random/read/w0" in out and "report:" in out
    assert out.index("fs, objects, 0 workers: ") < out.index("fs/objects/read/w0")


def test_each_pass_is_repeated_interleaved_with_its_baseline_and_peer(voc_root, tmp_path):
    code = bench_cli.main([
        "--out", str(tmp_path / "bench"), "--workers", "0", "--batch-size", "2",
        "--set", f"storage.root={voc_root}", "--set", "storage.prefixes=['']",
        "--set", "dataset.shard_size_mb=0.1", "--set", "bench.storages=[fs]",
        "--set", "bench.modes=[read]", "--set", "bench.access=[random, shards]",
        "--set", "bench.read_steps=8", "--set", "bench.warmup_steps=1",
        "--set", "model.image_size=64", "--set", "bench.repeats=2",
    ])  # fmt: skip
    assert code == 0
    (run,) = (tmp_path / "bench").iterdir()
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2  # access x passes x repeats
    by_pass: dict[tuple, list[dict]] = {}
    for r in rows:
        by_pass.setdefault((r["config"], r["pass"]), []).append(r)
    for group in by_pass.values():  # each pass measured twice, each with its own baseline
        assert [r["repeat"] for r in group] == ["0", "1"]
        ratios = sorted(float(r["ratio_to_baseline"]) for r in group)
        median = float(group[0]["ratio_to_baseline_median"])  # the CSV keeps 6 digits
        assert median == pytest.approx(sum(ratios) / 2, rel=1e-4)
        assert (float(group[0]["ratio_to_baseline_min"]), float(group[0]["ratio_to_baseline_max"])
                ) == pytest.approx(tuple(ratios), rel=1e-4)  # fmt: skip
        spread = (ratios[1] - ratios[0]) / (sum(ratios) / 2)
        assert ("baseline" in group[0]["unstable"]) == (spread > 0.10)
        if group[0]["pass"] == "1":  # warm: the peer measured again after each repeat
            peer = [float(r["peer_samples_per_s"]) for r in group]
            assert peer[0] != peer[1] and all(p > 0 for p in peer)
            assert float(group[0]["ratio_to_peer_median"]) > 0
    report = (run / "report.md").read_text()
    assert "interleaved with its baseline and peer" in report
    assert re.search(r"fs/random/read/w0 +1 warm .* \d\.\d+ \(\d\.\d+-\d\.\d+\)", report)


def test_limit_makes_a_quick_look_that_set_overrides():
    def config(*argv):
        return bench_cli.bench_config(bench_cli.get_args_parser().parse_args(argv))

    full = config()
    assert (full.dataset.limit, full.bench.read_steps, full.bench.steps) == (None, 500, 12)
    quick = config("--limit", "40", "--batch-size", "4")
    assert quick.dataset.limit == 40
    assert quick.bench.read_steps + quick.bench.warmup_steps == 10  # the 40 images, once
    assert quick.bench.steps == bench_cli.QUICK_STEPS
    assert quick.bench.passes == full.bench.passes and quick.bench.modes == full.bench.modes
    large = config("--limit", "100000")
    assert large.bench.read_steps == full.bench.read_steps  # never more steps than configured
    chosen = config("--limit", "40", "--set", "bench.steps=7", "--set", "bench.read_steps=50")
    assert (chosen.bench.steps, chosen.bench.read_steps) == (7, 50)


def test_throughput_plot_without_baselines(tmp_path):
    """``bench.baselines: false`` leaves every baseline NaN: the plot is still drawn."""
    rows = [
        {"config": f"fs/{a}/read/w2", "mode": "read", "throughput_mbps": 12.5,
         "baseline_mbps": float("nan")}
        for a in ("random", "shards")
    ]  # fmt: skip
    plot_throughput(rows, tmp_path / "throughput.png")
    assert (tmp_path / "throughput.png").stat().st_size > 1000


def bench_with_unreachable_s3(voc_root, out, *extra):
    """A small matrix whose S3 configurations, which come last, cannot reach their endpoint
    (nothing listens on port 1): a real failure late in the run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "AKAAAAAAAAAAAAAAAAAA")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "s" * 40)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        return _bench(voc_root, out, *extra)


def _bench(voc_root, out, *extra):
    return bench_cli.main([
        "--out", str(out), "--workers", "0", "--batch-size", "2",
        "--set", f"storage.root={voc_root}", "--set", "storage.prefixes=['']",
        "--set", "dataset.shard_size_mb=0.1", "--set", "model.image_size=64",
        "--set", "bench.modes=[read]", "--set", "bench.access=[random, shards]",
        "--set", "bench.read_steps=3", "--set", "bench.warmup_steps=0",
        "--set", "bench.passes=1", "--set", "bench.peers=false", "--set", "bench.repeats=1",
        "--set", "bench.client_libs=[boto3]",
        "--s3-endpoint", "http://127.0.0.1:1", "--s3-bucket", "nowhere",
        "--set", "storage.max_attempts=1", "--set", "storage.connect_timeout_s=1",
        *extra,
    ])  # fmt: skip


def test_a_failing_configuration_gets_an_error_row_and_the_run_goes_on(voc_root, tmp_path, capsys):
    """The issue's case: rows were kept in memory and written at the end, so a failure in the
    last configuration lost every pass before it."""
    code = bench_with_unreachable_s3(voc_root, tmp_path / "bench")
    assert code == 1
    (run,) = (tmp_path / "bench").iterdir()
    with open(run / "results.csv", newline="") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert set(rows) == {
        "fs/random/read/w0", "fs/shards/read/w0", "s3/boto3/random/read/w0",
        "s3/boto3/shards/read/w0",
    }  # fmt: skip
    for name in ("fs/random/read/w0", "fs/shards/read/w0"):
        assert int(rows[name]["samples"]) == 6 and not rows[name]["error"]
    for name in ("s3/boto3/random/read/w0", "s3/boto3/shards/read/w0"):
        assert (
            "endpoint unreachable" in rows[name]["error"] and "127.0.0.1:1" in rows[name]["error"]
        )
    report = (run / "report.md").read_text()
    assert "## Failed configurations" in report and "s3/boto3/shards/read/w0 (pass 0)" in report
    captured = capsys.readouterr()
    assert re.search(r"s3/boto3/random/read/w0 +0 FAILED: s3://nowhere", captured.out)
    assert "failed: s3/boto3/random/read/w0, s3/boto3/shards/read/w0" in captured.err


def test_on_error_stop_ends_the_run_and_keeps_the_passes_before(voc_root, tmp_path, capsys):
    code = bench_with_unreachable_s3(voc_root, tmp_path / "bench", "--set", "bench.on_error=stop")
    assert code == 2
    err = capsys.readouterr().err  # the progress bars of the passes, then the error
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: s3://nowhere") and "unreachable" in last
    assert "Traceback" not in err
    (run,) = (tmp_path / "bench").iterdir()
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["fs/random/read/w0", "fs/shards/read/w0"]
