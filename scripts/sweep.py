"""Find how many simulated accelerators this storage keeps at or above a workload's AU threshold.

    make sweep                                   # retinanet on b200; fs and a local S3 server
    make sweep WORKLOAD=unet3d ACCELERATOR=b200  # MLPerf Storage v3.0's other closed workload
    make sweep ACCELERATORS=1,2,4,8              # those counts, no search: a curve
    make sweep RULES=closed                      # no answer unless every v3.0 rule holds
    make sweep NPROC=8 NNODES=2 NODE_RANK=...    # up to 8 per node on 2 client nodes

MLPerf Storage's number, searched for by itself (:mod:`bench.sweep.run`): for each storage and
access pattern, double the accelerators until the mean AU falls below the profile's threshold
or the client runs out, bisect, then run the answer again with new seeds; it says what ran out
there: the storage, the client's CPU or memory. Without torchrun and
``sweep.max_accelerators: auto`` one rank is measured first and the node's memory sets how many
ranks start (:mod:`bench.sweep.launch`). Writes ``outputs/sweep/<timestamp>/`` (sweep.csv,
report.md, points/*/summary.json, two plots, config.yaml) and prints each point and the
answers. Exit status: 0; 1 when a search failed (its error is in the report); 2 for a user
error (one line), or, with ``sweep.rules: closed``, rules that fail before anything runs (one
line each); 3 when closed rules fail on what was measured (the report lists them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.sweep.config import SweepConfig
from cli.args import add_config_arguments
from cli.ranks import cpu_ranks_main
from training.distributed import Ranks


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, flags=(), command=SweepConfig)
    parser.add_argument("--out", default="outputs/sweep", help="parent folder of the run's folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; see the module doc for the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    return cpu_ranks_main(argv, get_args_parser(), "scripts.sweep", launch_size, sweep)


def launch_size(cfg: SweepConfig) -> int:
    """The ranks to start (:func:`bench.sweep.launch.launch_size`)."""
    from bench.sweep.launch import launch_size as size

    return size(cfg)


def sweep(cfg: SweepConfig, out: Path, ranks: Ranks) -> int:
    """Run the sweep on every rank; rank 0 writes the outputs and prints the answers.

    Returns:
        The exit status of the module doc (0 on ranks other than 0).
    """
    from bench.sweep.report import answer_line, write_outputs
    from bench.sweep.run import run_sweep

    rows, searches, facts = run_sweep(cfg, out, ranks)
    if not ranks.main:
        return 0
    write_outputs(out, cfg, rows, searches, facts)
    print("\n".join(answer_line(facts["workload"], s, facts) for s in searches))
    print(f"report: {out / 'report.md'}")
    if any(s.refused for s in searches):
        return 3
    return 1 if any(s.error for s in searches) else 0


if __name__ == "__main__":
    sys.exit(main())
