"""One place where time and bytes are measured: data wait vs compute, per step and per epoch.

:meth:`EpochMeter.summary` defines the figures (the README's "Metrics" section repeats them);
:func:`aggregate` combines the ranks'; :func:`gc_frozen` keeps full garbage collections out.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipelines.storage.base import RequestStats

#: How many :func:`gc_frozen` blocks this thread is inside.
_frozen_depth = 0


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep Python's full garbage collections out of a measurement.

    On entry the garbage is collected (before any clock starts) and the existing objects frozen
    (``gc.freeze``) until exit, so collections traverse only what the measurement creates (a full
    one takes 0.2-0.3 s with torch loaded); DataLoader workers forked meanwhile inherit the freeze.
    Every measured loop uses it, so all sides are measured alike; nested blocks collect and freeze
    once.
    """
    global _frozen_depth
    if _frozen_depth == 0:
        gc.collect()
        gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()


@dataclass
class StepRecord:
    """One training step: sizes in bytes, times in seconds."""

    epoch: int
    step: int
    samples: int
    skipped: int
    bytes_read: int
    read_s: float
    data_wait_s: float
    compute_s: float
    loss: float
    requests: int = 0
    retries: int = 0


@dataclass
class EpochMeter:
    """Accumulates :class:`StepRecord` s of one epoch and derives the epoch's figures."""

    epoch: int
    steps: list[StepRecord] = field(default_factory=list)
    requests: RequestStats = field(default_factory=RequestStats)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    #: when the warm-up ended (the clock's start before any ``from_first_read`` adjustment)
    warmed_up: float | None = None
    #: a resumed epoch: the measured wall time of its steps before the stop (seconds)
    prior_wall_s: float = 0.0
    #: a resumed epoch: seconds from the step checkpoint to the resumed steps' start
    restart_gap_s: float = 0.0

    def add(self, record: StepRecord, requests: RequestStats | None = None) -> None:
        """Record one step and the storage requests made for its batch."""
        self.steps.append(record)
        if requests is not None:
            self.requests.merge(requests)

    def finish(self) -> None:
        """Stop the epoch's wall clock."""
        self.finished = time.perf_counter()

    def state(self) -> dict:
        """The steps so far as plain data (a step checkpoint holds it; ``torch.load`` with
        ``weights_only`` reads it): ``steps`` (dicts), ``requests`` and ``wall_s`` up to now."""
        requests = self.requests
        return {
            "steps": [vars(s).copy() for s in self.steps],
            "requests": {"requests": requests.requests, "retries": requests.retries,
                         "errors": dict(requests.errors), "ttfb_s": list(requests.ttfb_s)},
            "wall_s": time.perf_counter() - self.started + self.prior_wall_s,
        }  # fmt: skip

    @classmethod
    def resumed(cls, epoch: int, state: dict, restart_gap_s: float) -> EpochMeter:
        """The meter of an epoch resumed from :meth:`state`: its steps, requests and wall time
        so far, and the seconds between the step checkpoint and now (``restart_gap_s``)."""
        requests = state["requests"]
        return cls(
            epoch,
            steps=[StepRecord(**s) for s in state["steps"]],
            requests=RequestStats(requests["requests"], requests["retries"],
                                  Counter(requests["errors"]), list(requests["ttfb_s"])),
            prior_wall_s=state["wall_s"],
            restart_gap_s=restart_gap_s,
        )  # fmt: skip

    def summary(self) -> dict:
        """The epoch's totals and rates, with the units in the key names.

        Returns:
            ``epoch``, ``steps``, ``samples``, ``skipped``, ``loss`` (mean over steps with samples),
            the request figures of :func:`request_summary`, and:

            - ``data_wait_s``: seconds the training loop blocked in ``next(loader)`` waiting for a
              batch (the *data stall*).
            - ``compute_s``: seconds from receiving a batch to the end of its optimizer step, device
              work included (CUDA is synchronised before the clock stops).
            - ``wall_s``: seconds from asking for the first measured batch (after the warm-up steps)
              to the end of the last step; in the benchmark's ``read`` mode, from the first storage
              read for a measured batch when that came earlier (read ahead during the warm-up). A
              resumed epoch adds the wall time of its steps before the stop (``prior_wall_s``).
            - ``restart_gap_s``: a resumed epoch's seconds between its step checkpoint and the
              resumed steps' start (not in ``wall_s`` nor ``data_wait_s``); 0 otherwise.
            - ``au``: accelerator utilisation, ``compute_s / wall_s``, as MLPerf Storage defines it
              (MLPerf Storage rules, "accelerator utilization"); 1.0 means storage never stalled
              training.
            - ``bytes_read``: bytes actually read from storage for the epoch's samples (shards: tar
              headers and padding included).
            - ``read_s``: seconds spent inside storage read calls, summed over all readers
              (DataLoader workers read in parallel, so it can exceed ``wall_s``).
            - ``read_mbps``: ``bytes_read / read_s / 1e6``: MB/s (10^6 bytes) of one reader.
            - ``throughput_mbps``: ``bytes_read / wall_s / 1e6``: MB/s delivered to training.
            - ``samples_per_s``: ``samples / wall_s``; ``samples_per_s_after_warmup``: from the end
              of the warm-up, read-ahead credited (the rate peer loaders are timed by).
            - ``requests``: storage read requests (S3 GETs; filesystem opens); ``bytes_per_request``
              is ``bytes_read / requests``; ``retries``: requests retried after transient failures;
              ``ttfb_p50_ms`` / ``ttfb_p99_ms``: median and 99th percentile time to first byte in
              milliseconds (nearest-rank percentiles); ``errors``: failed requests by kind.
        """
        wall = (self.finished or time.perf_counter()) - self.started + self.prior_wall_s
        samples = sum(s.samples for s in self.steps)
        nbytes = sum(s.bytes_read for s in self.steps)
        read_s = sum(s.read_s for s in self.steps)
        compute = sum(s.compute_s for s in self.steps)
        losses = [s.loss for s in self.steps if s.samples]
        return {
            "epoch": self.epoch,
            "steps": len(self.steps),
            "samples": samples,
            "skipped": sum(s.skipped for s in self.steps),
            "bytes_read": nbytes,
            "read_s": read_s,
            "data_wait_s": sum(s.data_wait_s for s in self.steps),
            "compute_s": compute,
            "wall_s": wall,
            "restart_gap_s": self.restart_gap_s,
            "read_mbps": _ratio(nbytes, read_s) / 1e6,
            "throughput_mbps": _ratio(nbytes, wall) / 1e6,
            "samples_per_s": _ratio(samples, wall),
            "au": _ratio(compute, wall),
            # the classic loader benchmark's rate: from the end of the warm-up, read-ahead
            # credited (what peer loaders are timed by)
            "samples_per_s_after_warmup": _ratio(
                samples, (self.finished or time.perf_counter()) - (self.warmed_up or self.started)
            ),
            "loss": sum(losses) / len(losses) if losses else math.nan,
            **request_summary(self.requests, nbytes),
        }


