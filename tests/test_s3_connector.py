"""storage.client_lib: s3torchconnector — the same Storage interface over AWS's CRT client,
against the real local S3 server."""

from __future__ import annotations

import itertools
import os
import pickle

import pytest

from pipelines.s3 import S3Storage
from pipelines.s3_connector import S3ConnectorStorage
from pipelines.storage import ObjectNotFound

pytestmark = pytest.mark.integration
_numbers = itertools.count()


@pytest.fixture
def stores(s3_server):
    """(boto3 storage to set up objects, s3torchconnector storage to test) on a fresh bucket."""
    bucket = f"crt-{os.getpid()}-{next(_numbers)}"
    boto = S3Storage(bucket, endpoint_url=s3_server.endpoint)
    boto.client().create_bucket(Bucket=bucket)
    for key, data in (("d/a.jpg", b"first object"), ("d/b.jpg", b"second"), ("e/c", b"x")):
        boto.write(key, data)
    return boto, S3ConnectorStorage(bucket, endpoint_url=s3_server.endpoint)


def test_reads_lists_and_counts_like_the_boto3_storage(stores):
    boto, crt = stores
    assert crt.read("d/a.jpg") == boto.read("d/a.jpg") == b"first object"
    assert crt.read_range("d/a.jpg", 6, 100) == b"object"
    assert crt.size("d/b.jpg") == 6 and crt.exists("d/b.jpg") and not crt.exists("d/zz")
    with crt.open("d/b.jpg") as f:
        assert f.read(3) + f.read() == b"second"
    assert sorted(crt.list("d")) == ["d/a.jpg", "d/b.jpg"]
    stats = crt.take_stats()
    assert stats.requests == 3 and len(stats.ttfb_s) == 3  # read, read_range, open


def test_missing_object_is_object_not_found_and_named(stores):
    _, crt = stores
    with pytest.raises(
        ObjectNotFound, match=r"s3://crt-\d+-\d+/d/nope .*s3torchconnector.*check the key"
    ):
        crt.read("d/nope")
    assert crt.take_stats().errors["NoSuchKey"] == 1


def test_pickles_for_dataloader_workers(stores):
    _, crt = stores
    crt.read("d/a.jpg")
    copy = pickle.loads(pickle.dumps(crt))
    assert copy.take_stats().requests == 0  # a copy counts its own requests
    assert copy.read("e/c") == b"x"
