"""`make bench-memory`: build and serve the data, measure each goal in a fresh process, judge."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.memory.data import build_shard, make_keys
from bench.memory.measure import (
    BUCKET,
    FLAT_LIMIT_MIB,
    GB,
    LIST_OVERHEAD_MIB,
    SHARD_LIMIT_MIB,
    SUBPREFIXES,
    MiB,
    in_fresh_process,
    measure_listing,
    measure_shard,
)
from local_s3.server import LocalS3, local_s3
from pipelines.shards.manifest import ShardInfo


def run_memory_bench(args: argparse.Namespace) -> dict[str, list[bool]]:
    """Measure the goals ``args`` asks for in a temporary folder, removed at the end.

    ``args``: ``shard_gb``, ``listing_keys``, ``skip_shard``, ``skip_list``, ``tmp_dir``.

    Returns:
        Each goal's verdicts, one per measurement (True: PASS).

    Raises:
        LocalS3Error: the server does not start.
        StorageError, OSError: the data cannot be written or read.
    """
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
    finally:
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(work, ignore_errors=True)
    return results


def _mib(n: float) -> str:
    """``n`` bytes in MiB, one decimal."""
    return f"{n / MiB:.1f} MiB"


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def run_shard(server: LocalS3, shard: ShardInfo, bucket_dir: Path) -> list[bool]:
    """Measure (a) over the filesystem and S3; print one line each; return the verdicts."""
    results = []
    for name, client in (
        ("filesystem", "fs"),
        ("s3 boto3", "boto3"),
        ("s3 s3torchconnector", "s3torchconnector"),
        ("s3 s3dlio", "s3dlio"),
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
            f"{verdict(ok)}",
            flush=True,
        )
        results.append(ok)
    return results


def run_listing(server: LocalS3, keys: int) -> list[bool]:
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
            tail += f" (limit {what} = {_mib(limit)}{flat}): {verdict(ok)}"
            print(head + tail, flush=True)
            results.append(ok)
    results.append(_s3dlio_listing(server, keys))
    return results


def _s3dlio_listing(server: LocalS3, keys: int) -> bool:
    """Measure (b) through s3dlio, keeping the keys; print; return the verdict.

    s3dlio returns a listing whole (every page received before the first key is yielded), and
    ``S3dlioStorage.list`` sorts it: the keys are held twice, plus one overhead.
    """
    r = in_fresh_process(measure_listing, server.endpoint, 1, True, "s3dlio")
    delta = r["peak"] - r["baseline"]
    limit = 2 * r["keys_bytes"] + LIST_OVERHEAD_MIB * MiB
    ok = delta <= limit and r["count"] == keys
    print(
        f"(b) list s3dlio keep keys  {r['count']} keys in {r['seconds']:.1f} s "
        f"({r['count'] / max(r['seconds'], 1e-9):.0f} keys/s): RSS delta {_mib(delta)}, the keys "
        f"themselves {_mib(r['keys_bytes'])} (limit 2 x keys + {LIST_OVERHEAD_MIB:.0f} MiB = "
        f"{_mib(limit)}: s3dlio lists every page before it returns): {verdict(ok)}",
        flush=True,
    )
    return ok


def _set_credentials(server: LocalS3, work: Path) -> None:
    """Put the server's credentials, and no other AWS settings, in the (inherited) environment."""
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
