"""storage.client_lib: s3torchconnector — the same Storage interface over AWS's CRT client,
against the real local S3 server."""

from __future__ import annotations

import itertools
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.storage.base import ObjectNotFound
from pipelines.storage.s3_connector import S3ConnectorStorage
from tests.helpers import small_bucket

pytestmark = pytest.mark.integration
_numbers = itertools.count()


@pytest.fixture
def stores(s3_server):
    """(boto3 storage to set up objects, s3torchconnector storage to test) on a fresh bucket."""
    bucket = f"crt-{os.getpid()}-{next(_numbers)}"
    boto = small_bucket(s3_server.endpoint, bucket)
    return boto, S3ConnectorStorage(bucket, endpoint_url=s3_server.endpoint)


def test_reads_lists_and_counts_like_the_boto3_storage(stores):
    boto, crt = stores
    assert crt.read("d/a.jpg") == boto.read("d/a.jpg") == b"first object"
    part, ranged = crt.fetch_range("d/a.jpg", 6, 100)
    assert part == b"object"
    assert crt.size("d/b.jpg") == 6 and crt.exists("d/b.jpg") and not crt.exists("d/zz")
    with crt.open("d/b.jpg") as f:
        assert f.read(3) + f.read() == b"second"
        opened = f.stats()
    assert sorted(crt.list("d")) == ["d/a.jpg", "d/b.jpg"]
    whole = crt.fetch("d/a.jpg")[1]
    for stats, nbytes in ((whole, 12), (ranged, 6), (opened, 6)):  # each read, one GET
        assert (stats.nbytes, stats.requests, len(stats.ttfb_s)) == (nbytes, 1, 1)


def test_missing_object_is_object_not_found_and_named(stores):
    _, crt = stores
    with pytest.raises(
        ObjectNotFound, match=r"s3://crt-\d+-\d+/d/nope .*s3torchconnector.*check the key"
    ):
        crt.read("d/nope")


def test_pickles_for_dataloader_workers(stores):
    _, crt = stores
    crt.read("d/a.jpg")
    copy = pickle.loads(pickle.dumps(crt))
    assert copy._client is None and copy.read("e/c") == b"x"


def test_open_streams_in_bounded_ranged_gets(stores, monkeypatch):
    """A stream is read in ranged GETs of STREAM_WINDOW bytes, one in flight at a time, so
    memory never holds more than one window: exact bytes, one GET per window (plus one that
    finds the end when the size is a multiple of the window)."""
    import pipelines.storage.s3_connector as connector

    boto, crt = stores
    data = os.urandom(100_000)
    boto.write("big/shard.tar", data)
    boto.write("big/odd.tar", data[:99_999])
    monkeypatch.setattr(connector, "STREAM_WINDOW", 10_000)
    with crt.open("big/shard.tar") as stream:
        got = []
        while piece := stream.read(3_333):
            got.append(piece)
            assert len(stream.raw._part) <= 10_000  # never more than a window held
    assert b"".join(got) == data
    assert stream.stats().requests == 11  # 10 windows, then a range past the end (416)
    assert stream.stats().nbytes == 100_000
    with crt.open("big/odd.tar") as stream:
        assert stream.read() == data[:99_999]
    assert stream.stats().requests == 10  # the short last window ends the stream
    assert crt.read_range("big/shard.tar", 99_990, 100) == data[99_990:]
    assert crt.read_range("big/shard.tar", 100_000, 5) == b""  # past the end, as a file


def test_client_is_created_once_across_threads(stores):
    _, crt = stores
    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: crt.client(), range(32)))
    assert all(c is clients[0] for c in clients)
