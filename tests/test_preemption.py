"""Preempted mid-epoch, resumed exactly: real SIGTERMs and SIGKILLs, real torchrun ranks.

A run is stopped while it trains (the test sends the signal once a periodic step checkpoint is
written, so the stop lands mid-epoch), then ``--resume`` finishes it. What the issue asks: the
interrupted epoch's trace holds every id of the epoch once (ids before the stop plus ids after it,
no duplicate), the same ids an uninterrupted run of the same seed reads, and its ``metrics.csv``
row sums both parts (samples, bytes, requests), with the restart gap in its own column. One rank
runs in this process (its own SIGTERM), or as a command killed with SIGKILL (it resumes from the
last periodic step checkpoint); two ranks: ``tests/test_preemption_ranks.py`` and
``tests/test_distributed.py`` (SIGTERM to torchrun, which passes it on).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from pipelines.formats.folders import load_folder_split
from pipelines.storage.filesystem import FileSystemStorage
from scripts.train import main as train_main
from tests.helpers import REPO, RUN_LIMIT_S

pytestmark = pytest.mark.integration

#: Images of each split the runs use (even: two ranks split it without a remainder).
LIMIT = 24


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_crops(root: Path) -> Path:
    """Cell crops of 2 BCCD training images and 1 test image, in ``root/cells``."""
    from tests.helpers import make_cells, make_voc_subset

    voc = make_voc_subset(root / "bccd", {"train": 2, "test": 1})
    return make_cells(root / "cells", voc, {"train": 2, "test": 1})


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return make_crops(tmp_path_factory.mktemp("preempt"))


def run_args(
    data: Path, out: Path, access: str, workers: int, *extra: str, batch: int = 2
) -> list[str]:
    """``scripts.train`` arguments: one epoch of the small ConvNet (32-pixel crops: step
    checkpoints of a few hundred kB), batches of ``batch``, a step checkpoint every 2 steps, the
    trace on."""
    return [
        "--config", "configs/classification.yaml", "--data", str(data), "--out", str(out),
        "--access", access, "--workers", str(workers), "--epochs", "1", "--limit", str(LIMIT),
        "--batch-size", str(batch), "--no-pretrained", "--arch", "convnet",
        "--set", "model.image_size=32", "--set", "train.checkpoint_every_steps=2",
        "--set", "output.trace=true", "--set", "train.dist_timeout_s=30", *extra,
    ]  # fmt: skip


class SignalAtFirstCheckpoint(logging.Handler):
    """Sends ``signum`` to this process when the first step checkpoint is logged."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum, self.sent = signum, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.sent and record.getMessage().startswith("step checkpoint"):
            self.sent = True
            os.kill(os.getpid(), self.signum)


def stopped_at(out: Path) -> tuple[int, int]:
    """(epoch, step) of the step checkpoint in ``out``."""
    position = torch.load(out / "checkpoint.pt", weights_only=True)["position"]
    assert position is not None, "no step checkpoint"
    return position["epoch"], position["step"]


def check_exact(out: Path, baseline: dict, stop: tuple[int, int], *, shards: bool) -> None:
    """The run in ``out`` read each epoch's ids once, the ids of ``baseline`` (per epoch: the
    ids, bytes, requests, samples and steps of an uninterrupted run of the same seed); its
    interrupted epoch's row sums both parts. Shards: a partly read shard is streamed again after
    the stop, so bytes and requests may exceed the baseline's (never fall short)."""
    rows = read_rows(out / "metrics.csv")
    trace = read_rows(out / "trace.csv")
    steps = read_rows(out / "steps.csv")
    assert [int(r["epoch"]) for r in rows] == sorted(baseline)
    for row in rows:
        epoch = int(row["epoch"])
        mine = [t for t in trace if int(t["epoch"]) == epoch]
        ids = [t["id"] for t in mine]
        assert len(ids) == len(set(ids)), f"epoch {epoch}: a sample read twice"
        assert set(ids) == baseline[epoch]["ids"], f"epoch {epoch}: not the uninterrupted ids"
        assert int(row["samples"]) + int(row["skipped"]) == len(ids)
        assert int(row["bytes_read"]) == sum(int(t["bytes"]) for t in mine)
        ranks = Counter((int(s["rank"]), int(s["step"])) for s in steps if int(s["epoch"]) == epoch)
        assert set(ranks.values()) == {1}, "a step written twice"
        assert len(ranks) == baseline[epoch]["steps"]
        gap = float(row["restart_gap_s"])
        if epoch == stop[0]:
            assert gap > 0, "the interrupted epoch has no restart gap"
        else:
            assert gap == 0
        for key in ("bytes_read", "requests"):
            if shards and epoch == stop[0]:
                assert int(row[key]) >= baseline[epoch][key], key
            else:
                assert int(row[key]) == baseline[epoch][key], key


def uninterrupted(out: Path) -> dict:
    """Per epoch of a finished run: its trace's ids, its steps and its row's figures."""
    rows, trace = read_rows(out / "metrics.csv"), read_rows(out / "trace.csv")
    steps = read_rows(out / "steps.csv")
    return {
        int(r["epoch"]): {
            "ids": {t["id"] for t in trace if t["epoch"] == r["epoch"]},
            "bytes_read": int(r["bytes_read"]),
            "requests": int(r["requests"]),
            "steps": sum(1 for s in steps if s["epoch"] == r["epoch"]),
        }  # fmt: skip
        for r in rows
    }


