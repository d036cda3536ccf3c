"""The search for the most accelerators at AU >= threshold, against rigged AU functions."""

from __future__ import annotations

import pytest

from bench.search import search_accelerators


def rigged(boundary: int, calls: list[int]):
    """AU 0.95 up to ``boundary`` accelerators, then below 0.9 and falling; records each
    count asked."""

    def au_at(k: int) -> float:
        calls.append(k)
        return 0.95 if k <= boundary else 0.85 * boundary / k

    return au_at


@pytest.mark.parametrize("boundary", [1, 2, 3, 5, 12, 31, 63])
def test_finds_the_boundary_in_a_few_points(boundary):
    calls = []
    result = search_accelerators(rigged(boundary, calls), 0.9, largest=64)
    assert result.answer == boundary and not result.capped
    assert calls == [p.accelerators for p in result.points]
    assert len(calls) <= 2 * 6 + 1  # doubling then bisecting: about 2 log2(64) points
    assert len(set(calls)) == len(calls)  # no point measured twice
    assert all(p.passed == (p.accelerators <= boundary) for p in result.points)


def test_stops_at_the_largest_world_size_when_all_pass():
    calls = []
    result = search_accelerators(rigged(100, calls), 0.9, largest=6)
    assert (result.answer, result.capped) == (6, True)
    assert calls == [1, 2, 4, 6]  # never more than can run


def test_even_one_accelerator_failing_answers_zero():
    calls = []
    result = search_accelerators(lambda k: calls.append(k) or 0.3, 0.9, largest=16)
    assert (result.answer, result.capped, calls) == (0, False, [1])


def test_counts_are_multiples_of_the_nodes():
    calls = []
    result = search_accelerators(rigged(7, calls), 0.9, largest=16, step=2)
    assert result.answer == 6  # the most that is the same number on both nodes
    assert all(k % 2 == 0 for k in calls) and max(calls) <= 16


def test_refuses_a_step_larger_than_the_world():
    with pytest.raises(ValueError, match="largest=1 must be at least step=2"):
        search_accelerators(lambda k: 1.0, 0.9, largest=1, step=2)
