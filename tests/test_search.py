"""The search for the most accelerators at AU >= threshold, and the limit it names, against
rigged points."""

from __future__ import annotations

import pytest

from bench.sweep.limits import CAP, CLIENT_CPU, CLIENT_MEMORY, STORAGE
from bench.sweep.search import Point, measure_points, search_accelerators


def rigged(boundary: int, calls: list[int], *, client_from: int | None = None, kind=CLIENT_CPU):
    """AU 0.95 up to ``boundary`` accelerators, then below 0.9 and falling; from
    ``client_from`` accelerators on the client runs out (``kind``); records each count."""

    def measure(k: int) -> Point:
        calls.append(k)
        au = 0.95 if k <= boundary else 0.85 * boundary / k
        passed = au >= 0.9
        ran_out = client_from is not None and k >= client_from
        return Point(k, au, passed, kind if ran_out else (None if passed else STORAGE))

    return measure


@pytest.mark.parametrize("boundary", [1, 2, 3, 5, 12, 31, 63])
def test_finds_the_boundary_in_a_few_points_and_names_the_storage(boundary):
    calls = []
    result = search_accelerators(rigged(boundary, calls), largest=64)
    assert (result.answer, result.limit, result.limit_at) == (boundary, STORAGE, boundary + 1)
    assert calls == [p.accelerators for p in result.points]
    assert len(calls) <= 2 * 6 + 1  # doubling then bisecting: about 2 log2(64) points
    assert len(set(calls)) == len(calls)  # no point measured twice
    assert all(p.passed == (p.accelerators <= boundary) for p in result.points)


def test_stops_at_the_largest_world_size_when_all_pass_and_names_the_cap():
    calls = []
    result = search_accelerators(rigged(100, calls), largest=6)
    assert (result.answer, result.limit, result.capped) == (6, CAP, True)
    assert calls == [1, 2, 4, 6]  # never more than can run


def test_even_one_accelerator_failing_answers_zero_with_its_limit():
    calls = []
    result = search_accelerators(rigged(0, calls), largest=16)
    assert (result.answer, result.limit, result.limit_at, calls) == (0, STORAGE, 1, [1])


def test_a_client_that_runs_out_while_passing_ends_the_doubling_there():
    calls = []
    result = search_accelerators(rigged(100, calls, client_from=4), largest=64)
    assert (result.answer, result.limit, result.limit_at) == (4, CLIENT_CPU, 4)
    assert calls == [1, 2, 4]  # no point beyond the one where the client ran out


def test_a_failure_where_the_client_ran_out_is_never_the_storages_limit():
    for kind in (CLIENT_CPU, CLIENT_MEMORY):
        calls = []
        result = search_accelerators(rigged(5, calls, client_from=6, kind=kind), largest=64)
        assert (result.answer, result.limit, result.limit_at) == (5, kind, 6)


def test_counts_are_multiples_of_the_nodes():
    calls = []
    result = search_accelerators(rigged(7, calls), largest=16, step=2)
    assert result.answer == 6  # the most that is the same number on both nodes
    assert all(k % 2 == 0 for k in calls) and max(calls) <= 16


def test_refuses_a_step_larger_than_the_world():
    with pytest.raises(ValueError, match="largest=1 must be at least step=2"):
        search_accelerators(rigged(1, []), largest=1, step=2)


def test_given_points_are_measured_exactly_without_a_search():
    calls = []
    result = measure_points(rigged(3, calls), [1, 2, 4, 8])
    assert calls == [1, 2, 4, 8]  # 8 is measured although 4 failed: a curve
    assert (result.answer, result.limit, result.limit_at) == (2, STORAGE, 4)
    everything = measure_points(rigged(100, []), [1, 2])
    assert (everything.answer, everything.limit) == (2, CAP)
