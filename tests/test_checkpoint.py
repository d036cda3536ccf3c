"""`make checkpoint-bench`: parts made and compared byte for byte, written and read back for
real on the filesystem, on a local S3 server (rclone) and, for s3torchconnector's
distributed-checkpoint writer, on a moto S3 server (rclone's answer to CreateMultipartUpload
is one the CRT client rejects); failures become rows; two torchrun ranks write their parts at
once."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.config
import pytest
import requests
import torch

from bench.checkpoint.config import CheckpointBenchConfig, CheckpointSection
from bench.checkpoint.parts import (
    TENSOR_BYTES,
    FsLocation,
    OperationCounter,
    SaveStream,
    Transfer,
    differences,
    make_cold,
    model_parts,
    part_bytes,
    random_part,
    read,
    write,
)
from bench.checkpoint.report import answer_lines, failed, summarize, write_outputs
from bench.checkpoint.run import run_checkpoint_bench, transfer_row
from common.process import free_ports
from pipelines.storage.base import StorageError
from pipelines.storage.s3 import S3Storage
from tests.helpers import REPO, run_command
from training.config import ConfigError, load_config
from training.distributed import ONE_RANK

# -- parts --------------------------------------------------------------------------------------


def test_a_random_part_has_the_bytes_asked_for_in_tensors_named_for_its_rank():
    big = random_part(TENSOR_BYTES + 1000, 1)
    assert [t.nbytes for t in big.values()] == [TENSOR_BYTES, 1000]
    assert all(t.dtype == torch.bfloat16 for t in big.values())
    zero, one = random_part(4001, 0), random_part(4001, 1)
    assert part_bytes(zero) == part_bytes(one) == 4000  # whole bf16 values
    assert not set(zero) & set(one)  # dcp needs names unique over the ranks
    first = next(iter(zero.values())).view(torch.uint8)
    assert not torch.equal(first, next(iter(one.values())).view(torch.uint8))
    assert torch.equal(first, next(iter(random_part(4001, 0).values())).view(torch.uint8))


def test_differences_names_the_first_changed_byte_and_missing_or_extra_tensors():
    part = random_part(4000, 0)
    name = next(iter(part))
    same = {k: v.clone() for k, v in part.items()}
    assert differences(part, same) == ""
    changed = {k: v.clone() for k, v in part.items()}
    changed[name].view(torch.uint8)[1234] ^= 1
    assert differences(part, changed) == f"tensor {name!r}: 4000 bytes written, byte 1234 differs"
    assert "missing" in differences(part, {})
    assert "not written" in differences(part, {**same, "other": torch.zeros(1)})
    nan = {"x": torch.full((2,), float("nan"))}
    assert differences(nan, {"x": nan["x"].clone()}) == ""  # bit patterns, not values


def test_a_training_checkpoint_is_split_over_the_ranks_by_bytes(tmp_path):
    state = {
        "model": {"a.weight": torch.zeros(1000), "b.weight": torch.zeros(10), "c": torch.ones(3)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(990)}}, "param_groups": []},
        "epoch": 3,
    }
    torch.save(state, tmp_path / "checkpoint.pt")
    zero, one = model_parts(tmp_path, 2)
    assert sorted([*zero, *one]) == [
        "model.a.weight", "model.b.weight", "model.c", "optimizer.state.0.momentum_buffer",
    ]  # fmt: skip
    assert abs(part_bytes(zero) - part_bytes(one)) <= 40  # largest first, to the lightest rank
    with pytest.raises(ConfigError, match="no .*checkpoint.pt"):
        model_parts(tmp_path / "elsewhere", 2)
    (tmp_path / "bad" / "checkpoint.pt").parent.mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        model_parts(tmp_path / "bad", 2)


def test_the_summary_takes_the_slowest_rank_per_checkpoint_then_the_mean():
    rows = [
        transfer_row("fs", "torch.save", index, rank, "write", Transfer(s, b), "", "")
        for index, times in ((1, (1.0, 2.0, 1.0)), (2, (1.0, 4.0, 1.0)))
        for rank, (s, b) in enumerate(zip(times, (1_000_000, 1_000_000, 0), strict=True))
    ]  # rank 2 holds nothing (a model with fewer tensors than ranks)
    (summary,) = summarize(rows)
    assert summary["ranks"] == 3 and summary["checkpoints"] == 2 and summary["gb"] == 0.002
    assert summary["seconds"] == pytest.approx(3.0)  # mean of the slowest: 2 s and 4 s
    assert summary["seconds_spread"] == pytest.approx(2 / 3)
    assert summary["throughput_mbps"] == pytest.approx((2 / 2 + 2 / 4) / 2)  # job: bytes / slowest
    assert summary["slowest_rank_mbps"] == pytest.approx((0.5 + 0.25) / 2)  # lowest rank's, mean
    assert summary["requests"] is None and summary["identical"]


def test_nothing_to_evict_is_said_not_taken_for_a_cold_read(tmp_path):
    location = FsLocation(tmp_path)
    assert make_cold(location, "torch.save", 1).startswith("nothing found to evict in")
    settings = CheckpointSection()
    write("torch.save", location, 1, 0, random_part(1000, 0), settings)
    assert make_cold(location, "torch.save", 1) == "evicted"


def test_a_damaged_checkpoint_file_is_found_when_read_back(tmp_path):
    cfg = CheckpointSection()
    location, part = FsLocation(tmp_path), random_part(100_000, 0)
    write("torch.save", location, 1, 0, part, cfg)
    path = location.folder("torch.save", 1) / "rank-0.pt"
    assert not list(path.parent.glob(".*.tmp"))  # written beside, renamed into location
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "differs" in read("torch.save", location, 1, 0, part, cfg).mismatch
    path.write_bytes(bytes(data[:5000]))
    with pytest.raises(StorageError, match="damaged or truncated"):
        read("torch.save", location, 1, 0, part, cfg)


# -- S3 ------------------------------------------------------------------------------------------


def test_a_failed_serialisation_aborts_the_upload_and_stores_nothing(s3_server):
    storage = S3Storage("ckpt-abort", endpoint_url=s3_server.endpoint)
    storage.client().create_bucket(Bucket="ckpt-abort")
    with SaveStream({"fine": torch.zeros(10), "not a tensor": lambda: 0}) as stream:
        with pytest.raises(StorageError, match="torch.save failed"):
            storage.upload_stream("part.pt", stream, part_size=5 * 2**20)
    assert not storage.exists("part.pt")
    with SaveStream({"fine": torch.arange(10)}) as stream:
        storage.upload_stream("part.pt", stream)
    loaded = torch.load(io.BytesIO(storage.read("part.pt")), weights_only=True)
    assert torch.equal(loaded["fine"], torch.arange(10))


class BreakingStream(io.RawIOBase):
    """``nbytes`` bytes, then an error: a stream that breaks in the middle of an upload."""

    def __init__(self, nbytes: int):
        self.left = nbytes

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise RuntimeError("the stream broke")
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return b"x" * n


def test_a_stream_breaking_mid_multipart_upload_aborts_it(s3_server):
    storage = S3Storage("ckpt-multipart", endpoint_url=s3_server.endpoint)
    storage.client().create_bucket(Bucket="ckpt-multipart")
    operations = OperationCounter(storage.client())
    with pytest.raises(StorageError, match="the stream broke"):
        storage.upload_stream("part.pt", BreakingStream(12 * 2**20), part_size=5 * 2**20)
    counts = operations.counts()
    assert counts["CreateMultipartUpload"] == 1 and counts["AbortMultipartUpload"] == 1
    assert "CompleteMultipartUpload" not in counts
    assert not storage.exists("part.pt")


@pytest.fixture
def own_environment():
    """The run starts its local server and puts its keys in this process's environment: put
    the environment back afterwards."""
    saved = dict(os.environ)
    for name in ("S3_ENDPOINT", "S3_BUCKET"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def bench_config(tmp_path: Path, *overrides: str):
    return load_config(
        None,
        [
            "checkpoint.size_gb=0.003", "checkpoint.checkpoints=2", "checkpoint.concurrency=2",
            f"checkpoint.fs_dir={tmp_path / 'ckpt'}", *overrides,
        ],
        CheckpointBenchConfig,
    )  # fmt: skip


def test_checkpoints_round_trip_on_the_filesystem_and_a_local_s3_server(tmp_path, own_environment):
    cfg = bench_config(tmp_path)
    out = tmp_path / "out" / "20261202-000000"
    rows = run_checkpoint_bench(cfg, out, ONE_RANK)
    write_outputs(out, cfg, rows)
    done = [r for r in rows if r["direction"]]
    for storage, method in (("fs", "torch.save"), ("fs", "dcp"), ("s3", "torch.save")):
        mine = [r for r in done if (r["storage"], r["method"]) == (storage, method)]
        assert [(r["checkpoint"], r["direction"]) for r in mine] == [
            (1, "write"), (1, "read"), (2, "write"), (2, "read"),
        ], (storage, method)  # fmt: skip
        for r in mine:
            assert r["bytes"] == 3_000_000 and r["seconds"] > 0 and r["error"] == ""
            if r["direction"] == "read":
                assert r["verified"] is True and r["cache"] == "evicted"
    s3_reads = [r for r in done if r["storage"] == "s3" and r["direction"] == "read"]
    assert all("GetObject=" in r["request_kinds"] for r in s3_reads)
    s3_writes = [r for r in done if r["storage"] == "s3" and r["direction"] == "write"]
    assert all("PutObject=1" in r["request_kinds"] for r in s3_writes)  # under one part
    (skipped,) = [r for r in rows if not r["direction"]]
    assert (skipped["storage"], skipped["method"], skipped["skipped"]) == ("s3", "dcp", True)
    assert not failed(rows)
    assert not (tmp_path / "ckpt" / out.name).exists()  # what the run wrote is gone
    assert not (out / "s3-server").exists()
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    report = (out / "report.md").read_text()
    assert "fs, torch.save, 1 rank(s): write 0.003 GB" in report
    assert "every rank read back identical bytes" in report
    assert "s3, dcp (s3torchconnector): not run: the local server" in report


def test_a_storage_that_cannot_be_reached_is_a_row_and_the_run_goes_on(tmp_path, own_environment):
    cfg = bench_config(
        tmp_path,
        "checkpoint.storages=[s3, fs]",
        "checkpoint.methods=[torch.save]",
        f"storage.endpoint_url=http://127.0.0.1:{free_ports(1)[0]}",
        "storage.bucket=nowhere",
        "storage.max_attempts=1",
    )
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    rows = run_checkpoint_bench(cfg, tmp_path / "out" / "x", ONE_RANK)
    (error,) = [r for r in rows if r["storage"] == "s3"]
    assert "endpoint unreachable" in error["error"] and error["checkpoint"] == 1
    assert [r["direction"] for r in rows if r["storage"] == "fs"] == ["write", "read"] * 2
    assert failed(rows)
    assert "s3, torch.save (boto3): failed: " in "\n".join(answer_lines(rows))


def test_a_checkpoint_larger_than_memory_and_a_wrong_launch_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="lower SIZE_GB"):
        run_checkpoint_bench(
            bench_config(tmp_path, "checkpoint.size_gb=100000"), tmp_path, ONE_RANK
        )
    with pytest.raises(ConfigError, match="NPROC=N sets it"):
        run_checkpoint_bench(bench_config(tmp_path, "checkpoint.ranks=2"), tmp_path, ONE_RANK)


@pytest.fixture
def moto_endpoint(tmp_path):
    """A moto S3 server (an S3-protocol server in Python, in memory) on a free port: its
    CreateMultipartUpload answer is S3's, which the CRT client of s3torchconnector needs."""
    port = free_ports(1)[0]
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start: {(tmp_path / 'moto.log').read_text()}")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_dcp_on_s3_round_trips_through_s3torchconnector(tmp_path, own_environment, moto_endpoint):
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    config = botocore.config.Config(s3={"addressing_style": "path"})
    boto3.client("s3", endpoint_url=moto_endpoint, config=config).create_bucket(Bucket="ckpt")
    cfg = bench_config(
        tmp_path,
        "checkpoint.storages=[s3]",
        "checkpoint.methods=[dcp]",
        f"storage.endpoint_url={moto_endpoint}",
        "storage.bucket=ckpt",
    )
    rows = run_checkpoint_bench(cfg, tmp_path / "out" / "20261202-000001", ONE_RANK)
    assert [(r["checkpoint"], r["direction"]) for r in rows] == [
        (1, "write"), (1, "read"), (2, "write"), (2, "read"),
    ], rows  # fmt: skip
    for r in rows:
        assert r["client_lib"] == "s3torchconnector" and r["error"] == ""
        assert r["bytes"] == 3_000_000 and r["requests"] == ""  # the CRT does not count
    assert all(r["verified"] is True for r in rows if r["direction"] == "read")
    assert rows[1]["cache"].startswith("new client")
    left = boto3.client("s3", endpoint_url=moto_endpoint, config=config).list_objects_v2(
        Bucket="ckpt"
    )
    assert left.get("KeyCount", 0) == 0  # each checkpoint deleted after it was read


