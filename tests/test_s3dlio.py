"""storage.client_lib: s3dlio (MLPerf Storage v3.0's object client) — the same Storage interface,
against the real local S3 server: reads, ranges, bounded streams, listing, writes, exact figures,
one-line errors, DataLoader workers, and an environment left as it was."""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys

import pytest
import torch

from pipelines.storage.base import ObjectNotFound, StorageError
from pipelines.storage.s3dlio_storage import S3dlioStorage
from tests.helpers import REPO, small_bucket

pytestmark = pytest.mark.integration
_numbers = itertools.count()


@pytest.fixture
def stores(s3_server):
    """(boto3 storage to set up objects, s3dlio storage to test) on a fresh bucket."""
    bucket = f"dlio-{os.getpid()}-{next(_numbers)}"
    boto = small_bucket(s3_server.endpoint, bucket)
    return boto, S3dlioStorage(bucket, endpoint_url=s3_server.endpoint)


def test_reads_lists_writes_and_counts_like_the_boto3_storage(stores):
    boto, dlio = stores
    assert dlio.read("d/a.jpg") == boto.read("d/a.jpg") == b"first object"
    part, ranged = dlio.fetch_range("d/a.jpg", 6, 100)
    assert part == b"object"
    assert dlio.size("d/b.jpg") == 6 and dlio.exists("d/b.jpg") and not dlio.exists("d/zz")
    with dlio.open("d/b.jpg") as f:
        assert f.read(3) + f.read() == b"second"
        opened = f.stats()
    assert list(dlio.list("d")) == ["d/a.jpg", "d/b.jpg"] and list(dlio.list("none")) == []
    whole = dlio.fetch("d/a.jpg")[1]
    for stats, nbytes in ((whole, 12), (ranged, 6), (opened, 6)):  # each read, one GET
        assert (stats.nbytes, stats.requests, stats.ttfb_s) == (nbytes, 1, ())  # no TTFB exposed
    assert dlio.versions(["d/a.jpg", "d/zz"]) == {
        k: v for k, v in boto.versions(["d/a.jpg"]).items()
    }
    dlio.write("w/new", b"written")
    assert boto.read("w/new") == b"written"
    dlio.delete("w/new")
    dlio.delete("w/new")  # a missing object is fine
    assert not boto.exists("w/new")


def test_put_file_uploads_a_local_file_in_one_put(stores, tmp_path):
    boto, dlio = stores
    path = tmp_path / "part.bin"
    path.write_bytes(os.urandom(9 * 2**20))  # more than one 8 MiB piece
    dlio.put_file("up/part.bin", path)
    assert boto.read("up/part.bin") == path.read_bytes()
    with pytest.raises(StorageError, match="cannot upload .*missing.bin"):
        dlio.put_file("up/x", tmp_path / "missing.bin")


def test_missing_object_is_object_not_found_and_named_in_one_line(stores):
    _, dlio = stores
    with pytest.raises(ObjectNotFound, match=r"s3://dlio-\d+-\d+/d/nope .*s3dlio.*check the key"):
        dlio.read("d/nope")
    with pytest.raises(ObjectNotFound) as missing:
        dlio.size("d/nope")
    assert "\n" not in str(missing.value) and missing.value.stats.errors == (("NoSuchKey", 1),)


def test_open_streams_in_bounded_ranged_gets(stores, monkeypatch):
    """One ranged GET per window, one window held: exact bytes, and one more GET that finds
    the end when the size is a multiple of the window."""
    import pipelines.storage.s3dlio_storage as module

    boto, dlio = stores
    data = os.urandom(100_000)
    boto.write("big/shard.tar", data)
    boto.write("big/odd.tar", data[:99_999])
    monkeypatch.setattr(module, "STREAM_WINDOW", 10_000)
    with dlio.open("big/shard.tar") as stream:
        got = []
        while piece := stream.read(3_333):
            got.append(piece)
            assert len(stream.raw._part) <= 10_000
    assert b"".join(got) == data
    assert (stream.stats().requests, stream.stats().nbytes) == (11, 100_000)
    with dlio.open("big/odd.tar") as stream:
        assert stream.read() == data[:99_999]
    assert stream.stats().requests == 10
    assert dlio.read_range("big/shard.tar", 100_000, 5) == b""  # past the end, as a file


