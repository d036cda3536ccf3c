"""Measure how fast this storage takes and gives back a training job's checkpoint.

    make checkpoint-bench                        # 1 GB on the filesystem and a local S3 server
    make checkpoint-bench SIZE_GB=8 NPROC=4      # 4 ranks, 2 GB each, at once
    make checkpoint-bench ARGS="--set checkpoint.model=outputs/detection"   # a trained model's

MLPerf Storage's checkpoint workload (:mod:`bench.checkpoint.run`): every rank writes its part
(fs with fsync, S3 with multipart uploads; torch.save and torch.distributed.checkpoint), the
checkpoint is made cold, every rank reads its part back with a new client and compares every
byte. Writes ``outputs/checkpoint-bench/<timestamp>/`` (results.csv, report.md, config.yaml)
and prints one line per storage and method. With ``checkpoint.ranks`` above one and no
torchrun, this starts the ranks itself on this machine. Exit status: 0; 1 when a storage or
method failed or read back different bytes (the report says which); 2 for a user error (one
line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.checkpoint.config import CheckpointBenchConfig
from cli.args import add_config_arguments
from cli.ranks import cpu_ranks_main
from training.distributed import Ranks


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, flags=("s3_endpoint", "s3_bucket"), command=CheckpointBenchConfig)
    parser.add_argument(
        "--out", default="outputs/checkpoint-bench", help="parent folder of the run's folder"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the checkpoint benchmark; see the module doc for the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    return cpu_ranks_main(
        argv,
        get_args_parser(),
        "scripts.checkpoint_bench",
        lambda cfg: cfg.checkpoint.ranks,
        checkpoint_bench,
    )


def checkpoint_bench(cfg: CheckpointBenchConfig, out: Path, ranks: Ranks) -> int:
    """Run every rank's part; rank 0 writes the outputs and prints a line per storage and method."""
    from bench.checkpoint.report import answer_lines, failed, write_outputs
    from bench.checkpoint.run import run_checkpoint_bench

    rows = run_checkpoint_bench(cfg, out, ranks)
    if not ranks.main:
        return 0
    write_outputs(out, cfg, rows)
    print("\n".join(answer_lines(rows)))
    print(f"report: {out / 'report.md'}")
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
