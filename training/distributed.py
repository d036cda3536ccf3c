"""Several training processes launched by torchrun: this rank, its device, the process group.

torchrun sets ``RANK`` (0 to ``WORLD_SIZE - 1`` over all nodes), ``WORLD_SIZE`` and ``LOCAL_RANK``
(the index on this node) in each rank's environment (PyTorch docs, "torchrun (Elastic Launch)").
Without torchrun: one rank, no process group.
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
    """Another rank's error as the text it printed (``rank N: ...``): exceptions do not travel."""


def from_environment() -> Ranks:
    """The ranks torchrun set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` variables); else one rank.

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
    """This rank's device: ``auto`` is CUDA if available, else the CPU; CUDA is ``cuda:LOCAL_RANK``.

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

    ``timeout_s`` bounds every collective (``init_process_group``'s ``timeout``): a rank that died
    or hangs makes the others fail after that long. Also makes the gloo group of :func:`long_group`.
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

    ``obj`` must pickle (``all_gather_object``). ``long``: wait up to :data:`LONG_WAIT_S`, not
    ``train.dist_timeout_s``.
    """
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=_long_group if long else None)
    return gathered


def long_group():
    """The gloo group that waits up to :data:`LONG_WAIT_S`, for other libraries' collectives.

    E.g. ``torch.distributed.checkpoint`` on a slow storage; None without a process group.
    """
    return _long_group


def barrier(*, long: bool = False) -> None:
    """Wait for every rank (nothing without a group); ``long``: up to :data:`LONG_WAIT_S`."""
    if dist.is_initialized():
        dist.barrier(group=_long_group if long else None)


def all_agree(flag: bool, group=None) -> bool:
    """Whether ``flag`` is true on every rank of ``group`` (default: all; ``flag`` without a group).

    One small collective, so that every rank takes the same branch (a step skipped on one rank alone
    would pair the others' gradient exchanges with the wrong steps).
    """
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item())


def share_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) for evaluation and the saved model.

    DDP broadcasts them before each forward pass, so after the last step each rank holds its own.
    """
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
