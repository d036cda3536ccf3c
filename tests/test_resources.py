"""CPU and memory accounting of the benchmark (bench.resources): a child's CPU is the client's,
windows are charged by interpolation, and the figures multiply back to MB/s."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from bench.resources import CpuUse, ResourceSampler, Sample, interpolate, process_sample

#: A child process that keeps one core busy for about this many CPU seconds.
SPIN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def spin_child(seconds: float) -> subprocess.Popen:
    """Start a real child process that burns ``seconds`` of CPU."""
    return subprocess.Popen([sys.executable, "-c", SPIN.format(s=seconds)])


def test_the_client_is_this_process_and_the_children_it_starts_not_a_server_running_before():
    server = spin_child(0.6)  # like a local S3 server: running before the measurement
    try:
        with ResourceSampler(interval_s=0.02) as sampler:
            worker = spin_child(0.4)  # like a DataLoader worker: started inside, exits inside
            assert worker.wait() == 0
            used = sampler.cpu(sampler.samples[0].at, sampler.samples[-1].at)
    finally:
        server.wait()
    # the worker's CPU is kept after it exited; the server's is not the client's (10 ms ticks)
    assert 0.3 <= used.client_s < 0.55
    assert used.host_s >= used.client_s - 0.05  # the whole machine: the client and more
    assert sampler.peak_rss_bytes > 0
    baseline = process_sample()  # this process alone
    assert baseline.client_s < sampler.samples[-1].client_s


def test_a_window_is_charged_by_interpolation_between_samples():
    samples = [Sample(0.0, 10, 0.0, 0.0), Sample(1.0, 30, 1.0, 2.0), Sample(2.0, 20, 3.0, 2.0)]
    mid = interpolate(samples, 1.5)
    assert (mid.client_s, mid.host_s, mid.rss_bytes) == (2.0, 2.0, 30)
    assert interpolate(samples, -5.0) == samples[0] and interpolate(samples, 9.0) == samples[-1]
    use = CpuUse.between(interpolate(samples, 0.5), interpolate(samples, 1.5))
    assert (use.seconds, use.client_s, use.host_s) == (1.0, 1.5, 1.0)
    timed = CpuUse.between(samples[0], samples[1], seconds=0.8)  # the caller's own clock wins
    assert timed.seconds == 0.8


def test_figures_multiply_back_to_the_throughput():
    use = CpuUse(seconds=0.5, client_s=0.01, host_s=0.03, steal_s=0.005)
    figures = use.figures(2_000_000, prefix="baseline_")
    assert figures == {
        "baseline_cpu_ms_per_mb": pytest.approx(5.0),
        "baseline_host_cpu_ms_per_mb": pytest.approx(15.0),
        "baseline_host_busy_cores": pytest.approx(0.06),
        "baseline_host_steal_cores": pytest.approx(0.01),
    }
    mbps = 2_000_000 / 0.5 / 1e6  # MB/s = busy cores / CPU seconds per MB
    busy, ms_per_mb = figures["baseline_host_busy_cores"], figures["baseline_host_cpu_ms_per_mb"]
    assert busy / (ms_per_mb / 1e3) == pytest.approx(mbps)
    empty = CpuUse(seconds=0.0, client_s=0.0, host_s=0.0).figures(0)
    assert all(math.isnan(v) for v in empty.values())
