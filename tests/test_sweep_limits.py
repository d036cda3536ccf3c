"""What ran out at a sweep point, against rigged figures; how many accelerators a node hosts,
from a rigged rank size and a real child's memory; how the report names the limit."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from bench.sweep.limits import (
    CAP,
    CLIENT_CPU,
    CLIENT_MEMORY,
    STORAGE,
    cache_served,
    limit_sentence,
    point_limit,
)
from bench.sweep.search import Point, SearchResult
from bench.sweep.sizing import PeakMemory, Sizing, size_node

GIB = 2**30
HEADROOM = {"client_cpu_busy": 0.40, "memory_available_share": 0.60, "cache_share": 0.01}


@pytest.mark.parametrize(
    ("figures", "passed", "limit"),
    [
        ({}, False, STORAGE),  # the AU fell with the client idle enough: the storage
        ({}, True, None),
        ({"client_cpu_busy": 0.95}, False, CLIENT_CPU),  # never the storage's limit
        ({"client_cpu_busy": 0.95}, True, CLIENT_CPU),  # passed, but nothing left to add
        ({"memory_available_share": 0.02}, False, CLIENT_MEMORY),
        ({"memory_available_share": 0.02, "client_cpu_busy": 0.99}, False, CLIENT_MEMORY),
        ({"client_cpu_busy": math.nan}, False, STORAGE),  # unknown figures are no limit
    ],
)
def test_a_point_names_what_ran_out(figures, passed, limit):
    assert point_limit({**HEADROOM, **figures}, passed) == limit


def test_a_point_the_page_cache_served_is_flagged_but_an_unknown_share_is_not():
    assert cache_served({"cache_share": 0.4}) and not cache_served({"cache_share": 0.05})
    assert not cache_served({"cache_share": math.nan})  # a remote storage: not measurable


def test_each_limit_says_what_to_do():
    assert "the storage" in limit_sentence(STORAGE, 4, 1)
    assert "NNODES=3" in limit_sentence(CLIENT_CPU, 4, 2)  # add client nodes
    memory = limit_sentence(CLIENT_MEMORY, 24, 1, reason="this node hosts at most 24")
    assert "this node hosts at most 24" in memory and "not the storage" in memory
    assert "may keep more busy" in limit_sentence(CAP, 8, 1)


@pytest.mark.parametrize(
    ("rank", "available", "memory", "expected"),
    [
        (1.2 * GIB, 20 * GIB, 24 * GIB, 14),  # (20 - 2.4) / 1.2
        (0.2 * GIB, 20 * GIB, 24 * GIB, 35),  # MLPerf's 0.5 GiB per accelerator at least
        (4 * GIB, 3 * GIB, 24 * GIB, 1),  # one at least, whatever the figures
    ],
)
def test_auto_sizes_a_node_from_one_ranks_memory_and_the_memory_available(
    rank, available, memory, expected
):
    sizing = size_node(int(rank), int(available), int(memory))
    assert sizing.accelerators == expected
    assert f"at most {expected} simulated accelerator(s)" in sizing.sentence()


def test_the_peak_memory_counts_the_children_a_rank_starts():
    with PeakMemory(interval_s=0.05) as alone:
        pass
    with PeakMemory(interval_s=0.05) as with_child:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; b = bytearray(300 * 2**20); time.sleep(1.0)"]
        )
        assert child.wait() == 0
    assert with_child.peak_bytes - alone.peak_bytes > 200 * 2**20


def test_the_cap_of_a_node_sized_by_its_memory_is_named_as_the_clients_memory():
    from bench.sweep.report import limit_kind
    from bench.sweep.search import Search

    search = Search("fs", "random", SearchResult(24, [Point(24, 0.95, True)], CAP, 24))
    sized = {"sizing": Sizing(GIB, 22 * GIB, 24 * GIB, 24)}
    assert limit_kind(search, sized) == CLIENT_MEMORY
    assert limit_kind(search, {"sizing": None}) == CAP  # NPROC: the user's cap