# -- ranks ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_two_ranks_write_and_read_their_parts_at_once(tmp_path):
    out = tmp_path / "out"
    code, log = run_command(
        "scripts.checkpoint_bench", "--out", str(out),
        "--set", "checkpoint.ranks=2", "--set", "checkpoint.size_gb=0.004",
        "--set", "checkpoint.checkpoints=1", "--set", f"checkpoint.fs_dir={tmp_path / 'ck'}",
        "--set", "train.dist_timeout_s=60",
    )  # fmt: skip
    assert code == 0, log[-3000:]
    (run,) = out.iterdir()
    with open(run / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["direction"]]
    for storage, method in (("fs", "torch.save"), ("fs", "dcp"), ("s3", "torch.save")):
        mine = [r for r in rows if (r["storage"], r["method"]) == (storage, method)]
        assert sorted((r["rank"], r["direction"]) for r in mine) == [
            ("0", "read"), ("0", "write"), ("1", "read"), ("1", "write"),
        ], (storage, method)  # fmt: skip
        assert all(r["bytes"] == "2000000" for r in mine)
        assert all(r["verified"] == "True" for r in mine if r["direction"] == "read")
    assert "fs, dcp, 2 rank(s): write 0.004 GB" in (run / "report.md").read_text()
    assert "Traceback" not in log
    assert not any((tmp_path / "ck").iterdir())


