"""Raw storage baselines: how fast the storage alone delivers the objects a configuration reads.

Measured in the same run over the same objects, so that a configuration's throughput is a ratio to
the storage with no decoding, DataLoader or framework in between: :func:`fs_read_baseline`
(``cat``-style) and :func:`s3_get_baseline` (plain boto3 GETs). Units: bytes, seconds, MB/s = 10^6
bytes/s, objects/s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.page_cache import evict_page_cache
from bench.resources import CpuUse, process_sample
from pipelines.storage.s3 import S3Storage
from training.meter import gc_frozen

MiB = 1024 * 1024


@dataclass(frozen=True)
class BaselineResult:
    """One raw-read measurement.

    Attributes:
        name: ``fs-read``, ``fs-read-cold``, ``s3-get`` or ``s3-get-cold``.
        objects: files / objects read.
        bytes: bytes read, in total.
        seconds: wall-clock seconds from the first open/GET to the last byte.
        mbps: ``bytes / seconds / 1e6`` (MB/s, 10^6 bytes per second).
        objects_per_s: ``objects / seconds``.
        threads: reading threads.
        evicted: every file's pages were dropped from the page cache right before it was read
            (cold).
        cpu: the CPU this process and the whole machine spent while it was timed
            (:class:`bench.resources.CpuUse`).
    """

    name: str
    objects: int
    bytes: int
    seconds: float
    mbps: float
    objects_per_s: float
    threads: int
    evicted: bool
    cpu: CpuUse


def _result(
    name: str, objects: int, nbytes: int, seconds: float, threads: int, evicted: bool, cpu: CpuUse
) -> BaselineResult:
    per_s = 1 / seconds if seconds > 0 else float("inf")  # a clock too coarse to see the reads
    return BaselineResult(
        name=name,
        objects=objects,
        bytes=nbytes,
        seconds=seconds,
        mbps=nbytes * per_s / 1e6,
        objects_per_s=objects * per_s,
        threads=threads,
        evicted=evicted,
        cpu=cpu,
    )


def fs_read_baseline(
    paths: Sequence[str | os.PathLike],
    *,
    chunk_bytes: int = MiB,
    cold: bool = False,
    threads: int = 1,
) -> BaselineResult:
    """Read every file front to back, as ``cat`` does, in one thread or ``threads`` at once.

    Thread ``i`` reads files ``i, i + threads, ...`` (as many threads as the ranks of the pass it is
    compared with). Each file is opened unbuffered and read with ``readinto`` into a reused buffer
    of ``chunk_bytes`` (one per thread); the data is not inspected. Timing covers opens and reads.

    Args:
        paths: the files a configuration reads, in its order (repeated as many times as it reads
            them).
        chunk_bytes: bytes per ``read`` call.
        cold: the files are flushed and evicted from the page cache first (untimed), then each again
            right before it is opened (timed, as :class:`bench.page_cache.EvictBeforeRead` does), so
            a file listed twice is read cold twice; the result's ``evicted`` says whether eviction
            was possible. Otherwise the cache is left as it is.
        threads: files read at once.

    Returns:
        A :class:`BaselineResult` named ``fs-read`` or ``fs-read-cold``.

    Raises:
        ValueError: no paths, ``chunk_bytes < 1`` or ``threads < 1``.
        OSError: a file cannot be opened or read (the first failure).
    """
    if not paths:
        raise ValueError("fs_read_baseline: no files to read")
    if chunk_bytes < 1 or threads < 1:
        raise ValueError(f"chunk_bytes={chunk_bytes} and threads={threads} must be at least 1")
    evicted = evict_page_cache(list(dict.fromkeys(paths))) if cold else False

    def cat(files: Sequence[str | os.PathLike]) -> int:
        view = memoryview(bytearray(chunk_bytes))
        n = 0
        for path in files:
            if evicted:
                evict_page_cache([path], flush=False)
            with open(path, "rb", buffering=0) as f:
                while got := f.readinto(view):
                    n += got
        return n

    with gc_frozen():  # as the loaders are measured
        before = process_sample()
        start = time.perf_counter()
        if threads == 1:
            total = cat(paths)
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="fs-baseline") as pool:
                total = sum(pool.map(cat, [paths[i::threads] for i in range(threads)]))
        seconds = time.perf_counter() - start
        cpu = CpuUse.between(before, process_sample(), seconds)
    name = "fs-read-cold" if cold else "fs-read"
    return _result(name, len(paths), total, seconds, threads, evicted, cpu)


def s3_get_baseline(
    storage: S3Storage,
    keys: Sequence[str],
    *,
    threads: int = 8,
    chunk_bytes: int = MiB,
    evict_dir: str | os.PathLike | None = None,
) -> BaselineResult:
    """GET every object with a pool of ``threads`` threads sharing the storage's boto3 client.

    Plain ``get_object`` calls on ``storage.client()`` (its pool size, retries, timeouts, checksum
    setting), in the given order; each body is read to the end in ``chunk_bytes`` reads and dropped.
    The client is created before the clock starts; timing covers the GETs and the body reads.

    Args:
        storage: where the objects are; ``keys`` are relative to its prefix.
        keys: the objects a configuration reads.
        threads: concurrent GETs; at most ``storage.max_pool_connections`` (more would measure
            connections opened and thrown away).
        chunk_bytes: bytes per body ``read`` call.
        evict_dir: for a server on this machine, the folder its objects are files in: each
            ``evict_dir/key`` is evicted from the page cache right before its GET (timed), a cold
            pass (:mod:`bench.page_cache`).

    Returns:
        A :class:`BaselineResult` named ``s3-get`` (``s3-get-cold`` with ``evict_dir``).

    Raises:
        ValueError: no keys, ``threads`` out of range, or ``chunk_bytes < 1``.
        pipelines.storage.base.StorageError: a GET or body read failed (missing object, credentials,
            endpoint unreachable); the first failure, the other reads are cancelled.
    """
    if not keys:
        raise ValueError("s3_get_baseline: no objects to read")
    if not 1 <= threads <= storage.max_pool_connections:
        raise ValueError(
            f"threads={threads} must be between 1 and the storage's max_pool_connections "
            f"({storage.max_pool_connections}); raise max_pool_connections for more threads"
        )
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes={chunk_bytes} must be at least 1")
    client = storage.client()

    def get(key: str) -> int:
        if evict_dir is not None:
            evict_page_cache([Path(evict_dir) / key], flush=False)
        try:
            body = client.get_object(Bucket=storage.bucket, Key=storage._key(key))["Body"]
        except Exception as exc:
            raise storage._fail(exc, key, "read") from None
        n = 0
        try:
            while chunk := body.read(chunk_bytes):
                n += len(chunk)
        except Exception as exc:
            raise storage._fail(exc, key, "read", mid_stream=True) from None
        finally:
            body.close()
        return n

    with gc_frozen():  # as the loaders are measured
        before = process_sample()
        start = time.perf_counter()
        with ThreadPoolExecutor(threads, thread_name_prefix="s3-baseline") as pool:
            futures = [pool.submit(get, key) for key in keys]
            try:
                total = sum(future.result() for future in futures)
            finally:
                for future in futures:
                    future.cancel()
        seconds = time.perf_counter() - start
        cpu = CpuUse.between(before, process_sample(), seconds)
    name = "s3-get" if evict_dir is None else "s3-get-cold"
    return _result(name, len(keys), total, seconds, threads, evict_dir is not None, cpu)
