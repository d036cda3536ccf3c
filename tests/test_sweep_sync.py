"""Simulated accelerators step together (``bench.sync: step``, the sweep's default), as
data-parallel training and DLIO do: one rank slowed on purpose (its storage sleeps before every
read, tests/slow_rank.py) lowers every rank's AU; without the per-step barrier only its own.
Two real ranks under torchrun, gloo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.process import free_ports
from tests.helpers import REPO, finish

pytestmark = [pytest.mark.integration, pytest.mark.distributed]


def test_a_slow_rank_lowers_every_ranks_au_only_when_the_ranks_step_together():
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(free_ports(1)[0]),
            "-m", "tests.slow_rank",
        ],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    code, out = finish(proc, limit_s=180)
    assert code == 0, out[-3000:]
    aus = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    fast, slow = aus["none"]
    assert slow < 0.4 and fast > 0.6  # on their own: only the slow rank waits for data
    assert max(aus["step"]) < 0.4  # stepping together: the fast rank waits for the slow one
