"""How many simulated accelerators this client node can host (``sweep.max_accelerators: auto``).

A simulated accelerator sleeps its computation time, so memory, not cores, bounds how many a node
hosts: each gets the larger of one measured rank with its DataLoader workers (:class:`PeakMemory`,
proportional set size) and MLPerf Storage's "about 0.5 GB of host memory per simulated accelerator"
(Rules.md §3.3.3), out of the node's available memory less a reserve.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass

import psutil

from bench.sweep.rules import MEMORY_PER_ACCELERATOR_BYTES

#: The environment variable that hands the sizing measured before the launch to its ranks.
SIZING_ENV = "DSS_SWEEP_SIZING"

#: Memory kept back when sizing, as a share of the node's: the operating system, the page cache
#: the reads go through, and a local S3 server's processes live there.
RESERVE_SHARE = 0.10


@dataclass(frozen=True)
class Sizing:
    """How many simulated accelerators a node hosts, and why.

    Attributes:
        rank_bytes: one rank and its DataLoader workers at their peak (bytes, measured).
        available_bytes: memory the node had available before the ranks started (bytes).
        memory_bytes: the node's memory (bytes).
        accelerators: how many simulated accelerators fit (at least 1).
    """

    rank_bytes: int
    available_bytes: int
    memory_bytes: int
    accelerators: int

    def sentence(self) -> str:
        """One line for the console and the report."""
        per = max(self.rank_bytes, MEMORY_PER_ACCELERATOR_BYTES)
        return (
            f"this node hosts at most {self.accelerators} simulated accelerator(s): "
            f"{self.available_bytes / 2**30:.1f} GiB available less a {RESERVE_SHARE:.0%} "
            f"reserve, {per / 2**30:.2f} GiB each (one rank with its readers measured "
            f"{self.rank_bytes / 2**30:.2f} GiB; MLPerf Storage's rule of thumb "
            f"{MEMORY_PER_ACCELERATOR_BYTES / 2**30:.1f} GiB)"
        )


def hand_to_ranks(sizing: Sizing) -> None:
    """Put ``sizing`` in this process's environment, which the ranks it launches inherit."""
    os.environ[SIZING_ENV] = json.dumps(asdict(sizing))


def from_launcher() -> Sizing | None:
    """The sizing the launching process measured (:func:`hand_to_ranks`), or None."""
    text = os.environ.get(SIZING_ENV)
    return Sizing(**json.loads(text)) if text else None


def size_node(rank_bytes: int, available_bytes: int, memory_bytes: int) -> Sizing:
    """The accelerators (at least 1) a node hosts when each takes ``rank_bytes`` (module doc)."""
    per = max(rank_bytes, MEMORY_PER_ACCELERATOR_BYTES)
    usable = available_bytes - RESERVE_SHARE * memory_bytes
    return Sizing(rank_bytes, available_bytes, memory_bytes, max(1, int(usable // per)))


def group_bytes(process: psutil.Process | None = None) -> int:
    """Proportional set size (bytes) of ``process`` (default: this one) and its children.

    Read from ``/proc/<pid>/smaps_rollup`` (RSS where there is no PSS); a process that cannot be
    read (it exited) counts 0.
    """
    process = process or psutil.Process()
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.Error, AttributeError):  # gone, or no PSS on this platform
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return total


class PeakMemory:
    """The peak memory (``peak_bytes``) of this process and its children while a ``with`` block ran.

    :func:`group_bytes` is sampled every ``interval_s`` seconds in a thread.
    """

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, group_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
