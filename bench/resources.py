"""What a configuration costs the machine: peak memory, and CPU time to tell CPU-bound from waiting.

Counters: client CPU (user + system seconds of this process and the DataLoader workers it starts,
not a local S3 server; psutil's per-process times, 10 ms clock ticks); host CPU (busy seconds of all
cores: user, nice, system, irq, softirq, from ``psutil.cpu_times()``; steal counted apart: busy plus
steal near the core count means CPU-bound); available memory (``MemAvailable``); bytes read from the
block device holding the data (``/proc/diskstats``: bytes delivered beyond those came from memory).
Over a window, MB/s = host busy cores / host CPU seconds per MB, so the ratio of two measurements'
MB/s is exactly (the ratio of their busy cores) x (the inverse ratio of their CPU per MB).
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Sample:
    """One reading of the counters.

    Attributes:
        at: ``time.perf_counter()`` when taken (seconds).
        rss_bytes: resident memory of the client's processes (bytes).
        client_s: CPU seconds (user + system) of the client's processes, cumulative.
        host_s: busy CPU seconds of the whole machine, all cores, cumulative.
        steal_s: CPU seconds a hypervisor ran other machines while this one's cores wanted to run
            (Linux guests; 0 elsewhere), cumulative.
        available_bytes: memory the machine can still give without swapping (bytes; 0: not read).
        device_read_bytes: bytes read from the sampler's block device since boot (0: not read).
    """

    at: float
    rss_bytes: int
    client_s: float
    host_s: float
    steal_s: float = 0.0
    available_bytes: int = 0
    device_read_bytes: int = 0


def host_times() -> tuple[float, float]:
    """``(busy, steal)`` CPU seconds of all cores since boot.

    Busy is user, nice, system, irq and softirq (the last two, and steal, where the platform reports
    them).
    """
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def device_of(path: str | os.PathLike) -> str | None:
    """The block device holding ``path``, by its ``/proc/diskstats`` name (``vda``, ``dm-0``).

    From ``/sys/dev/block/MAJOR:MINOR``; None where no block device of this machine holds it (tmpfs,
    overlay, network filesystems) or off Linux.

    Raises:
        OSError: ``path`` does not exist.
    """
    st = os.stat(path)
    link = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    return link.resolve().name if link.exists() else None


def device_read_bytes(device: str | None) -> int:
    """Bytes read from ``device`` (:func:`device_of`) since boot; 0 for None or one not listed."""
    if device is None:
        return 0
    counters = psutil.disk_io_counters(perdisk=True) or {}
    found = counters.get(device)
    return found.read_bytes if found is not None else 0


def process_sample() -> Sample:
    """Read the counters for this process alone (threads, not children), as a baseline does."""
    me = psutil.Process()
    with me.oneshot():
        own = me.cpu_times()
        rss = me.memory_info().rss
    return Sample(time.perf_counter(), rss, own.user + own.system, *host_times())


@dataclass(frozen=True)
class CpuUse:
    """CPU spent over a window of ``seconds`` (wall clock).

    Attributes:
        seconds: the window's length.
        client_s: CPU seconds of this process and its children in the window.
        host_s: busy CPU seconds of the whole machine in the window.
        steal_s: CPU seconds a hypervisor took from the machine in the window.
    """

    seconds: float
    client_s: float
    host_s: float
    steal_s: float = 0.0

    @classmethod
    def between(cls, first: Sample, last: Sample, seconds: float | None = None) -> CpuUse:
        """The CPU spent from ``first`` to ``last`` over ``seconds`` (default: the time between)."""
        window = last.at - first.at if seconds is None else seconds
        return cls(
            window,
            last.client_s - first.client_s,
            last.host_s - first.host_s,
            last.steal_s - first.steal_s,
        )

    def figures(self, nbytes: int, prefix: str = "") -> dict[str, float]:
        """The CPU figures per MB read and per second, each key prefixed with ``prefix``.

        ``cpu_ms_per_mb`` (client CPU ms per MB, MB = 10^6 bytes), ``host_cpu_ms_per_mb`` (the whole
        machine's), ``host_busy_cores`` (busy CPU seconds per second), ``host_steal_cores`` (stolen
        CPU seconds per second); NaN where undefined (no bytes, or an empty window).
        """
        per_mb = 1e3 / (nbytes / 1e6) if nbytes > 0 else math.nan
        per_s = 1 / self.seconds if self.seconds > 0 else math.nan
        return {
            f"{prefix}cpu_ms_per_mb": self.client_s * per_mb,
            f"{prefix}host_cpu_ms_per_mb": self.host_s * per_mb,
            f"{prefix}host_busy_cores": self.host_s * per_s,
            f"{prefix}host_steal_cores": self.steal_s * per_s,
        }


def interpolate(samples: list[Sample], at: float) -> Sample:
    """The counters at time ``at``, interpolated linearly between the samples around it.

    Clamped to the first and last sample; ``samples`` in time order, at least one.
    """
    times = [s.at for s in samples]
    i = bisect.bisect_left(times, at)
    if i == 0:
        return samples[0]
    if i == len(samples):
        return samples[-1]
    a, b = samples[i - 1], samples[i]
    w = (at - a.at) / (b.at - a.at) if b.at > a.at else 1.0
    return Sample(
        at,
        max(a.rss_bytes, b.rss_bytes),
        a.client_s + w * (b.client_s - a.client_s),
        a.host_s + w * (b.host_s - a.host_s),
        a.steal_s + w * (b.steal_s - a.steal_s),
        min(a.available_bytes, b.available_bytes),
        round(a.device_read_bytes + w * (b.device_read_bytes - a.device_read_bytes)),
    )


class ResourceSampler:
    """Sample the counters in a thread every ``interval_s`` while a ``with`` block runs.

    The client is this process plus the children started inside the block (DataLoader workers);
    children already running when it began (a local S3 server) count in the host's CPU only. A
    child's CPU is its last reading, so a worker that exits keeps what it spent. ``peak_rss_bytes``
    is the largest RSS seen; :meth:`cpu` gives the CPU of any window inside the block, interpolated
    between samples (accuracy: the sample spacing and the 10 ms tick, so windows under a second are
    approximate). With ``rss_only`` each sample reads this process's RSS alone (tens of
    microseconds), for memory measurements every few milliseconds; :meth:`cpu` then means nothing.
    Otherwise each sample also reads the available memory and the bytes read from ``device``
    (:func:`device_of`; None: not read), for :meth:`min_available_bytes` and :meth:`device_bytes`.
    """

    def __init__(
        self, interval_s: float = 0.05, *, rss_only: bool = False, device: str | None = None
    ):
        self.interval_s = interval_s
        self.rss_only = rss_only
        self.device = device
        self.samples: list[Sample] = []
        self._me = psutil.Process()
        self._ignored: set[int] = set()  # children running before the block
        self._children_s: dict[int, float] = {}  # pid → CPU seconds at its last reading
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    @property
    def peak_rss_bytes(self) -> int:
        """The largest RSS (bytes) sampled so far."""
        return max((s.rss_bytes for s in self.samples), default=0)

    def cpu(self, start: float, end: float) -> CpuUse:
        """CPU spent between the ``time.perf_counter()`` times ``start`` and ``end``."""
        return CpuUse.between(interpolate(self.samples, start), interpolate(self.samples, end))

    def min_available_bytes(self, start: float, end: float) -> int:
        """The least memory (bytes) available between perf-counter times ``start`` and ``end``.

        The samples around the window count.
        """
        inside = [s.available_bytes for s in self.samples if start <= s.at <= end]
        edges = [interpolate(self.samples, start), interpolate(self.samples, end)]
        return min([*inside, *(s.available_bytes for s in edges)])

    def device_bytes(self, start: float, end: float) -> int:
        """Bytes read from ``device`` between ``start`` and ``end`` (interpolated; 0: none)."""
        first, last = interpolate(self.samples, start), interpolate(self.samples, end)
        return max(0, last.device_read_bytes - first.device_read_bytes)

    def _take(self) -> Sample:
        if self.rss_only:
            return Sample(time.perf_counter(), self._me.memory_info().rss, 0.0, 0.0)
        own = process_sample()
        own = replace(
            own,
            available_bytes=psutil.virtual_memory().available,
            device_read_bytes=device_read_bytes(self.device),
        )
        rss = own.rss_bytes
        for child in self._me.children(recursive=True):
            if child.pid in self._ignored:
                continue
            try:  # CPU first: an exiting child's times stay readable longer than its memory
                times = child.cpu_times()
                self._children_s[child.pid] = times.user + times.system
                rss += child.memory_info().rss
            except psutil.Error:
                pass
        return replace(own, rss_bytes=rss, client_s=own.client_s + sum(self._children_s.values()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self._take())

    def __enter__(self) -> ResourceSampler:
        self._ignored = {c.pid for c in self._me.children(recursive=True)}
        self.samples.append(self._take())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._take())