def test_the_environment_is_left_as_it_was_and_one_endpoint_serves_a_process(stores):
    _, dlio = stores
    before = dict(os.environ)
    dlio.read("d/a.jpg")
    assert dict(os.environ) == before  # AWS_ENDPOINT_URL and the rest were set for the client only
    other = S3dlioStorage(dlio.bucket, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="already serves http://127.0.0.1:.*one endpoint"):
        other.read("d/a.jpg")


class _Keys(torch.utils.data.Dataset):
    def __init__(self, storage, keys):
        self.storage, self.keys = storage, keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return len(self.storage.read(self.keys[i]))


def test_dataloader_workers_after_the_main_process_read(stores):
    """s3dlio's client does not survive fork: workers start from a fork server and build their own
    (a forked one would hang)."""
    from pipelines.storage.base import worker_context

    _, dlio = stores
    dlio.read("d/a.jpg")  # the main process's client exists now
    copy = pickle.loads(pickle.dumps(dlio))
    loader = torch.utils.data.DataLoader(
        _Keys(copy, ["d/a.jpg", "d/b.jpg", "e/c"]), batch_size=None, num_workers=2,
        multiprocessing_context=worker_context(dlio), timeout=60,
    )  # fmt: skip
    assert sorted(int(n) for n in loader) == [1, 6, 12]


_PROBE = """
import sys
from pipelines.storage.s3dlio_storage import S3dlioStorage
from pipelines.storage.base import StorageError
try:
    S3dlioStorage(sys.argv[1], endpoint_url=sys.argv[2], max_attempts=1).read("d/a.jpg")
except StorageError as exc:
    print("error:", exc)
"""


@pytest.mark.parametrize("case", ["wrong keys", "no server"])
def test_wrong_credentials_and_an_unreachable_endpoint_are_one_line_errors(stores, case):
    """In a process of its own (s3dlio keeps one client per process), never a hang."""
    from common.process import free_ports

    _, dlio = stores
    env = dict(os.environ)
    endpoint = dlio.endpoint_url
    if case == "wrong keys":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-key-" + "x" * 28
    else:
        endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, dlio.bucket, endpoint], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: s3://dlio-"), out.stdout + out.stderr
    assert "s3dlio" in lines[0] and "check the endpoint" in lines[0]
    assert env["AWS_SECRET_ACCESS_KEY"] not in out.stdout + out.stderr


def test_bench_measures_every_pattern_with_s3dlio_against_the_raw_baseline(tmp_path):
    """``make bench`` with ``bench.client_libs=[s3dlio]`` over the local server it starts (in a
    process of its own: s3dlio keeps one endpoint per process), with 2 DataLoader workers."""
    import csv

    from tests.helpers import make_voc_subset

    voc = make_voc_subset(tmp_path / "bccd", {"train": 12, "test": 2})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    command = [
        sys.executable, "-m", "scripts.bench", "--out", str(tmp_path / "out"), "--workers", "0",
        "--batch-size", "2", "--set", f"storage.root={voc}", "--set", "storage.prefixes=['']",
        "--set", "dataset.shard_size_mb=0.1", "--set", "bench.modes=[read]",
        "--set", "bench.read_steps=4", "--set", "bench.warmup_steps=1",
        "--set", "model.image_size=64", "--set", "bench.repeats=1", "--set", "bench.storages=[s3]",
        "--set", "bench.client_libs=[s3dlio]", "--set", "bench.worker_counts=[2]",
        "--set", "bench.access=[random, shards]",  # objects with s3dlio: the training tests
    ]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (results,) = (tmp_path / "out").glob("*/results.csv")
    with open(results, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["access"], r["pass"]) for r in rows] == [
        (a, p)
        for a in ("random", "shards")
        for p in ("0", "1")  # cold (evicting), warm
    ]
    for r in rows:
        assert (r["client_lib"], r["error"], r["samples"]) == ("s3dlio", "", "8"), r
        assert float(r["baseline_mbps"]) > 0 and float(r["ratio_to_baseline"]) > 0
        assert r["ttfb_p50_ms"] == "nan"  # not exposed by s3dlio
        if r["access"] == "random":
            assert r["requests"] == r["samples"]  # one GET per sample
    warm_random = rows[1]  # compared with s3dlio's own ObjectStoreMapDataset
    assert float(warm_random["peer_samples_per_s"]) > 0 and float(warm_random["ratio_to_peer"]) > 0
    assert "| s3dlio-map |" in (results.parent / "report.md").read_text()
