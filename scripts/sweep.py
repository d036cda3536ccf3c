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
import logging
import sys
from pathlib import Path

import torch

from training import distributed
from training.cli import USER_ERRORS, add_config_arguments, config_from_args, user_message


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
    args = get_args_parser().parse_args(argv)
    try:
        ranks = distributed.from_environment()
        rank = f" [rank {ranks.rank}]" if ranks.distributed else ""
        logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s{rank} %(message)s")
        cfg = config_from_args(args)
        if not ranks.distributed and cfg.sweep.max_accelerators > 1:
            from scripts.launch import relaunch

            return relaunch("scripts.sweep", cfg.sweep.max_accelerators, argv, "sweep")
        from bench.run import timestamp
        from bench.sweep import answer_line, run_sweep, write_outputs

        distributed.start(ranks, torch.device("cpu"), cfg.train.dist_timeout_s)
        out = Path(distributed.gather(str(Path(args.out) / timestamp()))[0])  # rank 0's
        rows, searches, facts = run_sweep(cfg, out, ranks)
        if ranks.main:
            write_outputs(out, cfg, rows, searches, facts)
    except USER_ERRORS as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    finally:
        distributed.stop()
    if not ranks.main:
        return 0
    print("\n".join(answer_line(facts["workload"], s) for s in searches))
    print(f"report: {out / 'report.md'}")
    return 1 if any(s.error for s in searches) else 0


if __name__ == "__main__":
    sys.exit(main())
