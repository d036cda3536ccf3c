"""Several training processes at once, launched by torchrun: who this one is, its device, the
process group, and the few collectives the run needs.

``make train NPROC=4`` runs ``python -m torch.distributed.run --nproc-per-node 4 -m
scripts.train ...``: torchrun starts one process per rank and tells each, in its environment,
``RANK`` (0 to ``WORLD_SIZE - 1`` over all nodes), ``WORLD_SIZE`` and ``LOCAL_RANK`` (its
index on this node) (PyTorch docs, "torchrun (Elastic Launch)", environment variables). Each
rank joins the process group (gloo on a CPU, NCCL on CUDA, where rank ``r`` takes
``cuda:LOCAL_RANK``), trains a DistributedDataParallel copy of the model on its share of the
data, and the ranks exchange their figures at the end of each epoch. Without torchrun nothing
here changes the run: one rank, no process group.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from training.config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes.

    Attributes:
        rank: 0 to ``world_size - 1``, over all nodes.
        world_size: training processes in all (one per accelerator).
        local_rank: this process's index on its node (its GPU's index).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, which writes the outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are several ranks."""
        return self.world_size > 1


#: A run without torchrun: one rank.
ONE_RANK = Ranks()

#: Seconds a long barrier or gather waits (rank 0 writing the shards of a large dataset, or,
#: in the benchmark, measuring a baseline or peers or filling a local S3 server, while the
#: other ranks wait; ranks waiting while others read), instead of ``train.dist_timeout_s``.
LONG_WAIT_S = 7 * 24 * 3600

_long_group = None  # a gloo group with the long timeout, made by start()


class RankFailed(RuntimeError):
    """What another rank raised, as the text it printed (``rank N: ...``): exceptions do not
    travel between processes (:mod:`bench.ranks` agrees on them)."""


def from_environment() -> Ranks:
    """The ranks torchrun set in this process's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); one rank when they are not set.

    Raises:
        ConfigError: the variables are not whole numbers or do not fit together.
    """
    try:
        ranks = Ranks(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise ConfigError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)"
        ) from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise ConfigError(f"RANK={ranks.rank} is not in 0..WORLD_SIZE-1={ranks.world_size - 1}")
    return ranks


def pick_device(setting: str, ranks: Ranks = ONE_RANK) -> torch.device:
    """The device of this rank: ``auto`` → CUDA when available, else the CPU; on CUDA,
    ``cuda:LOCAL_RANK`` (one GPU per rank).

    Raises:
        ConfigError: ``cuda`` asked for but unavailable, or fewer GPUs than ranks on a node.
    """
    cuda = torch.cuda.is_available()
    if setting == "cuda" and not cuda:
        raise ConfigError("train.device is cuda but no CUDA device is available; use auto or cpu")
    if setting == "cpu" or not cuda:
        return torch.device("cpu")
    if ranks.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {ranks.local_rank} has no GPU ({torch.cuda.device_count()} on this "
            "node): start at most one rank per GPU (NPROC)"
        )
    return torch.device("cuda", ranks.local_rank)


def start(ranks: Ranks, device: torch.device, timeout_s: float) -> None:
    """Join the process group when there are several ranks: NCCL on CUDA, gloo on a CPU.

    ``timeout_s`` bounds every collective: a rank that died or hangs makes the others fail
    after that long instead of waiting forever (``torch.distributed.init_process_group``'s
    ``timeout``).
    """
    global _long_group
    if not ranks.distributed:
        return
    # on CUDA, CPU tensors (the per-step agreement, object collectives' sizes) go through gloo
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        rank=ranks.rank,
        world_size=ranks.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    _long_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=LONG_WAIT_S))
    log.info(
        "rank %d of %d (local rank %d), %s, process group %s",
        ranks.rank,
        ranks.world_size,
        ranks.local_rank,
        device,
        backend,
    )


def stop() -> None:
    """Leave the process group (nothing without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather(obj, *, long: bool = False) -> list:
    """``obj`` of every rank, in rank order, on every rank (``[obj]`` without a group).

    ``obj`` must pickle; it travels through ``all_gather_object``. ``long``: wait for the
    slowest rank for as long as :data:`LONG_WAIT_S` rather than ``train.dist_timeout_s``
    (the benchmark's ranks wait there while others read or rank 0 measures a baseline).
    """
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=_long_group if long else None)
    return gathered


def long_group():
    """The process group that waits as long as :data:`LONG_WAIT_S` (gloo; None without a
    process group): for collectives of other libraries (``torch.distributed.checkpoint``)
    that may wait on a slow storage longer than ``train.dist_timeout_s``."""
    return _long_group


def barrier(*, long: bool = False) -> None:
    """Wait until every rank gets here (nothing without a group). ``long``: for as long as
    :data:`LONG_WAIT_S` rather than ``train.dist_timeout_s`` (while rank 0 works alone)."""
    if dist.is_initialized():
        dist.barrier(group=_long_group if long else None)


def all_agree(flag: bool, group=None) -> bool:
    """Whether ``flag`` is true on every rank of ``group`` (default: all; ``flag`` without a
    process group): one small collective, so that every rank takes the same branch (a
    training step skipped on one rank alone would pair the other ranks' gradient exchanges
    with the wrong steps)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item())


def share_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): DDP broadcasts them
    before each forward pass, so after the last step each rank holds the statistics of its
    own last batch; evaluation and the saved model use rank 0's."""
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