def aggregate(rows: list[dict], requests: list[RequestStats]) -> dict:
    """One epoch over all ranks, from each rank's row and its storage requests.

    A row is :meth:`EpochMeter.summary` plus ``samples_dropped``. Sums: ``samples``, ``skipped``,
    ``samples_dropped``, ``bytes_read``, ``read_s``, requests, retries and errors (TTFB percentiles
    over every rank's requests). ``wall_s`` is the slowest rank's, so ``throughput_mbps`` and
    ``samples_per_s`` are totals over it. ``au``, ``data_wait_s``, ``compute_s`` and ``loss`` are
    means over the ranks (MLPerf Storage averages AU over its accelerators); ``au_min`` is the worst
    rank's AU and ``data_wait_max_s`` the longest any rank waited for data; ``restart_gap_s`` the
    longest. With one rank, its own figures.
    """
    n = len(rows)
    nbytes = sum(r["bytes_read"] for r in rows)
    samples = sum(r["samples"] for r in rows)
    read_s = sum(r["read_s"] for r in rows)
    wall = max(r["wall_s"] for r in rows)
    losses = [r["loss"] for r in rows if r["samples"]]
    merged = RequestStats()
    for stats in requests:
        merged.merge(stats)
    return {
        "epoch": rows[0]["epoch"],
        "ranks": n,
        "steps": max(r["steps"] for r in rows),
        "samples": samples,
        "skipped": sum(r["skipped"] for r in rows),
        "samples_dropped": sum(r.get("samples_dropped", 0) for r in rows),
        "bytes_read": nbytes,
        "read_s": read_s,
        "data_wait_s": sum(r["data_wait_s"] for r in rows) / n,
        "data_wait_max_s": max(r["data_wait_s"] for r in rows),
        "compute_s": sum(r["compute_s"] for r in rows) / n,
        "wall_s": wall,
        "restart_gap_s": max(r.get("restart_gap_s", 0.0) for r in rows),
        "read_mbps": _ratio(nbytes, read_s) / 1e6,
        "throughput_mbps": _ratio(nbytes, wall) / 1e6,
        "samples_per_s": _ratio(samples, wall),
        "au": sum(r["au"] for r in rows) / n,
        "au_min": min(r["au"] for r in rows),
        "samples_per_s_after_warmup": _ratio(samples, max(_after_warmup_s(r) for r in rows)),
        "loss": sum(losses) / len(losses) if losses else math.nan,
        **request_summary(merged, nbytes),
    }


def _after_warmup_s(row: dict) -> float:
    """A rank's seconds since its warm-up ended: samples over that rate, else its wall time."""
    rate = row.get("samples_per_s_after_warmup", math.nan)
    return row["samples"] / rate if rate == rate and rate > 0 else row["wall_s"]


def request_summary(stats: RequestStats, nbytes: int) -> dict:
    """Request figures of an epoch or a run: counts, bytes per request, TTFB percentiles."""
    return {
        "requests": stats.requests,
        "bytes_per_request": _ratio(nbytes, stats.requests),
        "retries": stats.retries,
        "ttfb_p50_ms": percentile(stats.ttfb_s, 50) * 1e3,
        "ttfb_p99_ms": percentile(stats.ttfb_s, 99) * 1e3,
        "errors": ";".join(f"{kind}:{n}" for kind, n in sorted(stats.errors.items())),
    }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; NaN when empty.

    Nearest-rank: the smallest value with at least q% of the values at or below it.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan
