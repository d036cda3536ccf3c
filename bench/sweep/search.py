"""Search for the most accelerators a storage keeps at or above the AU threshold.

MLPerf Storage's number, which submitters look for by hand: a run passes when AU = total compute
time / total running time is at least the workload's minimum (Rules.md §3.3.2).
:func:`search_accelerators` searches, and says what ran out; :func:`measure_points` measures a given
list of counts instead (a curve).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bench.sweep.limits import CAP, CLIENT_CPU, CLIENT_MEMORY
from bench.sweep.rules import Rule


@dataclass(frozen=True)
class Point:
    """One measured point.

    Attributes:
        accelerators: simulated accelerators (ranks) active at once.
        au: their mean accelerator utilisation, 0 to 1.
        passed: ``au`` at or above the threshold.
        limit: what ran out (:func:`bench.sweep.limits.point_limit`): ``storage`` (failed
            with client headroom), ``client CPU``, ``client memory``, or None.
    """

    accelerators: int
    au: float
    passed: bool
    limit: str | None = None

    @property
    def client_ran_out(self) -> bool:
        """Whether the client's CPU or memory ran out at this point."""
        return self.limit in (CLIENT_CPU, CLIENT_MEMORY)


@dataclass
class SearchResult:
    """Where the search ended.

    Attributes:
        answer: the most accelerators that passed (0: even the fewest failed).
        points: every point measured, in the order measured.
        limit: what ended it: ``storage``, ``client CPU``, ``client memory`` or ``cap`` (every
            count up to the largest passed with the client's headroom left).
        limit_at: the accelerators of the point that showed the limit (the answer, for the
            cap).
    """

    answer: int
    points: list[Point] = field(default_factory=list)
    limit: str = ""
    limit_at: int = 0

    @property
    def capped(self) -> bool:
        """Whether the largest count was reached with every point passing."""
        return self.limit == CAP


def search_accelerators(
    measure: Callable[[int], Point], largest: int, step: int = 1
) -> SearchResult:
    """Find the most accelerators, a multiple of ``step`` up to ``largest``, that pass.

    Double ``k`` from ``step`` until a point fails, the client runs out (its CPU or memory,
    :mod:`bench.sweep.limits`) or ``largest`` is reached, then bisect between the last point that
    passed and the first that failed: about ``2 log2(largest / step)`` points. Counts are multiples
    of ``step`` (the same number of simulated accelerators on every host, Rules.md §3.3.6). AU is
    assumed to fall as accelerators are added; a noisy point can make the bisection settle one side
    of the true boundary, which the repeats at the answer show.

    Args:
        measure: ``measure(k)`` runs (or, in tests, rigs) ``k`` accelerators and returns the point.
        largest: the most accelerators that can run (the launch's world size).
        step: accelerators are added in multiples of this (the number of client nodes).

    Raises:
        ValueError: ``step < 1``, or ``largest`` smaller than ``step``.
    """
    if step < 1 or largest < step:
        raise ValueError(f"{largest=} must be at least {step=}, which must be at least 1")
    points: list[Point] = []

    def run(per_node: int) -> Point:
        point = measure(per_node * step)
        points.append(point)
        return point

    most = largest // step  # per node
    good, bad, j = 0, None, 1
    while bad is None:
        point = run(j)
        if not point.passed:
            bad = j
        elif point.client_ran_out or j == most:
            return conclude(points, j * step)
        else:
            good, j = j, min(2 * j, most)
    while bad - good > 1:
        middle = (good + bad) // 2
        if run(middle).passed:
            good = middle
        else:
            bad = middle
    return conclude(points, good * step)


def measure_points(measure: Callable[[int], Point], counts: Iterable[int]) -> SearchResult:
    """Measure each of ``counts`` (a curve, no search); the answer is the most that passed."""
    points = [measure(k) for k in counts]
    return conclude(points, max((p.accelerators for p in points if p.passed), default=0))


def conclude(points: list[Point], answer: int) -> SearchResult:
    """The result of ``points`` whose answer is ``answer``, with the limit that ended it.

    The limit the fewest failed accelerators above the answer showed; when none failed, the client's
    where it ran out at the answer, else the cap.
    """
    failed = sorted((p for p in points if not p.passed and p.accelerators > answer),
                    key=lambda p: p.accelerators)  # fmt: skip
    if failed:
        return SearchResult(answer, points, failed[0].limit or "", failed[0].accelerators)
    at_answer = [p for p in points if p.accelerators == answer and p.client_ran_out]
    if at_answer:
        return SearchResult(answer, points, at_answer[-1].limit or "", answer)
    return SearchResult(answer, points, CAP, answer)


@dataclass
class Search:
    """One access pattern's search on one storage, as rank 0 saw it.

    Attributes:
        storage, access: what was searched.
        result: the points, the answer and the limit (None when the search failed).
        runs: the rows of the runs at the answer that make the result (one per seed).
        warmup: the row of the warm-up run at the answer (``closed``), or None.
        rules: the closed rules checked on what was measured (empty with ``quick``).
        error: why the search stopped, or ``""``.
        repeat_error: why a repeat of the answer failed, or ``""`` (the answer stands on the
            runs before it).
    """

    storage: str
    access: str
    result: SearchResult | None = None
    runs: list[dict] = field(default_factory=list)
    warmup: dict | None = None
    rules: list[Rule] = field(default_factory=list)
    error: str = ""
    repeat_error: str = ""

    @property
    def refused(self) -> bool:
        """Whether a closed rule failed on what was measured (no result)."""
        return any(not r.met for r in self.rules)
