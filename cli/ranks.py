"""The ``main`` of the commands whose ranks need no accelerator: sweep, checkpoint-bench."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cli.args import config_from_args
from common.errors import UserError, say_error, user_message
from training.config import Config

if TYPE_CHECKING:
    from training.distributed import Ranks


def cpu_ranks_main(
    argv: list[str],
    parser: argparse.ArgumentParser,
    module: str,
    ranks_wanted: Callable[[Config], int],
    work: Callable[[Config, Path, Ranks], int],
) -> int:
    """Run a command whose ranks need no accelerator (``make sweep``, ``make checkpoint-bench``).

    Parses ``argv`` (``--out``: the runs' parent folder), logs warnings with each rank's number and
    reads the config. Without torchrun and with ``ranks_wanted(cfg) > 1`` (called only without
    torchrun: it may measure this machine first), starts that many ranks of ``python -m module
    argv`` here (:func:`cli.launch.relaunch`); otherwise joins the process group on the CPU (gloo),
    agrees on rank 0's run folder (:func:`training.outputs.run_folder`) and calls ``work(cfg, out,
    ranks)`` on every rank.

    Returns:
        The exit status: ``work``'s on rank 0 (0 on the others), the launch's after a relaunch, 2
        after a user error (printed as one line by the rank that made it; rank 0 names that rank and
        returns 1), 1 when a file cannot be written (one line).
    """
    import torch

    from training import distributed
    from training.outputs import run_folder

    args = parser.parse_args(argv)
    try:
        ranks = distributed.from_environment()
        rank = f" [rank {ranks.rank}]" if ranks.distributed else ""
        logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s{rank} %(message)s")
        cfg = config_from_args(args)
        wanted = 1 if ranks.distributed else ranks_wanted(cfg)
        if wanted > 1:
            from cli.launch import relaunch

            return relaunch(module, wanted, argv, module.rpartition(".")[2].replace("_", "-"))
        distributed.start(ranks, torch.device("cpu"), cfg.train.dist_timeout_s)
        status = work(cfg, run_folder(args.out), ranks)
    except UserError as exc:
        say_error(user_message(exc))
        return 2
    except distributed.RankFailed as exc:  # another rank's error, agreed: it printed it
        if not ranks.main:
            return 0
        say_error(str(exc))
        return 1
    except OSError as exc:  # an output folder not writable, a full disk
        say_error(str(exc))
        return 1
    finally:
        distributed.stop()
    return status if ranks.main else 0
