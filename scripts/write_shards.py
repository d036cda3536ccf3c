"""Write a split of the dataset into WebDataset tar shards and print them with their sizes.

    python -m scripts.write_shards --split train --shard-size-mb 1
    make shards SPLIT=train

Shards go under ``<dataset.shards_prefix>/<split>`` of the dataset's storage (``-first<N>`` is
appended with ``--limit N``), which is where the shards access pattern looks for them. Existing
shards of the same images are reused, never overwritten; delete the folder to write them again.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cli.args import add_config_arguments, config_from_args
from common.errors import UserError, say_error, user_message


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(
        parser,
        flags=("limit", "storage", "data", "format", "s3_endpoint", "s3_bucket", "s3_prefix"),
    )
    parser.add_argument(
        "--split", default=None, help="split to write (default: dataset.train_split)"
    )
    parser.add_argument(
        "--shard-size-mb",
        type=float,
        default=None,
        help="overrides dataset.shard_size_mb (MB = 10^6 bytes)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write (or find) the shards and print one line per shard; user errors return 2."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    size = [] if args.shard_size_mb is None else [f"dataset.shard_size_mb={args.shard_size_mb}"]
    try:
        cfg = config_from_args(args, size)
        from training.data import load_split, split_shards
        from training.source import open_storage

        source = open_storage(cfg)
        storage = source.storage
        split = args.split or cfg.dataset.train_split
        records, _ = load_split(source, cfg, split)
        prefix, shards, written = split_shards(
            source,
            cfg,
            split,
            records,
            on_shard=lambda s: print(
                f"wrote {storage.describe(s.key)}  {s.bytes / 1e6:.2f} MB  {s.samples} samples",
                flush=True,
            ),
        )
    except UserError as exc:
        say_error(user_message(exc))
        return 2
    if not written:
        for s in shards:
            print(f"exists {storage.describe(s.key)}  {s.bytes / 1e6:.2f} MB  {s.samples} samples")
    total = sum(s.bytes for s in shards)
    print(
        f"{len(shards)} shards, {sum(s.samples for s in shards)} samples, "
        f"{total / 1e6:.2f} MB in {storage.describe(prefix)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
