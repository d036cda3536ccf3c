"""Start several ranks with torchrun, and say in one line why a launch failed.

    python -m scripts.launch --nproc-per-node 4 --standalone -m scripts.train ...
    python -m scripts.launch --nproc-per-node 8 --nnodes 2 --node-rank 0 \\
        --master-addr 10.0.0.1 --master-port 29500 --rdzv-conf timeout=300 -m scripts.train ...

The arguments are torchrun's (``python -m torch.distributed.run --help``), run by its own ``main``.
Its two launch failures become a last line a user can act on: a node that never joined the
rendezvous (what to check), or the rank that failed first (exit code or signal; its ``[rank N]``
lines above say why). ``make train NPROC=...`` uses it.

Exit status: 0 when every rank succeeded; the exit code of the rank that failed first (1 when it was
killed by a signal); 2 when the nodes did not all join; 128 + the signal's number when torchrun or a
rank was asked to stop (SIGTERM, SIGINT) and the ranks wrote a step checkpoint.
"""

from __future__ import annotations

import sys

from torch.distributed import DistError
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import RendezvousError
from torch.distributed.run import main as torchrun_main

from common.errors import first_line

#: Exit codes of a training rank that stopped on SIGINT or SIGTERM after a step checkpoint.
PREEMPTED_CODES = (128 + 2, 128 + 15)


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; return its exit status (see the module doc)."""
    try:
        torchrun_main(argv)
    except (DistError, RendezvousError) as exc:  # the store, the network, the rendezvous
        print(
            f"error: the nodes did not all join the rendezvous ({first_line(exc)}): start the "
            "same command on every node with its own NODE_RANK (0 to NNODES-1) and the same "
            "NNODES, MASTER_ADDR and MASTER_PORT, and check that MASTER_ADDR:MASTER_PORT is "
            "reachable from every node",
            file=sys.stderr,
        )
        return 2
    except SignalException as exc:  # torchrun itself was signalled and passed it on to the ranks
        print(
            f"stopped by {exc.sigval.name}, passed on to the ranks: ranks that were training "
            "wrote a step checkpoint ('preempted at epoch E step S' above) that make resume "
            "continues from",
            file=sys.stderr,
        )
        return 128 + exc.sigval
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode in PREEMPTED_CODES:  # a rank was signalled and stopped cleanly
            print(
                f"stopped: rank {rank} was asked to stop (exit code {failure.exitcode}) and the "
                "ranks wrote a step checkpoint; make resume continues the run",
                file=sys.stderr,
            )
            return failure.exitcode
        how = (
            f"signal {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exit code {failure.exitcode}"
        )
        print(
            f"error: rank {rank} (local rank {failure.local_rank}) failed first, {how}; any "
            f"other rank still running was stopped. Its own lines ([rank {rank}]) above say why",
            file=sys.stderr,
        )
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def relaunch(module: str, nproc: int, argv: list[str], why: str) -> int:
    """Print ``why`` and run ``python -m module argv`` as ``nproc`` ranks here (``--standalone``).

    Returns :func:`main`'s exit status; for commands needing several ranks when run without
    torchrun.
    """
    print(f"{why}: starting {nproc} ranks with torchrun on this machine")
    return main(["--standalone", "--nproc-per-node", str(nproc), "-m", module, *argv])
