"""Memory stays bounded when data grows: measure the RSS of streaming a big shard and of listing
many keys, and say PASS or FAIL against the goals.

    python -m scripts.bench_memory                          # 1 GB shard, 100,000 keys
    python -m scripts.bench_memory --shard-gb 0.2 --listing-keys 20000
    python -m scripts.bench_memory --skip-list              # only (a)

Goals (units: GB = 10^9 bytes, MiB = 2^20 bytes):

(a) Streaming a 1 GB shard adds at most 64 MiB of RSS. One WebDataset shard of ``--shard-gb``
    is written with the project's shard writer (:func:`pipelines.shards.writer.write_shards`, from a
    small synthetic VOC tree whose 32 images of ~150 KB are repeated under new ids), then read
    front to back with :func:`pipelines.shards.reader.iter_shard`, from the filesystem and from a
    local S3 server (``rclone serve s3`` on 127.0.0.1, serving the same file) with each S3 client
    library: boto3 (:class:`pipelines.storage.s3.S3Storage`) and s3torchconnector
    (:class:`pipelines.storage.s3_connector.S3ConnectorStorage`).
(b) Listing 100,000 keys holds no more than the keys. ``--listing-keys`` tiny objects under 10
    sub-prefixes are listed with ``S3Storage.list`` (one stream, and ``list_workers=4`` across the
    sub-prefixes), once keeping the keys in a list, once only counting them. Keeping them may
    add at most the keys' own memory (``sys.getsizeof`` of the list and of every key) plus
    16 MiB per listing thread (the page of the response it is parsing, allocator slack);
    counting may add at most 16 MiB per listing thread, plus, with several threads, the keys of
    the sub-prefixes in flight (one per thread, listed whole before it is yielded): bounds that
    do not grow with the number of keys.

Each measurement runs in a fresh process (forked from a fork server that only imported the
modules): it makes its first request, then records its baseline RSS and samples RSS (psutil)
every 2 ms in a thread while it streams or lists; the figure is peak minus baseline. Files are
put on disk directly (no upload) before the server starts. Everything is written under a
temporary folder (``--tmp-dir``), which is removed at the end, and the server is stopped.
Exit status: 0 all PASS; 1 a FAIL; 2 a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from bench.resources import ResourceSampler
from cli.args import add_keys_argument
from datagen.images import spec_from_preset
from datagen.synthetic import generate_dataset
from local_s3.server import LocalS3Error, local_s3
from pipelines.formats.voc import load_voc_split
from pipelines.shards.manifest import ShardInfo
from pipelines.shards.reader import iter_shard
from pipelines.shards.writer import write_shards
from pipelines.storage.base import StorageError
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
    """Sample this process's resident set size (:class:`bench.resources.ResourceSampler` with
    ``rss_only``, every ``SAMPLE_INTERVAL_S``) while the block runs, after a garbage
    collection. Yields a dict that holds, once the block ends, ``baseline`` (RSS on entering)
    and ``peak`` (the highest sample, entry and exit included), both in bytes, and
    ``rss_samples`` (how many samples, entry and exit included)."""
    gc.collect()
    figures: dict = {}
    with ResourceSampler(interval_s=SAMPLE_INTERVAL_S, rss_only=True) as sampler:
        yield figures
    figures.update(
        baseline=sampler.samples[0].rss_bytes,
        peak=sampler.peak_rss_bytes,
        rss_samples=len(sampler.samples),
    )


# -- measurements, each run in a fresh process ----------------------------------------------------


def measure_shard(client: str, endpoint: str, root: str, key: str, samples: int) -> dict:
    """Stream one shard with ``iter_shard``: from the folder ``root`` (``client`` ``fs``) or
    from ``s3://bench/`` at ``endpoint`` with ``client`` ``boto3`` or ``s3torchconnector``;
    return RSS figures (bytes), bytes read and seconds."""
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
    """List ``s3://bench/list/`` with ``S3Storage.list`` and ``list_workers=workers``, keeping
    the keys in a list (``keep``) or only counting them; return RSS figures and the keys' own
    memory (bytes)."""
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

    The process is forked from a fork server that has only imported the data path's modules
    (torch, webdataset, boto3): it starts in milliseconds, with none of this process's heap.
    """
    context = get_context("forkserver")
    # not s3torchconnector: its CRT threads would not survive the fork (measured: 8 MB/s)
    context.set_forkserver_preload(["pipelines.shards.reader", "pipelines.storage.s3", "psutil"])
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


