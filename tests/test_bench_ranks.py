"""The benchmark's ranks: which ranks read at each count, how a pass's row is made from its ranks'
parts, and what a launch that does not fit ``bench.ranks`` says (no process group); then
``bench.ranks: [1, 2]`` for real, the bench starting its two gloo ranks itself."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.loading.case import PassPart, combine, rank_samples
from bench.ranks import BenchRanks, RankSubset, check_counts, spread
from bench.resources import CpuUse
from pipelines.storage.base import RequestStats
from tests.helpers import REPO, finish
from training.config import ConfigError
from training.distributed import ONE_RANK


def test_the_ranks_in_use_are_spread_over_the_nodes():
    # two nodes of three ranks: global rank = node * 3 + local rank
    places = [(node, local) for node in (0, 1) for local in range(3)]
    order = spread(places)
    assert order == [0, 3, 1, 4, 2, 5]
    for k in range(1, 7):
        nodes = [places[r][0] for r in order[:k]]
        assert abs(nodes.count(0) - nodes.count(1)) <= 1  # as even as k allows
    subset = RankSubset(tuple(order[:4]))
    assert [subset.part(r) for r in range(6)] == [0, 2, None, 1, 3, None]
    node_of = [node for node, _ in places]
    evicting = [r for r in range(6) if subset.first_on_node(r, node_of)]
    assert evicting == [0, 3]  # one rank per node drops its page cache before a cold pass


def test_one_rank_without_a_process_group():
    bench_ranks = BenchRanks(ONE_RANK, [1])
    assert bench_ranks.subset(1) == RankSubset((0,)) and bench_ranks.nodes == 1


def test_a_launch_that_does_not_fit_bench_ranks_says_how_to_launch():
    check_counts([1, 2, 4], 4)
    with pytest.raises(ConfigError, match=r"needs 4 ranks but this launch has 2.*NPROC"):
        check_counts([1, 2, 4], 2)
    with pytest.raises(ConfigError, match="needs 1 ranks but this launch has 2"):
        check_counts([1], 2)  # a rank that would only ever wait
    with pytest.raises(ConfigError, match="empty"):
        check_counts([], 1)


def part(rank: int, node: int, *, samples, nbytes, wall, compute, wait, host_s) -> PassPart:
    row = {
        "epoch": 0, "steps": 3, "samples": samples, "skipped": 0, "bytes_read": nbytes,
        "read_s": 0.5, "data_wait_s": wait, "compute_s": compute, "wall_s": wall,
        "au": compute / wall, "loss": float("nan"),
    }  # fmt: skip
    requests = RequestStats(requests=samples, ttfb_s=[0.001 * (rank + 1)] * samples)
    return PassPart(row, [], requests, CpuUse(wall, 1.0 + rank, host_s), (rank + 1) * 2**20, node)


def test_a_pass_row_is_the_sum_mean_and_max_of_its_ranks():
    parts = [
        part(0, 0, samples=6, nbytes=600, wall=2.0, compute=1.0, wait=0.4, host_s=4.0),
        part(1, 0, samples=4, nbytes=400, wall=4.0, compute=3.0, wait=0.8, host_s=4.2),
        part(2, 1, samples=2, nbytes=200, wall=1.0, compute=0.5, wait=0.1, host_s=3.0),
    ]
    row = combine(parts)
    assert row["ranks"] == 3 and row["samples"] == 12 and row["bytes_read"] == 1200
    assert row["wall_s"] == 4.0  # the slowest rank's
    assert row["throughput_mbps"] == pytest.approx(1200 / 4.0 / 1e6)
    assert row["samples_per_s"] == pytest.approx(12 / 4.0)
    assert row["au"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert row["au_min"] == 0.5 and row["data_wait_max_s"] == 0.8
    assert row["requests"] == 12 and row["ttfb_p99_ms"] == pytest.approx(3.0)
    assert row["peak_rss_mib"] == 1 + 2 + 3  # every rank's processes hold memory at once
    # the client's CPU is every rank's; the machine's is counted once per node (4.0 + 3.0)
    assert row["cpu_ms_per_mb"] == pytest.approx((1 + 2 + 3) * 1e3 / (1200 / 1e6))
    assert row["host_busy_cores"] == pytest.approx((4.0 + 3.0) / 4.0)
    assert row["data_wait_share"] == pytest.approx(row["data_wait_s"] / 4.0)


def test_each_rank_has_enough_samples_for_the_steps_of_a_pass():
    class Shard:
        def __init__(self, samples):
            self.samples = samples

    records = list(range(100))
    assert rank_samples(records, None, 1) == 100
    assert rank_samples(records, None, 3) == 33
    # shards are dealt one in two: each rank gets at least one, at least the smallest
    assert rank_samples(records, [Shard(30), Shard(40), Shard(30)], 2) == 30
    assert rank_samples(records, [Shard(50), Shard(50)], 2) == 50


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def bench_ranks(voc: Path, out: Path, *sets: str) -> subprocess.Popen:
    """``python -m scripts.bench`` on ``voc`` with a small read-only matrix, no S3 endpoint
    from this environment, ``--set`` overrides ``sets``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    command = [
        sys.executable, "-m", "scripts.bench", "--out", str(out), "--workers", "0",
        "--batch-size", "2", "--set", f"storage.root={voc}", "--set", "storage.prefixes=['']",
        "--set", "dataset.shard_size_mb=0.03", "--set", "bench.modes=[read]",
        "--set", "bench.read_steps=3", "--set", "bench.warmup_steps=1",
        "--set", "bench.passes=1", "--set", "bench.peers=false", "--set", "bench.repeats=1",
        "--set", "bench.client_libs=[boto3]",
        "--set", "model.image_size=64", "--set", "bench.ranks=[1, 2]",
        "--set", "train.dist_timeout_s=60",
    ]  # fmt: skip
    for override in sets:
        command += ["--set", override]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.distributed
