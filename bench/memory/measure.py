"""The memory benchmark's measurements, in fresh processes: RSS (bytes) a shard or listing adds."""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from bench.resources import ResourceSampler
from pipelines.shards.manifest import ShardInfo
from pipelines.shards.reader import iter_shard
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from pipelines.storage.s3_connector import S3ConnectorStorage
from pipelines.storage.s3dlio_storage import S3dlioStorage

GB = 10**9
MiB = 2**20
SHARD_LIMIT_MIB = 64.0
LIST_OVERHEAD_MIB = 16.0
FLAT_LIMIT_MIB = 16.0
SUBPREFIXES = 10
BUCKET = "bench"
SHARD_PREFIX = "shards/bench"
LIST_PREFIX = "list"
SAMPLE_INTERVAL_S = 0.002


@contextlib.contextmanager
def rss_sampled():
    """Sample this process's RSS every :data:`SAMPLE_INTERVAL_S` while the block runs, after a GC.

    Yields a dict holding, once the block ends, ``baseline`` (RSS on entering) and ``peak`` (highest
    sample), both bytes, and ``rss_samples`` (how many, entry and exit included).
    """
    gc.collect()
    figures: dict = {}
    with ResourceSampler(interval_s=SAMPLE_INTERVAL_S, rss_only=True) as sampler:
        yield figures
    figures.update(
        baseline=sampler.samples[0].rss_bytes,
        peak=sampler.peak_rss_bytes,
        rss_samples=len(sampler.samples),
    )


def measure_shard(client: str, endpoint: str, root: str, key: str, samples: int) -> dict:
    """Stream one shard with ``iter_shard``; return RSS figures (bytes), bytes read and seconds.

    From the folder ``root`` (``client`` ``fs``) or from ``s3://bench/`` at ``endpoint`` with
    ``client`` ``boto3``, ``s3torchconnector`` or ``s3dlio``.
    """
    if client == "fs":
        storage = FileSystemStorage(root)
    else:
        if client == "boto3":
            storage = S3Storage(BUCKET, endpoint_url=endpoint)
        elif client == "s3dlio":
            storage = S3dlioStorage(BUCKET, endpoint_url=endpoint)
        else:
            storage = S3ConnectorStorage(BUCKET, endpoint_url=endpoint)
        storage.size(key)  # the client exists and has made a request before the baseline
    shard = ShardInfo(key=key, bytes=0, samples=samples, ids=())
    count = nbytes = 0
    with rss_sampled() as rss:
        start = time.perf_counter()
        for _sample, read in iter_shard(storage, shard):
            count += 1
            nbytes += read.nbytes
        seconds = time.perf_counter() - start
    return {
        "baseline": rss["baseline"],
        "peak": rss["peak"],
        "samples": count,
        "bytes": nbytes,
        "seconds": seconds,
        "rss_samples": rss["rss_samples"],
    }


def measure_listing(endpoint: str, workers: int, keep: bool, client: str = "boto3") -> dict:
    """List ``s3://bench/list/``; return RSS figures and the keys' bytes.

    ``client`` ``boto3``: ``S3Storage.list`` (``list_workers=workers``) keeps the keys in a list
    (``keep``) or only counts them; ``s3dlio``: ``S3dlioStorage.list`` (which receives every key
    before it yields one; ``workers`` is not used).
    """
    if client == "s3dlio":
        storage = S3dlioStorage(BUCKET, endpoint_url=endpoint)
        storage.exists(f"{LIST_PREFIX}/none")  # warm: the client exists and has sent a request
        listing = lambda: storage.list(LIST_PREFIX)  # noqa: E731
    else:
        storage = S3Storage(BUCKET, LIST_PREFIX, endpoint_url=endpoint, list_workers=workers)
        s3 = storage.client()  # warm: client, ListObjectsV2 model and parser, paginator
        s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{LIST_PREFIX}/", MaxKeys=5)
        s3.get_paginator("list_objects_v2")
        listing = storage.list
    keys: list[str] = []
    count = 0
    with rss_sampled() as rss:
        start = time.perf_counter()
        if keep:
            keys = list(listing())
            count = len(keys)
        else:
            for _key in listing():
                count += 1
        seconds = time.perf_counter() - start
    keys_bytes = sys.getsizeof(keys) + sum(sys.getsizeof(k) for k in keys) if keep else 0
    return {
        "baseline": rss["baseline"],
        "peak": rss["peak"],
        "count": count,
        "seconds": seconds,
        "keys_bytes": keys_bytes,
        "rss_samples": rss["rss_samples"],
    }


def in_fresh_process(fn, *args):
    """Run ``fn(*args)`` in a new process and return its result.

    Forked from a fork server that imported the data path's modules and the script's imports: it
    starts in a fraction of a second, with none of this process's heap.
    """
    context = get_context("forkserver")
    # Modules only (s3torchconnector's CRT threads and s3dlio's client do not survive a fork),
    # and what the script imports: each child runs the script's module again (multiprocessing's
    # __mp_main__), which is then quick (measured: 2.3 s per child without, 0.3 s with).
    context.set_forkserver_preload([
        "torch", "psutil", "pipelines.shards.reader", "pipelines.storage.s3", "bench.memory.run",
        "cli.args",
    ])  # fmt: skip
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()