def test_s3dlio_checkpoints_round_trip_on_an_s3_server(tmp_path, moto_endpoint):
    """torch.save's objects through s3dlio's multipart writer, in a process of its own (s3dlio
    keeps one endpoint per process); rclone's local server cannot take them (not run there)."""
    from bench.checkpoint.run import not_run_because

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    keys = dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    env.update(keys, AWS_DEFAULT_REGION="us-east-1")
    config = botocore.config.Config(s3={"addressing_style": "path"})
    client = boto3.client("s3", endpoint_url=moto_endpoint, config=config, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket="ckpt")
    out = subprocess.run(
        [sys.executable, "-m", "scripts.checkpoint_bench", "--out", str(tmp_path / "out"),
         "--s3-endpoint", moto_endpoint, "--s3-bucket", "ckpt",
         "--set", "checkpoint.storages=[s3]", "--set", "checkpoint.methods=[s3dlio]",
         "--set", "checkpoint.size_gb=0.003", "--set", "checkpoint.checkpoints=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (results,) = (tmp_path / "out").glob("*/results.csv")
    with open(results, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["checkpoint"], r["direction"]) for r in rows] == [
        ("1", "write"), ("1", "read"), ("2", "write"), ("2", "read"),
    ], rows  # fmt: skip
    for r in rows:
        assert (r["client_lib"], r["error"], r["bytes"]) == ("s3dlio", "", "3000000"), r
    assert all(r["verified"] == "True" for r in rows if r["direction"] == "read")
    assert client.list_objects_v2(Bucket="ckpt").get("KeyCount", 0) == 0  # deleted after reading
    local = type("Local", (), {"local_dir": tmp_path})()
    assert "rclone serve s3" in not_run_because("s3", "s3dlio", local)
    assert "S3 client" in not_run_because("fs", "s3dlio", local)