# -- test data, written straight to disk ----------------------------------------------------------


def build_shard(bucket_dir: Path, shard_bytes: int) -> ShardInfo:
    """Write one shard of about ``shard_bytes`` bytes under ``bucket_dir/shards/bench/``.

    32 synthetic ~150 KB images (``mlperf`` preset) are written to ``bucket_dir/voc`` and
    repeated, each time under a new id, through :func:`write_shards`, which streams the tar to
    a temporary file (nothing of the shard's size is held in memory).
    """
    storage = FileSystemStorage(bucket_dir)
    generate_dataset(
        FileSystemStorage(bucket_dir / "voc"),
        spec_from_preset("mlperf", seed=7),
        32,
        test_fraction=0,
        progress=False,
    )
    sources, _ = load_voc_split(storage, "train", root="voc")
    sizes = [storage.size(r.image_key) for r in sources]
    records, total, i = [], 1024, 0
    while total < shard_bytes:
        record = sources[i % len(sources)]
        records.append(dataclasses.replace(record, id=f"{record.id}_{i:07d}"))
        total += 512 + (sizes[i % len(sources)] + 511) // 512 * 512 + 1536  # image + json
        i += 1
    shards = write_shards(storage, records, SHARD_PREFIX, target_bytes=2 * total + 10**6)
    assert len(shards) == 1, shards
    return shards[0]


def make_keys(bucket_dir: Path, keys: int) -> None:
    """Create ``keys`` one-byte files under ``bucket_dir/list/p<j>/JPEGImages/`` (10 folders)."""
    per = -(-keys // SUBPREFIXES)
    made = 0
    for j in range(SUBPREFIXES):
        folder = bucket_dir / LIST_PREFIX / f"p{j}" / "JPEGImages"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(per, keys - made)):
            with open(folder / f"synth_{made + i:07d}.jpg", "wb") as f:
                f.write(b"x")
        made += min(per, keys - made)


# -- the command ----------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench_memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--shard-gb", type=float, default=1.0, help="shard size in GB (10^9 bytes; default 1.0)"
    )
    parser.add_argument(
        "--listing-keys", type=int, default=100_000, help="keys to list (default: 100000)"
    )
    parser.add_argument(
        "--tmp-dir", type=Path, help="where the temporary folder goes (default: the system's)"
    )
    parser.add_argument("--skip-shard", action="store_true", help="skip (a), shard streaming")
    parser.add_argument("--skip-list", action="store_true", help="skip (b), listing")
    add_keys_argument(parser, config=False)
    return parser


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run_shard(server, shard: ShardInfo, bucket_dir: Path) -> list[bool]:
    """Measure (a) over the filesystem and S3; print one line each; return the verdicts."""
    results = []
    for name, client in (
        ("filesystem", "fs"),
        ("s3 boto3", "boto3"),
        ("s3 s3torchconnector", "s3torchconnector"),
    ):
        r = in_fresh_process(
            measure_shard, client, server.endpoint, str(bucket_dir), shard.key, shard.samples
        )
        delta = r["peak"] - r["baseline"]
        ok = delta <= SHARD_LIMIT_MIB * MiB and r["samples"] == shard.samples
        rate = r["bytes"] / 1e6 / r["seconds"] if r["seconds"] > 0 else 0.0
        print(
            f"(a) shard over {name:20s} {r['bytes'] / GB:.3f} GB, {r['samples']} samples in "
            f"{r['seconds']:.1f} s ({rate:.0f} MB/s): RSS baseline {_mib(r['baseline'])}, peak "
            f"{_mib(r['peak'])}, delta {_mib(delta)} (limit {SHARD_LIMIT_MIB:.0f} MiB): "
            f"{_verdict(ok)}",
            flush=True,
        )
        results.append(ok)
    return results


