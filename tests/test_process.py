"""The one process lifecycle (serve/process.py) that TorchServe and the local S3 server use, on
real child processes."""

from __future__ import annotations

import json
import stat
import sys
import time

from common.process import (
    free_ports,
    owned_process,
    poll_until,
    running_state,
    start_detached,
    stop,
    write_state,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)", "--marker"]


def started(proc) -> bool:
    """Whether the sleeper's arguments show within 30 s: ``Popen`` returns once exec began, and
    the kernel fills in the new argv a moment later (``/proc/PID/cmdline`` reads empty until
    then, which a loaded machine made last long enough to see)."""
    return poll_until(
        lambda: owned_process(proc.pid, ["--marker"]) is not None, deadline=time.monotonic() + 30
    )


def test_a_detached_process_is_found_by_its_command_line_then_stopped_and_reaped(tmp_path):
    proc = start_detached(SLEEPER, log_path=tmp_path / "log")
    try:
        assert started(proc)
        assert owned_process(proc.pid, ["--other"]) is None
        assert owned_process(proc.pid, ["--marker"], program="rclone") is None
    finally:
        stop(proc, timeout_s=5)
    assert proc.returncode is not None  # reaped: no zombie, no "still running" warning
    assert owned_process(proc.pid, ["--marker"]) is None


def test_stopping_a_process_that_already_exited_signals_nothing(tmp_path):
    proc = start_detached([sys.executable, "-c", "pass"], log_path=None)
    assert poll_until(lambda: proc.poll() is not None, deadline=time.monotonic() + 30)
    stop(proc)  # its pid may be another program's by now: it must not be signalled
    assert proc.returncode == 0


def test_a_state_file_is_private_and_a_stale_one_is_removed(tmp_path):
    path = tmp_path / "server.json"
    proc = start_detached(SLEEPER, log_path=None)
    try:
        assert started(proc)
        write_state(path, {"pid": proc.pid, "port": free_ports(1)[0]})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert running_state(path, lambda state: ["--marker"])["pid"] == proc.pid
    finally:
        stop(proc, timeout_s=5)
    assert running_state(path, lambda state: ["--marker"]) is None
    assert not path.exists()
    path.write_text("{not json")
    assert running_state(path, lambda state: []) is None and not path.exists()
    path.write_text(json.dumps({"pid": proc.pid}))
    assert running_state(path, lambda state: ["--marker"]) is None


def test_polling_gives_up_at_its_deadline():
    calls = []
    assert not poll_until(lambda: calls.append(1) and False, deadline=time.monotonic() + 0.2)
    assert len(calls) >= 2