@pytest.mark.parametrize(
    "access, workers", [("random", 0), ("shards", 0), ("objects", 2)], ids=lambda v: str(v)
)
def test_one_rank_sigterm_mid_epoch_resumes_exactly(cells, tmp_path, access, workers):
    """SIGTERM in this process after the first step checkpoint: the run finishes its step,
    writes a step checkpoint, says where it stopped and returns 143; ``--resume`` reads the rest
    of the epoch once. Shards here are half the split each (sized for one reader), so a
    partly read one is streamed again less the samples already trained on: that case is
    compared with an uninterrupted run; random and objects with the split's files, which an
    uninterrupted run reads once each."""
    if access == "shards":
        base = tmp_path / "uninterrupted"
        assert train_main(run_args(cells, base, access, workers)) == 0
        expected = uninterrupted(base)
    else:
        expected = whole_split(cells, steps=LIMIT // 2)
    out = tmp_path / "out"
    trigger = SignalAtFirstCheckpoint(signal.SIGTERM)
    logging.getLogger("training.preemption").addHandler(trigger)
    try:
        code = train_main(run_args(cells, out, access, workers))
    finally:
        logging.getLogger("training.preemption").removeHandler(trigger)
    assert trigger.sent and code == 128 + signal.SIGTERM
    epoch, step = stopped_at(out)
    assert epoch == 1 and step == 3  # checkpoint at step 2, the signal during it: stop after 3
    assert not (out / "metrics.csv").exists()  # the epoch did not end
    assert train_main(run_args(cells, out, access, workers, "--resume")) == 0
    check_exact(out, expected, (epoch, step), shards=access == "shards")


def whole_split(cells: Path, *, steps: int, shards: list[Path] = ()) -> dict:
    """What an uninterrupted epoch reads of the training split: every image once, ``steps``
    steps (over the ranks); its bytes and requests, one per file or per shard."""
    records, _ = load_folder_split(FileSystemStorage(cells), "train", limit=LIMIT)
    sizes = {r.id: (cells / r.image_key).stat().st_size for r in records}
    files = [p.stat().st_size for p in shards] or list(sizes.values())
    return {
        1: {"ids": set(sizes), "steps": steps, "bytes_read": sum(files), "requests": len(files)}
    }


#: A ``python -c`` program: ``scripts.train`` with the arguments given, SIGKILLing itself 50 ms
#: after its first step checkpoint is logged (from a thread: the steps go on meanwhile), so that
#: the kill lands between two periodic checkpoints, well before the epoch ends, however loaded the
#: machine is.
KILLED_AFTER_FIRST_CHECKPOINT = """
import logging, os, signal, sys, threading
from scripts.train import main

class Kill(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("step checkpoint") and not hasattr(self, "timer"):
            self.timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGKILL))
            self.timer.start()

logging.getLogger("training.preemption").addHandler(Kill())
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_resumes_from_the_last_periodic_step_checkpoint(cells, tmp_path):
    """SIGKILL to the training process (and then its 2 DataLoader workers) a few steps after a
    periodic step checkpoint (nothing is saved at the kill): the resumed run trains again the
    steps after that checkpoint and reads every sample of the epoch once, none twice."""
    out = tmp_path / "out"
    args = run_args(cells, out, "random", 2, batch=1)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_AFTER_FIRST_CHECKPOINT, *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.wait(timeout=RUN_LIMIT_S) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the workers, orphaned
        log = proc.communicate()[0]
    epoch, step = stopped_at(out)
    assert epoch == 1 and step % 2 == 0 and 2 <= step < LIMIT, log[-3000:]  # a periodic one
    assert train_main(run_args(cells, out, "random", 2, "--resume", batch=1)) == 0
    check_exact(out, whole_split(cells, steps=LIMIT), (epoch, step), shards=False)


def test_tensorboard_shows_each_step_once_when_an_epoch_is_trained_again(cells, tmp_path):
    """A run stopped mid-epoch is resumed to its end (TensorBoard gets the epoch's steps); then
    its step checkpoint is put back, as if the run had been killed after the charts but before
    the epoch's checkpoint, and resumed again: TensorBoard (``purge_step``) and ``steps.csv``
    show each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    args = run_args(cells, out, "random", 0, "--set", "output.tensorboard=true")
    trigger = SignalAtFirstCheckpoint(signal.SIGTERM)
    logging.getLogger("training.preemption").addHandler(trigger)
    try:
        assert train_main(args) == 128 + signal.SIGTERM
    finally:
        logging.getLogger("training.preemption").removeHandler(trigger)
    saved = (out / "checkpoint.pt").read_bytes()
    for _ in range(2):
        assert train_main([*args, "--resume"]) == 0
        (out / "checkpoint.pt").write_bytes(saved)  # the step checkpoint again
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("time/compute_s")]
    assert sorted(steps) == list(range(1, LIMIT // 2 + 1)), steps
    assert len(read_rows(out / "steps.csv")) == LIMIT // 2


@pytest.mark.parametrize("content", [b"PK\x03\x04 cut short", b'{"model": 1}'], ids=["cut", "json"])
def test_a_damaged_checkpoint_is_one_line_and_left_as_it_is(cells, tmp_path, capsys, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    assert train_main(run_args(cells, out, "random", 0, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: --resume: {out / 'checkpoint.pt'} cannot be read (")
    assert "Traceback" not in err and "weights_only" not in err
    assert (out / "checkpoint.pt").read_bytes() == content  # the source is not modified