def test_a_configuration_failing_on_its_ranks_is_a_row_and_the_ranks_go_on(tmp_path):
    """One shard for two ranks: the two-rank shards pass fails on both ranks, which agree
    on it; its row has the error, the next configuration still runs on both, and the run
    ends with exit status 1 (a configuration failed), as in one process."""
    from tests.helpers import make_voc_subset

    voc = make_voc_subset(tmp_path / "bccd", {"train": 6, "test": 1})
    out = tmp_path / "bench"
    proc = bench_ranks(
        voc, out, "bench.storages=[fs]", "bench.access=[shards, random]",
        "dataset.shard_size_mb=10", "bench.baselines=false",
    )  # fmt: skip
    code, log = finish(proc)
    assert code == 1, log[-3000:]
    (run,) = out.iterdir()
    rows = {r["config"]: r for r in read_rows(run / "results.csv")}
    assert "1 shard(s) for 2 ranks" in rows["fs/shards/read/w0/r2"]["error"]
    for ok in ("fs/shards/read/w0", "fs/random/read/w0", "fs/random/read/w0/r2"):
        assert not rows[ok]["error"] and int(rows[ok]["samples"]) > 0, ok
    assert "failed: fs/shards/read/w0/r2 (errors in results.csv" in log
    assert "Traceback" not in log


@pytest.mark.integration
@pytest.mark.distributed
def test_bench_runs_every_configuration_at_each_rank_count(tmp_path):
    """`bench.ranks: [1, 2]` without torchrun: the bench starts two ranks itself; every
    configuration (fs and the local S3 server, the three patterns) runs on one rank, then on
    two at once; a two-rank row is its ranks' steps summed, both ranks in step; the baseline
    reads at the same total concurrency."""
    from tests.helpers import make_voc_subset

    voc = make_voc_subset(tmp_path / "bccd", {"train": 12, "test": 2})
    out = tmp_path / "bench"
    proc = bench_ranks(voc, out)
    code, log = finish(proc)
    assert code == 0, log[-3000:]
    (run,) = out.iterdir()
    rows, steps = read_rows(run / "results.csv"), read_rows(run / "steps.csv")
    assert not [r for r in rows if r["error"]]
    names = [r["config"] for r in rows]
    for storage in ("fs", "s3/boto3"):
        for access in ("random", "objects", "shards"):
            assert f"{storage}/{access}/read/w0" in names
            assert f"{storage}/{access}/read/w0/r2" in names
    for row in rows:
        mine = [s for s in steps if s["case"] == row["config"]]
        per_rank = Counter(s["rank"] for s in mine)
        ranks = int(row["ranks"])
        assert sorted(per_rank) == [str(r) for r in range(ranks)], row["config"]
        assert set(per_rank.values()) == {int(row["steps"])} == {3}  # in step
        for key in ("samples", "bytes_read", "requests"):
            assert int(row[key]) == sum(int(s[key]) for s in mine), (row["config"], key)
        assert float(row["au_min"]) <= float(row["au"])
        assert float(row["data_wait_max_s"]) >= float(row["data_wait_s"])
    report = (run / "report.md").read_text()
    assert "fs/random/read/w0/r2 | 0 | fs-read-cold (2 threads)" in report
    assert "s3/boto3/random/read/w0/r2 | 0 | s3-get-cold (16 threads)" in report
    assert "Traceback" not in log
