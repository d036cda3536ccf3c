"""The charts of a run (training/charts.py): the step series averaged over ranks, the four PNGs
written atomically, TensorBoard's tags."""

from __future__ import annotations

import math

import pytest

from training.charts import TensorBoard, step_series, write_plots


def steps_of(epochs: int, per_epoch: int, ranks: int) -> list[dict]:
    return [
        {"epoch": e, "rank": r, "step": s, "loss": 1.0 / (e * per_epoch + s + 1) + r,
         "data_wait_s": 0.1 * r, "compute_s": 0.2}
        for e in range(1, epochs + 1) for s in range(per_epoch) for r in range(ranks)
    ]  # fmt: skip


def rows_of(epochs: int, task: str) -> list[dict]:
    quality = {"detection": {"map_50": 0.5, "map": 0.3}, "classification": {"top1": 0.8,
               "balanced_acc": 0.7}}[task]  # fmt: skip
    return [
        {"epoch": e, "loss": 0.5 / e, "samples_per_s": 10.0 * e, "throughput_mbps": 1.5,
         "au": 0.9, **quality}
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def test_each_step_is_the_mean_over_its_ranks_counted_over_the_run():
    series = step_series(steps_of(epochs=2, per_epoch=3, ranks=2))
    assert [s["global_step"] for s in series] == [1, 2, 3, 4, 5, 6]
    assert [s["epoch"] for s in series] == [1, 1, 1, 2, 2, 2]
    assert series[0]["loss"] == pytest.approx((1 / 4 + 1 / 4 + 1) / 2)
    assert series[0]["data_wait_s"] == pytest.approx(0.05)
    nan_loss = [{**steps_of(1, 1, 1)[0], "loss": ""}]  # a step whose batch was skipped
    assert math.isnan(step_series(nan_loss)[0]["loss"])


@pytest.mark.parametrize("task", ["detection", "classification"])
def test_the_four_plots_are_written_and_rewritten(tmp_path, task):
    write_plots(tmp_path, task, rows_of(1, task), steps_of(1, 4, 1))
    names = ("loss.png", "quality.png", "data_wait.png", "throughput.png")
    first = {n: (tmp_path / "plots" / n).read_bytes() for n in names}
    assert all(data.startswith(b"\x89PNG") for data in first.values())
    write_plots(tmp_path, task, rows_of(3, task), steps_of(3, 4, 2))  # two more epochs
    assert all((tmp_path / "plots" / n).read_bytes() != first[n] for n in names)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp


def test_tensorboard_gets_each_epoch_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TensorBoard(tmp_path)
    steps, rows = steps_of(2, 3, 1), rows_of(2, "detection")
    for row in rows:
        board.add_epoch("detection", row, steps)
    board.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/step")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("quality/map_50")] == [0.5, 0.5]
    assert [e.step for e in events.Scalars("throughput/samples_per_s")] == [1, 2]
