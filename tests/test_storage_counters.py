"""Request counters are exact under concurrency, for every storage: the objects pattern reads
from ``access.concurrency`` threads, and a lost update would make fs and S3 rows disagree."""

from __future__ import annotations

import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from pipelines.storage.s3_connector import S3ConnectorStorage

THREADS, READS = 8, 100
_numbers = itertools.count()


def hammer(storage, keys: list[str]) -> None:
    """``THREADS`` threads, each reading every key of ``keys`` (``READS`` of them) and taking
    the stats now and then, as the objects pattern does for each sample: every request is
    counted once, with its TTFB in the same snapshot."""
    taken = []

    def reader(_):
        for key in keys:
            storage.read(key)
            taken.append(storage.take_stats())

    storage.connect()
    storage.take_stats()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that an unlocked update races
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(reader, range(THREADS)))
    finally:
        sys.setswitchinterval(interval)
    taken.append(storage.take_stats())
    assert sum(t.requests for t in taken) == THREADS * READS
    assert sum(len(t.ttfb_s) for t in taken) == THREADS * READS
    assert all(t.requests == len(t.ttfb_s) for t in taken)  # no request split from its TTFB


def test_filesystem_counters_are_exact_under_threads(tmp_path):
    for i in range(READS):
        (tmp_path / f"{i}.bin").write_bytes(b"x" * 100)
    hammer(FileSystemStorage(tmp_path), [f"{i}.bin" for i in range(READS)])


@pytest.mark.integration
@pytest.mark.parametrize("client", ["boto3", "s3torchconnector"])
def test_s3_counters_are_exact_under_threads(s3_server, client):
    bucket = f"count-{os.getpid()}-{next(_numbers)}"
    boto = S3Storage(bucket, endpoint_url=s3_server.endpoint, max_pool_connections=THREADS)
    boto.client().create_bucket(Bucket=bucket)
    keys = [f"k/{i}.bin" for i in range(READS)]
    for key in keys:
        boto.write(key, b"y" * 100)
    if client == "boto3":
        storage = boto
    else:
        storage = S3ConnectorStorage(bucket, endpoint_url=s3_server.endpoint)
    hammer(storage, keys)
