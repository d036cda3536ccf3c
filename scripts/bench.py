"""Benchmark the access patterns on the filesystem and S3, with baselines and peers.

    make bench                          # embedded dataset, filesystem + a local S3 server
    make bench CONFIG=my-cluster.yaml   # your endpoint, dataset, model and matrix
    make bench LIMIT=200                # a quick look (see quick_look)
    make bench NPROC=2                  # two ranks reading at once (torchrun)

Writes ``outputs/bench/<timestamp>/``: results.csv, steps.csv, report.md, throughput.png,
data_wait.png, au.png and the config used; prints the answer per storage and access pattern,
then a short table. Exit status: 0; 1 when a configuration or peer failed (its error is in
results.csv and report.md); 2 for a user error that stopped the run (one line).

With ``bench.ranks`` above one, the run is a torchrun launch of its largest count: under
torchrun (``make bench NPROC=N``) every rank runs this; started without torchrun, this starts it
(``scripts.launch --standalone``, one node). Rank 0 writes the outputs and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

import torch

from bench.loading.config import BenchConfig
from cli.args import add_config_arguments, config_from_args
from common.errors import UserError, say_error, user_message
from training import distributed

#: ``emulate`` and ``train`` passes of a quick look (``--limit``) measure at most this many
#: steps: on a CPU a real detector step takes seconds, and these passes are most of the run.
QUICK_STEPS = 3


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    flags = ("limit", "workers", "batch_size", "s3_endpoint", "s3_bucket", "s3_prefix", "data",
             "format")  # fmt: skip
    add_config_arguments(parser, flags=flags, command=BenchConfig)
    parser.add_argument("--out", default="outputs/bench", help="parent folder of the run's folder")
    return parser


def quick_look(cfg: BenchConfig) -> list[str]:
    """The overrides that make a run with ``dataset.limit`` N a quick look (empty without one).

    With ``LIMIT=N`` or ``--limit N``, a ``read`` pass reads the N images once (warm-up and measured
    steps together: ``ceil(N / loader.batch_size)`` steps, at most ``bench.read_steps``);
    ``emulate`` and ``train`` passes measure :data:`QUICK_STEPS` steps (at most ``bench.steps``).
    The matrix, passes, baselines and peers are unchanged, so every row is still there. ``--set``
    overrides come later and win.
    """
    limit = cfg.dataset.limit
    if limit is None:
        return []
    bench = cfg.bench
    read_steps = max(1, math.ceil(limit / cfg.loader.batch_size) - bench.warmup_steps)
    return [
        f"bench.read_steps={min(bench.read_steps, read_steps)}",
        f"bench.steps={min(bench.steps, QUICK_STEPS)}",
    ]


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The run's config: the file, the flags, :func:`quick_look`'s overrides, then ``--set``.

    Raises:
        ConfigError: an invalid file, flag or override.
    """
    cfg = config_from_args(args)
    quick = quick_look(cfg)
    return config_from_args(args, quick) if quick else cfg


def say_quick_look(cfg: BenchConfig) -> None:
    """Print what a quick look chose (nothing without ``dataset.limit``)."""
    if cfg.dataset.limit is not None:
        print(
            f"quick look (limit {cfg.dataset.limit}): read passes of {cfg.bench.read_steps} "
            f"steps, emulate and train passes of {cfg.bench.steps}; without LIMIT for the full "
            "benchmark"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 2 for a user error (one line), 1 when a configuration failed."""
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    try:
        ranks = distributed.from_environment()
    except UserError as exc:
        say_error(user_message(exc))
        return 2
    rank = f" [rank {ranks.rank}]" if ranks.distributed else ""
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s{rank} %(message)s")
    try:
        cfg = bench_config(args)
        if not ranks.distributed and max(cfg.bench.ranks, default=1) > 1:
            from cli.launch import relaunch

            return relaunch("scripts.bench", max(cfg.bench.ranks), argv, "bench.ranks")
        if ranks.main:
            say_quick_look(cfg)
        from bench.loading.report import console, write_report
        from bench.loading.run import run_bench
        from training.outputs import run_folder

        # an accelerator per rank for train mode only: read and emulate ranks need none
        device = (
            distributed.pick_device(cfg.train.device, ranks)
            if "train" in cfg.bench.modes
            else torch.device("cpu")
        )
        distributed.start(ranks, device, cfg.train.dist_timeout_s)
        out = run_folder(args.out)
        results, steps, extras = run_bench(cfg, out, ranks)
        if ranks.main:
            write_report(out, cfg.to_dict(), results, steps, extras)
    except UserError as exc:
        say_error(user_message(exc))
        return 2
    except distributed.RankFailed as exc:  # bench.on_error stop, after a failure on another rank
        if not ranks.main:
            return 0  # the rank that failed says why; rank 0 says which
        say_error(str(exc))
        return 1
    finally:
        distributed.stop()
    if not ranks.main:
        return 0
    print(console(cfg.to_dict(), results))
    print(f"report: {out / 'report.md'}")
    failed = [r["config"] for r in results if r.get("error")]
    failed += [f"peer {name}" for name in extras["peer_errors"]]
    if failed:
        print(f"failed: {', '.join(failed)} (errors in results.csv and report.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
