"""The measured clock of measure_steps: warm-up excluded, and in read mode the reads done ahead
during the warm-up counted in the measured time; garbage collection kept out of the epoch."""

from __future__ import annotations

import gc
import math
import time

import pytest
import torch

from pipelines.samples import Batch
from training.engine import measure_steps


def batches(read_at: dict[int, float | str], seen: dict):
    """Four one-sample batches; batch ``i`` says its read began at ``read_at[i]`` (default:
    when it is produced; ``"first ask"``: when the loader was first asked for a batch, i.e.
    read ahead during the warm-up). ``seen["first"]`` is that first ask."""
    seen["first"] = time.perf_counter()
    for i in range(4):
        at = read_at.get(i, time.perf_counter())
        yield Batch(ids=[f"b{i}"], nbytes=1000, read_at=seen["first"] if at == "first ask" else at)


def run(read_at, **kwargs):
    seen = {}
    meter = measure_steps(
        batches(read_at, seen), lambda b, s: math.nan, epoch=0, num_samples=None,
        warmup_steps=2, **kwargs,
    )  # fmt: skip
    return meter, seen


def test_clock_starts_after_the_warm_up_by_default():
    meter, seen = run({2: -1.0})  # batch 2 claims a read long ago: ignored without the flag
    assert meter.started > seen["first"]
    assert [s.step for s in meter.steps] == [2, 3] and meter.summary()["bytes_read"] == 2000


def test_read_mode_clock_starts_at_the_first_read_of_a_measured_batch():
    meter, seen = run({}, from_first_read=True)  # reads as produced: after the warm-up ended
    assert meter.started > seen["first"]  # nothing read ahead: the warm-up end stands

    meter, seen = run({3: "first ask"}, from_first_read=True)  # read ahead during warm-up
    assert meter.started == seen["first"]

    meter, seen = run({2: -1.0}, from_first_read=True)  # not a time of this run: clamped
    assert seen["first"] - 1.0 < meter.started <= seen["first"]


def test_objects_of_before_the_epoch_sit_out_its_garbage_collections():
    before = type("Before", (), {})()  # a tracked object that exists already
    frozen_during, collectable = [], []

    def in_a_generation(obj) -> bool:  # one that collections traverse (not frozen)
        return any(o is obj for g in range(3) for o in gc.get_objects(g))

    def loader():
        for i, batch in enumerate(batches({}, {})):
            frozen_during.append(gc.get_freeze_count())
            if i == 0:
                collectable.append(in_a_generation(before))
            yield batch

    assert gc.is_tracked(before) and gc.get_freeze_count() == 0
    measure_steps(loader(), lambda b, s: math.nan, epoch=0, num_samples=None)
    assert len(frozen_during) == 4 and min(frozen_during) > 0  # left out of collections
    assert collectable == [False]  # `before` among them during the epoch
    assert gc.get_freeze_count() == 0 and in_a_generation(before)  # and back in them after

    def failing(batch, step):
        raise RuntimeError("step failed")

    one = Batch(ids=["x"], images=[torch.zeros(3, 2, 2)], targets=[torch.tensor(0)])
    with pytest.raises(RuntimeError, match="step failed"):
        measure_steps([one], failing, epoch=0, num_samples=None)
    assert gc.get_freeze_count() == 0  # also after a failed epoch


def test_compute_runs_on_batches_read_without_decoding_and_skips_empty_ones():
    """Emulated compute (the benchmark's ``emulate`` mode, the sweep) runs on every batch that
    has samples, decoded or not; a batch whose images were all corrupt skips it."""
    computed = []
    loader = [
        Batch(ids=["a", "b"], nbytes=10),  # bytes only: no images
        Batch(errors=[("c", "corrupt")]),  # nothing left to train on
        Batch(ids=["d"], images=[torch.zeros(3, 2, 2)], targets=[{}], nbytes=5),
    ]
    meter = measure_steps(loader, lambda b, s: computed.append(s) or 0.0, epoch=0, num_samples=None)
    assert computed == [0, 2]
    assert [s.samples for s in meter.steps] == [2, 0, 1]
