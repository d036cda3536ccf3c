"""The search for MLPerf Storage's number: the most accelerators a storage keeps at or above
the AU threshold.

MLPerf Storage's submitters look for that number by hand, run after run (its rules,
``Submission_guidelines.md`` §4, v2.0: a run passes when AU = total compute time / total
running time is at least the workload's minimum). This does it by itself, against any
``au_at(k)`` that runs (or, in tests, rigs) a point of ``k`` simulated accelerators and returns
its mean AU over the active ranks: double ``k`` from one step until a point fails or the
largest count is reached, then bisect between the last point that passed and the first that
failed. Counts are whole multiples of ``step`` (the number of client nodes: MLPerf requires the
same number of simulated accelerators on every host, §9), so about ``2 log2(largest / step)``
points are measured. AU is assumed to fall as accelerators are added; a noisy point can make
the bisection settle one side of the true boundary, which the sweep's repeats at the answer
show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    """One measured point of the search.

    Attributes:
        accelerators: simulated accelerators (ranks) active at once.
        au: their mean accelerator utilisation, 0 to 1.
        passed: ``au >= threshold``.
    """

    accelerators: int
    au: float
    passed: bool


@dataclass
class SearchResult:
    """Where the search ended.

    Attributes:
        answer: the most accelerators that passed (0: even ``step`` accelerators failed).
        points: every point measured, in the order measured.
        capped: the largest count passed, so the storage may keep more busy than were
            available to try.
    """

    answer: int
    points: list[Point] = field(default_factory=list)
    capped: bool = False


def search_accelerators(
    au_at: Callable[[int], float], threshold: float, largest: int, step: int = 1
) -> SearchResult:
    """Find the most accelerators, a multiple of ``step`` up to ``largest``, whose mean AU
    stays at or above ``threshold`` (see the module doc).

    Args:
        au_at: ``au_at(k)`` measures ``k`` accelerators and returns their mean AU (0 to 1).
        threshold: the workload's minimum AU, 0 to 1 (e.g. 0.90).
        largest: the most accelerators that can run (the launch's world size).
        step: accelerators are added in multiples of this (the number of nodes).

    Raises:
        ValueError: ``step < 1``, or ``largest`` smaller than ``step``.
    """
    if step < 1 or largest < step:
        raise ValueError(f"{largest=} must be at least {step=}, which must be at least 1")
    result = SearchResult(answer=0)

    def passes(per_node: int) -> bool:
        au = au_at(per_node * step)
        result.points.append(Point(per_node * step, au, au >= threshold))
        return au >= threshold

    most = largest // step  # per node
    good, bad, j = 0, None, 1
    while bad is None:
        if not passes(j):
            bad = j
        elif j == most:
            result.answer, result.capped = j * step, True
            return result
        else:
            good, j = j, min(2 * j, most)
    while bad - good > 1:
        middle = (good + bad) // 2
        if passes(middle):
            good = middle
        else:
            bad = middle
    result.answer = good * step
    return result
