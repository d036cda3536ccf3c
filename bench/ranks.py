"""The benchmark over several ranks: which ranks read at each rank count, and how they keep in step.

Under torchrun every rank walks the same matrix in the same order; rank 0 does what is done once
(shards, a local S3 server, baselines, peers, outputs) while the others wait. At a rank count ``k``
below the world size, ``k`` ranks read, spread evenly over the nodes (MLPerf Storage's rule for
several hosts): local rank 0 of every node first, then local rank 1, and so on; rank 0 is always
among them. An error on one rank reaches the others as a :class:`RankFailed` carrying its text, so
every rank takes the same branch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch.distributed as dist

from common.errors import UserError, user_message
from training import distributed
from training.config import ConfigError
from training.distributed import RankFailed, Ranks

T = TypeVar("T")


@dataclass(frozen=True)
class RankSubset:
    """The ranks that read at one rank count.

    Attributes:
        members: their global ranks, in the order that gives each its part of the split
            (member ``i`` reads part ``i`` of ``len(members)``).
        group: their process group for DistributedDataParallel's gradient exchange in a
            ``train`` pass, or the per-step barrier of an ``emulate`` one
            (:func:`with_fresh_group`); None otherwise.
    """

    members: tuple[int, ...]
    group: object = None

    @property
    def size(self) -> int:
        """How many ranks read."""
        return len(self.members)

    def part(self, rank: int) -> int | None:
        """Which part of the split global rank ``rank`` reads, or None when it waits."""
        return self.members.index(rank) if rank in self.members else None

    def first_on_node(self, rank: int, node_of: list[int]) -> bool:
        """Whether ``rank`` is the first member on its node (``node_of[r]``: rank ``r``'s node).

        That rank drops the node's page cache before a cold pass.
        """
        here = [m for m in self.members if node_of[m] == node_of[rank]]
        return here[:1] == [rank]


def spread(places: list[tuple[int, int]]) -> list[int]:
    """Global ranks in the order the benchmark puts them to work, spread evenly over the nodes.

    ``places[r]`` is rank ``r``'s ``(node, local rank)``; local rank 0 of every node comes first,
    then local rank 1, so the first ``k`` are spread as evenly as can be.
    """
    return sorted(range(len(places)), key=lambda r: (places[r][1], places[r][0]))


def node_of_this_rank() -> int:
    """This rank's node: torchrun's ``GROUP_RANK`` (0 without torchrun).

    Raises:
        ConfigError: ``GROUP_RANK`` is not a whole number.
    """
    try:
        return int(os.environ.get("GROUP_RANK", 0))
    except ValueError:
        raise ConfigError("GROUP_RANK must be a whole number (torchrun sets it)") from None


def check_counts(counts: list[int], world_size: int) -> None:
    """Check that ``bench.ranks`` fits this launch: not empty, its largest count the world size.

    Raises:
        ConfigError: otherwise, saying how to launch.
    """
    if not counts:
        raise ConfigError("bench.ranks is empty: list the rank counts to compare, e.g. [1, 2, 4]")
    if max(counts) != world_size:
        raise ConfigError(
            f"bench.ranks {counts} needs {max(counts)} ranks but this launch has {world_size}: "
            f"make bench NPROC=N runs N ranks (x NNODES) and sets bench.ranks to [N x NNODES]; "
            'for a list, launch its largest count (ARGS="--set bench.ranks=[1,2,4]" NPROC=4)'
        )


class BenchRanks:
    """This rank's view of the benchmark's ranks: the subset at each rank count, each rank's node.

    Made on every rank at the same point (it gathers every rank's node and local rank).

    Args:
        ranks: this process's place (:func:`training.distributed.from_environment`).
        counts: ``bench.ranks``, each at most the world size.
    """

    def __init__(self, ranks: Ranks, counts: list[int]):
        self.ranks = ranks
        places = distributed.gather((node_of_this_rank(), ranks.local_rank))
        self.nodes = len({node for node, _ in places})
        #: each rank's node, by global rank
        self.node_of = [node for node, _ in places]
        order = spread(places)
        self.subsets = {k: RankSubset(tuple(order[:k])) for k in sorted(set(counts))}

    def subset(self, k: int) -> RankSubset:
        """The ranks that read at rank count ``k``."""
        return self.subsets[k]


def with_fresh_group(subset: RankSubset) -> RankSubset:
    """``subset`` with a process group of its own for one pass; unchanged for one rank.

    Every rank calls it (creating a group is collective). A new group each pass, destroyed after it
    (:func:`drop_group`), so that a pass that failed mid-exchange on gloo leaves no half-done
    collective behind for the next. On CUDA, NCCL's watchdog ends a process whose exchange timed
    out: the launch then ends, naming the rank.
    """
    if subset.size == 1:
        return subset
    return RankSubset(subset.members, dist.new_group(sorted(subset.members)))


def drop_group(subset: RankSubset, rank: int) -> None:
    """Destroy the group :func:`with_fresh_group` gave ``subset`` (on its members, if any)."""
    if subset.group is not None and rank in subset.members:
        dist.destroy_process_group(subset.group)


def main_process_first(fn: Callable[[], T], ranks: Ranks) -> T:
    """Call ``fn`` on rank 0, then, once it worked there, on the other ranks.

    Rank 0 writes what is missing (shards) before the others look for it.

    Returns:
        What ``fn`` returned on this rank.

    Raises:
        Exception: on every rank when ``fn`` failed on any: the exception itself on the rank that
            raised it, :class:`RankFailed` naming that rank and its error elsewhere.
    """
    value, error = None, None
    if ranks.main:
        value, error = attempt(fn)
    if distributed.gather(_text(error), long=True)[0] is None and not ranks.main:
        value, error = attempt(fn)
    agree_on_errors(error)
    return value


def agree_on_errors(error: BaseException | None) -> None:
    """Raise on every rank when any rank had an ``error``; a collective, called by every rank.

    This rank's own exception, or a :class:`RankFailed` naming the first rank that failed.
    """
    gather_agreed(None, error)


def gather_agreed(value, error: BaseException | None) -> list:
    """Every rank's ``value`` in rank order when no rank had an ``error``; else raise everywhere.

    Raises as :func:`agree_on_errors`. One collective, on the long group (ranks may wait here while
    others read or rank 0 measures).
    """
    gathered = distributed.gather((value, _text(error)), long=True)
    if error is not None:
        raise error
    for rank, (_, text) in enumerate(gathered):
        if text is not None:
            raise RankFailed(f"rank {rank}: {text}")
    return [v for v, _ in gathered]


def everywhere(fn: Callable[[], T]) -> T:
    """Call ``fn`` on every rank at once; raise on every rank when it failed on any."""
    value, error = attempt(fn)
    agree_on_errors(error)
    return value


def attempt(fn: Callable[[], T]) -> tuple[T | None, Exception | None]:
    """``(fn(), None)``, or ``(None, the exception fn raised)``."""
    try:
        return fn(), None
    except Exception as exc:
        return None, exc


def on_main(fn: Callable[[], T], ranks: Ranks) -> T:
    """Call ``fn`` on rank 0 alone; every rank gets what it returned (it must pickle).

    Raises:
        Exception: on every rank when ``fn`` failed (as :func:`agree_on_errors` does).
    """
    value, error = attempt(fn) if ranks.main else (None, None)
    return gather_agreed(value, error)[0]


def error_text(exc: BaseException) -> str:
    """One line for a failed configuration and for the other ranks.

    A user error's (or another rank's, which names the rank) message; else the exception's type and
    message.
    """
    text = user_message(exc).splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (UserError, RankFailed)):
        return text
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def _text(error: BaseException | None) -> str | None:
    """An error as one line for the other ranks (None: no error)."""
    return None if error is None else error_text(error)
