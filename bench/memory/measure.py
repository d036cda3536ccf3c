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
    ``client`` ``boto3`` or ``s3torchconnector``.
    """
    if client == "fs":
        storage = FileSystemStorage(root)
    else:
        if client == "boto3":
            storage = S3Storage(BUCKET, endpoint_url=endpoint)
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


def measure_listing(endpoint: str, workers: int, keep: bool) -> dict:
    """List ``s3://bench/list/`` (``list_workers=workers``); return RSS figures and keys' bytes.

    ``S3Storage.list`` keeps the keys in a list (``keep``) or only counts them.
    """
    storage = S3Storage(BUCKET, LIST_PREFIX, endpoint_url=endpoint, list_workers=workers)
    client = storage.client()  # warm: client, ListObjectsV2 model and parser, paginator
    client.list_objects_v2(Bucket=BUCKET, Prefix=f"{LIST_PREFIX}/", MaxKeys=5)
    client.get_paginator("list_objects_v2")
    keys: list[str] = []
    count = 0
    with rss_sampled() as rss:
        start = time.perf_counter()
        if keep:
            keys = list(storage.list())
            count = len(keys)
        else:
            for _key in storage.list():
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

    Forked from a fork server that imported the data path's modules and the script's (else each
    child imports the script's again, ~3 s): it starts in milliseconds, with none of this
    process's heap.
    """
    context = get_context("forkserver")
    # not s3torchconnector: its CRT threads would not survive the fork (measured: 8 MB/s)
    preload = ["pipelines.shards.reader", "pipelines.storage.s3", "psutil"]
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)  # python -m scripts.X
    context.set_forkserver_preload(preload + ([main_spec.name] if main_spec else []))
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()
