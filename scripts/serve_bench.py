"""Measure how the served models hold up under load.

    make archive && make serve-bench                 # every archive in model_store
    make serve-bench MODEL=detector REQUESTS=1000 CONCURRENCY=1,2,4,8,16 BAD=0.1

Starts TorchServe from the model store on free loopback ports (its cold start timed: from the
start to every model's workers READY), sends ``--requests`` requests per concurrency level to
each model (:mod:`bench.serving.load`: real images of the evaluation split, round robin; a share
``--bad`` of deliberately bad bodies, each of which must get its 4xx), reads TorchServe's own
metrics and the workers before and after, runs the same model in this process on the same
images right after each served run (``--repeats`` runs per level, the requests shared among
them: the served/in-process ratio is the median of the runs' ratios, with its range, flagged
unstable when it spreads more than 10 %), stops the server. Writes
``outputs/serve-bench/<timestamp>/`` (results.csv, report.md, latency.png, throughput.png) and
prints a table. Exit status: 0; 1 when an answer was wrong or a worker restarted; 2 for a user
error (one line).
"""

from __future__ import annotations

import argparse
import sys

from bench.serving.report import table, write_outputs
from bench.serving.run import check_args, run
from cli.args import add_keys_argument
from common.errors import UserError, say_error
from serve.properties import ServeError
from training.outputs import run_folder


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-store", default="model_store", help="folder of *.mar archives")
    parser.add_argument("--models", default="", help="comma-separated model names; empty: all")
    parser.add_argument("--requests", type=int, default=1000, help="requests per concurrency")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per concurrency level, the requests shared among them, each followed by the "
        "in-process run (A B A B): the served/in-process ratio is their median and range",
    )
    parser.add_argument("--concurrency", default="8", help="comma-separated concurrency levels")
    parser.add_argument("--bad", type=float, default=0.0, help="share of bad bodies, 0 to 1")
    parser.add_argument("--out", default="outputs/serve-bench", help="parent of the run folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the server start")
    add_keys_argument(parser, config=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module doc for the exit status."""
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        store, models, levels = check_args(args)
        rows = run(args, store, models, levels)
    except (UserError, ServeError, FileNotFoundError) as exc:
        say_error(str(exc))
        return 2
    out = run_folder(args.out)
    write_outputs(out, vars(args), rows)
    print(table(rows))
    print(f"report: {out / 'report.md'}")
    bad = [r for r in rows if r["wrong"] or r["worker_restarts"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
