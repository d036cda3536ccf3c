"""How many simulated accelerators does this storage keep at or above a workload's AU threshold?

    make sweep WORKLOAD=retinanet                # simulated h100, up to 2 of them here
    make sweep WORKLOAD=resnet50 NPROC=8         # up to 8 ranks on this node (x NNODES)
    make sweep WORKLOAD=bccd                     # this tool's detector, its step time measured

MLPerf Storage's number, searched for by itself (:mod:`bench.sweep`): for each storage and
access pattern, double the accelerators from one per node until the mean AU falls below the
profile's threshold, bisect, then repeat the answer with new seeds. Writes
``outputs/sweep/<timestamp>/`` (sweep.csv, report.md, two plots, config.yaml) and prints the
answers. With ``sweep.max_accelerators`` above one and no torchrun, this starts the ranks
itself on this machine. Exit status: 0; 1 when a search failed (its error is in the report);
2 for a user error (one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.cli import add_config_arguments, cpu_ranks_main
from training.config import Config
from training.distributed import Ranks


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, flags=())
    parser.add_argument("--out", default="outputs/sweep", help="parent folder of the run's folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; see the module doc for the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    return cpu_ranks_main(
        argv, get_args_parser(), "scripts.sweep", lambda cfg: cfg.sweep.max_accelerators, sweep
    )


def sweep(cfg: Config, out: Path, ranks: Ranks) -> int:
    """Every rank: the search; rank 0 writes the outputs and prints the answers."""
    from bench.sweep import answer_line, run_sweep, write_outputs

    rows, searches, facts = run_sweep(cfg, out, ranks)
    if not ranks.main:
        return 0
    write_outputs(out, cfg, rows, searches, facts)
    print("\n".join(answer_line(facts["workload"], s) for s in searches))
    print(f"report: {out / 'report.md'}")
    return 1 if any(s.error for s in searches) else 0


if __name__ == "__main__":
    sys.exit(main())
