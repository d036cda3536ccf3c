"""Benchmark the access patterns on the filesystem and S3, with baselines and peers.

    make bench                          # embedded dataset, filesystem + a local S3 server
    make bench CONFIG=my-cluster.yaml   # your endpoint, dataset, model and matrix
    make bench LIMIT=200                # a quick look

Writes ``outputs/bench/<timestamp>/``: results.csv, steps.csv, report.md, throughput.png,
data_wait.png, au.png and the config used; prints a short table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.cli import USER_ERRORS, add_config_arguments, config_from_args, user_message


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, flags=("limit", "workers", "batch_size", "s3_endpoint",
                                        "s3_bucket", "s3_prefix", "data", "format"))  # fmt: skip
    parser.add_argument("--out", default="outputs/bench", help="parent folder of the run's folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; user errors print one line and return 2."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        cfg = config_from_args(args)
        from bench.report import goals, table, write_report
        from bench.run import run_bench, timestamp

        out = Path(args.out) / timestamp()
        results, steps, extras = run_bench(cfg, out)
        write_report(out, cfg.to_dict(), results, steps, extras)
    except USER_ERRORS as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    print(table(results))
    print("\n".join(goals(results, cfg.bench.decode)))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
