"""Every read carries its own figures, made by the storage call itself: 8 threads x 200
concurrent reads through each storage attribute exactly one request to each read (no shared
counter to race on); and through the loaders, the figures of the steps add up to the epoch's
for every access pattern, with and without DataLoader workers."""

from __future__ import annotations

import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.access.loaders import LoaderSettings, build_loader
from pipelines.formats.voc import load_voc_split
from pipelines.samples import detection_transform
from pipelines.shards.writer import ensure_shards
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from pipelines.storage.s3_connector import S3ConnectorStorage
from pipelines.storage.s3dlio_storage import S3dlioStorage
from training.engine import measure_steps

THREADS, READS = 8, 200
KEYS = 50  # each thread reads the keys round and round: 200 reads
_numbers = itertools.count()


def hammer(storage, keys: list[str], size: int, ttfbs: int = 1) -> None:
    """``THREADS`` threads, each with ``READS`` reads of ``keys`` in turn (whole objects,
    ranges and streams): each read's figures hold exactly its own request and bytes (and
    ``ttfbs`` times to first byte: 0 where the client does not expose it)."""

    def reader(thread: int) -> list:
        got = []
        for i in range(READS):
            key = keys[(thread + i) % len(keys)]
            if i % 3 == 0:
                data, stats = storage.fetch(key)
            elif i % 3 == 1:
                data, stats = storage.fetch_range(key, 10, 20)
            else:
                with storage.open(key) as stream:
                    data = stream.read()
                    stats = stream.stats()
            got.append((len(data), stats))
        return got

    storage.connect()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that shared state would race
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            reads = [r for rs in pool.map(reader, range(THREADS)) for r in rs]
    finally:
        sys.setswitchinterval(interval)
    assert len(reads) == THREADS * READS
    for nbytes, stats in reads:
        assert (stats.requests, len(stats.ttfb_s), stats.retries, stats.errors) == (1, ttfbs, 0, ())
        assert stats.nbytes == nbytes in (size, 20)
        assert all(0 < ttfb <= stats.seconds for ttfb in stats.ttfb_s)


def test_filesystem_reads_each_carry_one_request_under_threads(tmp_path):
    for i in range(KEYS):
        (tmp_path / f"{i}.bin").write_bytes(b"x" * 100)
    hammer(FileSystemStorage(tmp_path), [f"{i}.bin" for i in range(KEYS)], 100)


@pytest.mark.integration
@pytest.mark.parametrize("client", ["boto3", "s3torchconnector", "s3dlio"])
def test_s3_reads_each_carry_one_request_under_threads(s3_server, client):
    bucket = f"count-{os.getpid()}-{next(_numbers)}"
    boto = S3Storage(bucket, endpoint_url=s3_server.endpoint, max_pool_connections=THREADS)
    boto.client().create_bucket(Bucket=bucket)
    keys = [f"k/{i}.bin" for i in range(KEYS)]
    for key in keys:
        boto.write(key, b"y" * 100)
    if client == "boto3":
        storage = boto
    elif client == "s3dlio":
        storage = S3dlioStorage(bucket, endpoint_url=s3_server.endpoint)
    else:
        storage = S3ConnectorStorage(bucket, endpoint_url=s3_server.endpoint)
    hammer(storage, keys, 100, ttfbs=0 if client == "s3dlio" else 1)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("access", ["random", "shards", "objects"])
@pytest.mark.parametrize("workers", [0, 2])
def test_the_steps_figures_add_up_to_the_epochs(voc_root, access, workers):
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")  # 12 images
    shards = None
    if access == "shards":
        shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=60_000)
    loader = build_loader(
        storage, records, access=access, transform=detection_transform(True, 64),
        class_to_index={"RBC": 1, "WBC": 2, "Platelets": 3},
        settings=LoaderSettings(batch_size=2, num_workers=workers), shuffle=True, seed=0,
        shards=shards, shuffle_buffer=4, concurrency=4,
    )  # fmt: skip
    loader.set_epoch(0)
    meter = measure_steps(loader, lambda batch, step: 0.0, 0, num_samples=None)
    files = (
        [voc_root / s.key for s in shards] if shards else [voc_root / r.image_key for r in records]
    )
    summary = meter.summary()
    assert summary["requests"] == sum(s.requests for s in meter.steps) == len(files)
    assert summary["bytes_read"] == sum(s.bytes_read for s in meter.steps)
    assert summary["bytes_read"] == sum(f.stat().st_size for f in files)  # every byte, once
    assert len(meter.requests.ttfb_s) == len(files) and not meter.requests.errors
