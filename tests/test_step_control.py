"""The parts of preemption that need no training run: the stop request, the periodic clock, the
consumed samples a resumed epoch leaves out, and the accounting of a shard streamed again."""

from __future__ import annotations

import os
import signal

import pytest

from pipelines.access import loaders
from pipelines.access.loaders import Remaining
from pipelines.access.shard_stream import _passing_over
from pipelines.samples import Batch
from pipelines.storage.base import CallStats
from training import preemption
from training.engine import Preempted
from training.preemption import CheckpointClock, StepControl, StopRequest


def test_sigterm_becomes_a_stop_request_and_the_workers_are_told():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert loaders.STOP_STATE.value == 1  # workers signalled with us wait for the decision
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # the process is still here
        assert loaders.STOP_STATE.value == 2
    assert loaders.STOP_STATE.value == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the handler before comes back


def test_a_second_ctrl_c_ends_at_once():
    with StopRequest() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)


def test_clock_is_due_every_n_steps_and_never_with_zero():
    clock = CheckpointClock(3)
    due = []
    for _ in range(7):
        due.append(clock.tick())
        if due[-1]:
            clock.reset()
    assert due == [False, False, True, False, False, True, False]
    assert not any(CheckpointClock(0).tick() for _ in range(10))


def test_clock_estimates_its_interval_from_the_first_steps(monkeypatch):
    now = iter(range(0, 1000, 2))  # a step every 2 s
    monkeypatch.setattr(preemption.time, "perf_counter", lambda: float(next(now)))
    clock = CheckpointClock(None)
    ticks = [clock.tick() for _ in range(preemption.ESTIMATE_AFTER_STEPS + 1)]
    assert not any(ticks)
    assert clock.every_steps == round(preemption.CHECKPOINT_INTERVAL_S / 2)


def test_step_control_saves_the_consumed_ids_per_worker_and_stops_after_the_step():
    saved = []
    stop = StopRequest()
    control = StepControl(stop, CheckpointClock(2), lambda m, c: saved.append(c), 4, {1: ["a"]})

    class Meter:
        steps = [object()] * 7

    assert control.agree(True)
    control.after_step(Batch(worker=0, reads=[("b", 1, 0.0, 0.0)]), Meter)
    assert not saved
    assert control.agree(True)  # the second step: due
    control.after_step(Batch(worker=-1, reads=[("c", 1, 0.0, 0.0)]), Meter)
    assert saved == [{1: ["a"], 0: ["b", "c"]}]  # worker -1 (no workers) reads as 0
    stop.signum = signal.SIGTERM
    assert not control.agree(False)  # an empty batch on this rank: no step anywhere
    with pytest.raises(Preempted, match="at epoch 4 step 7"):
        control.after_step(Batch(worker=1, reads=[("d", 1, 0.0, 0.0)]), Meter)
    assert saved[-1][1] == ["a", "d"]


def test_remaining_sampler_keeps_the_order_less_the_skipped():
    remaining = Remaining([5, 3, 1, 4, 2])
    remaining.skip = frozenset({5, 3})
    assert list(remaining) == [1, 4, 2] and len(remaining) == 3


def test_samples_passed_over_still_count_their_reads():
    def read(n):
        return CallStats(n, 0.1 * n, 1, 0, (), ())

    raw = [({"k": i}, read(i), f"id{i}", float(i)) for i in range(1, 6)]
    kept = list(_passing_over(iter(raw), frozenset({"id1", "id3", "id5"})))
    assert [image_id for _, _, image_id, _ in kept] == ["id2", "id4"]
    assert sum(r.nbytes for _, r, _, _ in kept) == 1 + 2 + 3 + 4 + 5  # every byte streamed
    assert sum(r.requests for _, r, _, _ in kept) == 5