def run_listing(server, keys: int) -> list[bool]:
    """Measure (b) with 1 and 4 list workers, keeping and counting; print; return verdicts."""
    results = []
    keys_bytes = 0  # measured by the first (keeping) run of each worker count
    for workers in (1, 4):
        for keep in (True, False):
            r = in_fresh_process(measure_listing, server.endpoint, workers, keep)
            delta = r["peak"] - r["baseline"]
            mode = "keep keys " if keep else "count only"
            head = (
                f"(b) list workers={workers} {mode} {r['count']} keys in {r['seconds']:.1f} s "
                f"({r['count'] / max(r['seconds'], 1e-9):.0f} keys/s): RSS delta {_mib(delta)}"
            )
            # each listing thread parses one page at a time; with several, each also holds
            # the keys of the sub-prefix it lists until they are yielded (in flight: workers)
            keys_bytes = r["keys_bytes"] if keep else keys_bytes
            in_flight = keys_bytes * min(workers, SUBPREFIXES) / SUBPREFIXES
            overhead = LIST_OVERHEAD_MIB * MiB * workers
            if keep:
                limit = r["keys_bytes"] + overhead
                what = f"keys + {workers} x {LIST_OVERHEAD_MIB:.0f} MiB"
                tail = f", the keys themselves {_mib(r['keys_bytes'])}"
            else:
                limit = FLAT_LIMIT_MIB * MiB * workers + (in_flight if workers > 1 else 0)
                what = f"{workers} x {FLAT_LIMIT_MIB:.0f} MiB" + (
                    f" + {workers} sub-prefixes' keys" if workers > 1 else ""
                )
                tail = ""
            ok = delta <= limit and r["count"] == keys
            flat = "" if keep else ", flat in the number of keys"
            tail += f" (limit {what} = {_mib(limit)}{flat}): {_verdict(ok)}"
            print(head + tail, flush=True)
            results.append(ok)
    return results


def main(argv: list[str] | None = None) -> int:
    """Build the data, start the server, measure, print; 0 when every goal passes."""
    args = get_args_parser().parse_args(argv)
    if args.shard_gb <= 0 or args.listing_keys < SUBPREFIXES:
        print(
            "bench_memory: error: --shard-gb must be positive and --listing-keys at least "
            f"{SUBPREFIXES}",
            file=sys.stderr,
        )
        return 2
    if args.tmp_dir is not None:
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.tmp_dir))
    saved_tempdir = tempfile.tempdir
    results: dict[str, list[bool]] = {}
    try:
        bucket_dir = work / "s3" / "data" / BUCKET
        bucket_dir.mkdir(parents=True)
        shard = None
        if not args.skip_shard:
            start = time.perf_counter()
            tempfile.tempdir = str(work)  # the shard's temporary file: same filesystem, a rename
            shard = build_shard(bucket_dir, round(args.shard_gb * GB))
            tempfile.tempdir = saved_tempdir
            print(
                f"built {shard.key}: {shard.bytes / GB:.3f} GB, {shard.samples} samples in "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
        if not args.skip_list:
            start = time.perf_counter()
            make_keys(bucket_dir, args.listing_keys)
            print(
                f"created {args.listing_keys} keys under {SUBPREFIXES} prefixes in "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
        # no ETag: rclone would hash the whole 1 GB file for every ranged GET of it
        with local_s3(work / "s3", etag_hash="") as server:
            _set_credentials(server, work)
            if shard is not None:
                results["(a) streaming a shard"] = run_shard(server, shard, bucket_dir)
            if not args.skip_list:
                results["(b) listing keys"] = run_listing(server, args.listing_keys)
    except (LocalS3Error, StorageError, OSError) as exc:
        print(f"bench_memory: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_memory: interrupted", file=sys.stderr)
        return 130
    finally:
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(work, ignore_errors=True)
    for goal, oks in results.items():
        print(f"verdict {goal}: {_verdict(all(oks))}")
    ok = all(all(oks) for oks in results.values())
    print(f"verdict overall: {_verdict(ok)}")
    return 0 if ok else 1


def _set_credentials(server, work: Path) -> None:
    """Put the server's credentials in this process's environment (children inherit them) and
    keep other AWS settings (profiles, config files, metadata lookups) out."""
    missing = str(work / "no-aws-config")
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
        }
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)


if __name__ == "__main__":
    sys.exit(main())
