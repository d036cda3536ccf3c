"""Check that memory stays bounded when data grows: RSS of streaming a big shard and of listing.

    python -m scripts.bench_memory                          # 1 GB shard, 100,000 keys
    python -m scripts.bench_memory --shard-gb 0.2 --listing-keys 20000
    python -m scripts.bench_memory --skip-list              # only (a)

Says PASS or FAIL against the goals (units: GB = 10^9 bytes, MiB = 2^20 bytes):

(a) Streaming a 1 GB shard adds at most 64 MiB of RSS. One WebDataset shard of ``--shard-gb``
    is written with :func:`pipelines.shards.writer.write_shards` (from a small synthetic VOC tree
    whose 32 images of ~150 KB are repeated under new ids), then read front to back with
    :func:`pipelines.shards.reader.iter_shard` from the filesystem and from a local S3 server
    (``rclone serve s3`` on 127.0.0.1, serving the same file) with each S3 client library: boto3
    (:class:`pipelines.storage.s3.S3Storage`) and s3torchconnector
    (:class:`pipelines.storage.s3_connector.S3ConnectorStorage`).
(b) Listing 100,000 keys holds no more than the keys. ``--listing-keys`` tiny objects under 10
    sub-prefixes are listed with ``S3Storage.list`` (one stream, and ``list_workers=4`` across the
    sub-prefixes), once keeping the keys in a list, once only counting them. Keeping them may
    add at most the keys' own memory (``sys.getsizeof`` of the list and of every key) plus
    16 MiB per listing thread; counting may add at most 16 MiB per listing thread, plus, with
    several threads, the keys of the sub-prefixes in flight (one per thread, listed whole before
    it is yielded).

Each measurement runs in a fresh process (forked from a fork server that only imported the
modules): it makes its first request, then records its baseline RSS and samples RSS (psutil)
every 2 ms in a thread while it streams or lists; the figure is peak minus baseline. Files are
put on disk directly (no upload) before the server starts. Everything is written under a
temporary folder (``--tmp-dir``), which is removed at the end, and the server is stopped.
Exit status: 0 all PASS; 1 a FAIL; 2 a setup error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.memory.measure import SUBPREFIXES
from bench.memory.run import run_memory_bench, verdict
from cli.args import add_keys_argument
from local_s3.server import LocalS3Error
from pipelines.storage.base import StorageError


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
    add_keys_argument(parser, config=None)
    return parser


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
    try:
        results = run_memory_bench(args)
    except (LocalS3Error, StorageError, OSError) as exc:
        print(f"bench_memory: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_memory: interrupted", file=sys.stderr)
        return 130
    for goal, oks in results.items():
        print(f"verdict {goal}: {verdict(all(oks))}")
    ok = all(all(oks) for oks in results.values())
    print(f"verdict overall: {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
