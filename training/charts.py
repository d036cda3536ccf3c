"""The charts of a training run: ``OUT/plots/*.png`` after every epoch, and TensorBoard events.

The series come from ``metrics.csv`` (one row per epoch) and ``steps.csv`` (one row per step and
rank; a step's figures are the mean over its ranks).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from common.files import save_figure

#: Quality columns of ``metrics.csv`` per task, and their names on the charts.
QUALITY = {
    "detection": (("map_50", "mAP@0.5"), ("map", "mAP@[.5:.95]")),
    "classification": (("top1", "top-1 accuracy"), ("balanced_acc", "balanced accuracy")),
}
#: Per-epoch series written to TensorBoard: ``metrics.csv`` column -> tag.
EPOCH_TAGS = {
    "loss": "loss/epoch",
    "samples_per_s": "throughput/samples_per_s",
    "throughput_mbps": "throughput/delivered_mbps",
    "au": "throughput/au",
}


def step_series(steps: list[dict]) -> list[dict]:
    """Per (epoch, step), in order: the ranks' mean ``loss``, ``data_wait_s`` and ``compute_s``.

    Also ``epoch`` and ``global_step``, counting from 1 over the run.
    """
    grouped: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for row in steps:
        grouped[(int(row["epoch"]), int(row["step"]))].append(row)
    series = []
    for number, (key, rows) in enumerate(sorted(grouped.items()), 1):
        losses = [float(r["loss"]) for r in rows if _finite(r.get("loss"))]
        series.append(
            {
                "epoch": key[0],
                "global_step": number,
                "loss": sum(losses) / len(losses) if losses else math.nan,
                "data_wait_s": sum(float(r["data_wait_s"]) for r in rows) / len(rows),
                "compute_s": sum(float(r["compute_s"]) for r in rows) / len(rows),
            }
        )
    return series


def write_plots(out: Path, task: str, rows: list[dict], steps: list[dict]) -> None:
    """Write the four PNGs of the run so far into ``out/plots`` (each atomically).

    - ``loss.png``: training loss per step, and its mean per epoch;
    - ``quality.png``: mAP@0.5 and mAP@[.5:.95] (detection), or top-1 and balanced accuracy
      (classification), per epoch, on the evaluation split;
    - ``data_wait.png``: data wait and compute per step, seconds (the data stall against the work);
    - ``throughput.png``: samples/s and delivered MB/s (10^6 bytes) per epoch.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    series = step_series(steps)
    epochs = [int(r["epoch"]) for r in rows]
    x = [s["global_step"] for s in series]
    # where each epoch ends on the step axis, for the per-epoch mean loss
    ends = {s["epoch"]: s["global_step"] for s in series}

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, [s["loss"] for s in series], lw=0.8, alpha=0.6, label="loss per step")
    ax.plot([ends.get(e, math.nan) for e in epochs], [_num(r, "loss") for r in rows], "o-",
            label="mean loss of the epoch")  # fmt: skip
    _finish(ax, "step", "training loss", f"{task}: training loss")
    save_figure(fig, folder / "loss.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for column, name in QUALITY[task]:
        ax.plot(epochs, [_num(r, column) for r in rows], "o-", label=name)
    ax.set_ylim(0, 1)
    _finish(ax, "epoch", "on the evaluation split", f"{task}: quality per epoch")
    _epoch_ticks(ax, epochs)
    save_figure(fig, folder / "quality.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, [s["data_wait_s"] for s in series], lw=0.8, label="data wait (stall)")
    ax.plot(x, [s["compute_s"] for s in series], lw=0.8, label="compute")
    _finish(ax, "step", "seconds per step", "data wait vs compute per step")
    save_figure(fig, folder / "data_wait.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(epochs, [_num(r, "samples_per_s") for r in rows], "o-", color="C0", label="samples/s")
    ax.set_ylabel("samples/s")
    right = ax.twinx()
    right.plot(epochs, [_num(r, "throughput_mbps") for r in rows], "s--", color="C1",
               label="delivered MB/s")  # fmt: skip
    right.set_ylabel("delivered MB/s (10^6 bytes)")
    ax.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right")
    ax.set_xlabel("epoch")
    ax.set_title("throughput per epoch")
    _epoch_ticks(ax, epochs)
    save_figure(fig, folder / "throughput.png")


class TensorBoard:
    """TensorBoard event files in ``out/tensorboard``, with the plots' series.

    Written with ``torch.utils.tensorboard`` as the epochs end: each call adds that epoch's steps
    and figures only, so a resumed run continues its curves. Tags: ``loss/step``,
    ``time/data_wait_s``, ``time/compute_s`` (x: the global step), ``loss/epoch``,
    ``quality/<column>``, ``throughput/samples_per_s``, ``throughput/delivered_mbps``,
    ``throughput/au`` (x: the epoch).

    Args:
        out: the run's folder.
        purge_step: a resumed run's first global step: events at and after it written before
            are hidden (``SummaryWriter(purge_step=)``), so each step shows once.

    Raises:
        ImportError: the ``tensorboard`` package is missing (it is a dependency).
    """

    def __init__(self, out: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge_step)

    def add_epoch(self, task: str, row: dict, steps: list[dict]) -> None:
        """Add epoch ``row``'s figures (``metrics.csv``) and its steps (of the run's ``steps``)."""
        epoch = int(row["epoch"])
        for s in step_series(steps):
            if s["epoch"] != epoch:
                continue
            if _finite(s["loss"]):
                self.writer.add_scalar("loss/step", s["loss"], s["global_step"])
            self.writer.add_scalar("time/data_wait_s", s["data_wait_s"], s["global_step"])
            self.writer.add_scalar("time/compute_s", s["compute_s"], s["global_step"])
        tags = {**EPOCH_TAGS, **{c: f"quality/{c}" for c, _ in QUALITY[task]}}
        for column, tag in tags.items():
            if _finite(row.get(column)):
                self.writer.add_scalar(tag, float(row[column]), epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, legend, whole-number x ticks."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)


def _epoch_ticks(ax, epochs: list[int]) -> None:
    """A tick per epoch (a few epochs), else whole numbers only."""
    if 0 < len(epochs) <= 20:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def _num(row: dict, column: str) -> float:
    """A ``metrics.csv`` value as a float (NaN when missing or empty)."""
    value = row.get(column)
    return float(value) if _finite(value) else math.nan


def _finite(value) -> bool:
    """Whether ``value`` is a finite number (or a string of one)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
