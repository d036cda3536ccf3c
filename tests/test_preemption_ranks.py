"""Two torchrun ranks preempted mid-epoch and resumed exactly, objects access: SIGTERM to torchrun.
Random and shards access on two ranks are ``tests/test_distributed.py``'s runs, stopped and
resumed the same way; one rank, and a SIGKILL, are ``tests/test_preemption.py``."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from common.process import free_ports
from tests.helpers import REPO, finish, stop_at_first_checkpoint
from tests.test_preemption import LIMIT, check_exact, make_crops, run_args, stopped_at, whole_split

pytestmark = [pytest.mark.integration, pytest.mark.distributed]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return make_crops(tmp_path_factory.mktemp("preempt-ranks"))


def torchrun(args: list[str]) -> subprocess.Popen:
    """``scripts.train`` on 2 ranks under torchrun (``scripts.launch``) on a free port."""
    command = [
        sys.executable, "-m", "scripts.launch", "--nproc-per-node", "2", "--master-addr",
        "127.0.0.1", "--master-port", str(free_ports(1)[0]), "-m", "scripts.train", *args,
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def test_two_ranks_stopped_mid_epoch_resume_exactly_objects(cells, tmp_path):
    """Two ranks reading the listing in the training processes (no DataLoader workers): SIGTERM
    to torchrun stops both after the same step with one step checkpoint (random and shards
    access: ``tests/test_distributed.py``'s runs, stopped and resumed so); the resumed run reads
    every id of the split once (an uninterrupted run of the same seed reads them all: the split
    is even, so no rank drops any), and the epoch's row sums both parts."""
    out = tmp_path / "out"
    args = run_args(cells, out, "objects", 0, batch=1)  # 12 steps a rank: it stops well before
    code, log = stop_at_first_checkpoint(torchrun(args), signal.SIGTERM)
    epoch, step = stopped_at(out)
    assert code == 128 + signal.SIGTERM, log[-3000:]
    assert f"preempted (SIGTERM) at epoch {epoch} step {step}" in log
    assert "make resume continues" in log
    code, log = finish(torchrun([*args, "--resume"]))
    assert code == 0, log[-3000:]
    assert f"resuming from {out / 'checkpoint.pt'} at epoch {epoch} step {step}" in log
    check_exact(out, whole_split(cells, steps=LIMIT), (epoch, step), shards=False)
    digests = {line.split()[-1] for line in log.splitlines() if "weights digest" in line}
    assert len(digests) == 1, "the ranks' weights differ after the resume"
