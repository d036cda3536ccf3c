"""Measure shard reader speed: our tar parser vs WebDataset's tarfile-based one vs a raw read.

    python -m scripts.bench_shards                  # BCCD train shards (written if missing)
    python -m scripts.bench_shards --config configs/classification.yaml --repeat 20

Reads every shard of the split ``--repeat`` times with each reader, in one process, from the
page cache (a first untimed pass warms it): ``raw`` reads the files in 1 MiB chunks and parses
nothing (the ceiling), ``webdataset`` groups the members of ``tar_file_iterator`` (Python's
tarfile) with ``group_by_keys``, ``ours`` is :func:`pipelines.shards.reader.iter_shard`. Prints
samples/s and MB/s (10^6 bytes) of each and the ratios against raw and webdataset, all measured
in the same run (compare ratios, not absolute figures across runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from webdataset.tariterators import group_by_keys, tar_file_iterator

from cli.args import add_config_arguments, config_from_args
from common.errors import UserError, say_error, user_message
from pipelines.shards.manifest import ShardInfo
from pipelines.shards.reader import iter_shard
from pipelines.storage.base import Storage
from training.data import load_split, split_shards
from training.source import open_storage


def read_raw(storage: Storage, shard: ShardInfo) -> int:
    """Read the shard in 1 MiB chunks; returns the samples it holds (from the manifest)."""
    with storage.open(shard.key) as stream:
        while stream.read(1 << 20):
            pass
    return shard.samples


def read_webdataset(storage: Storage, shard: ShardInfo) -> int:
    """Count the shard's samples through WebDataset's tarfile-based iterator and grouping."""
    with storage.open(shard.key) as stream:
        files = ({**f, "__url__": shard.key} for f in tar_file_iterator(stream))
        return sum(1 for _ in group_by_keys(files))


def read_ours(storage: Storage, shard: ShardInfo) -> int:
    """Count the shard's samples through :func:`pipelines.shards.reader.iter_shard`."""
    return sum(1 for _ in iter_shard(storage, shard))


def measure(
    reader: Callable[[Storage, ShardInfo], int],
    storage: Storage,
    shards: list[ShardInfo],
    repeat: int,
) -> tuple[float, float]:
    """``(samples/s, MB/s)`` of ``reader`` over ``repeat`` passes of ``shards``."""
    start = time.perf_counter()
    samples = sum(reader(storage, shard) for _ in range(repeat) for shard in shards)
    seconds = time.perf_counter() - start
    nbytes = repeat * sum(s.bytes for s in shards)
    return samples / seconds, nbytes / seconds / 1e6


def main(argv: list[str] | None = None) -> int:
    """Measure the three readers and print the table; user errors print one line, exit 2."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, flags=("data", "format", "limit"))
    parser.add_argument("--repeat", type=int, default=10, help="passes over the shards")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, ["storage.type=fs"])
        source = open_storage(cfg)
        records, _ = load_split(source, cfg, cfg.dataset.train_split)
        _, shards, _ = split_shards(source, cfg, cfg.dataset.train_split, records)
    except UserError as exc:
        say_error(user_message(exc))
        return 2
    storage = source.storage
    readers = {"raw": read_raw, "webdataset": read_webdataset, "ours": read_ours}
    for reader in readers.values():  # warm the page cache and the code paths
        measure(reader, storage, shards, 1)
    results = {name: measure(r, storage, shards, args.repeat) for name, r in readers.items()}
    total = sum(s.bytes for s in shards)
    print(
        f"{len(shards)} shards, {sum(s.samples for s in shards)} samples, {total / 1e6:.1f} MB "
        f"({total / sum(s.samples for s in shards) / 1e3:.1f} kB/sample), x{args.repeat}, warm"
    )
    print(f"{'reader':<12}{'samples/s':>12}{'MB/s':>10}{'x raw':>8}{'x webdataset':>14}")
    for name, (rate, mbps) in results.items():
        vs_raw = mbps / results["raw"][1]
        vs_wds = rate / results["webdataset"][0]
        print(f"{name:<12}{rate:>12,.0f}{mbps:>10,.0f}{vs_raw:>8.2f}{vs_wds:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
