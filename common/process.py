"""One lifecycle for the servers this tool starts (TorchServe, the local S3 server).

Each is started detached, polled until it answers, found again from the pid in its state file (only
while that pid runs the expected command line: pids are reused) and stopped with SIGTERM, then
SIGKILL, children included.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from common.files import atomic_write_text


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago.

    Another program may take one before it is bound again: callers that can retry on a busy port do.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_detached(
    cmd: Sequence[str],
    *,
    log_path: str | os.PathLike | None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    detach: bool = True,
) -> subprocess.Popen:
    """Start ``cmd`` with no stdin and its output appended to ``log_path`` (None: discarded).

    With ``detach`` it runs in a new session: it outlives this process and ignores the terminal's
    Ctrl-C, so only :func:`stop` ends it.

    Raises:
        OSError: the program cannot be started.
    """
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    finally:
        if log_path:
            log.close()


def poll_until(ready: Callable[[], bool], *, deadline: float, poll_s: float = 0.05) -> bool:
    """Call ``ready()`` every ``poll_s`` s until True (return True) or past ``deadline`` (False).

    ``deadline`` is a ``time.monotonic()`` value; ``ready`` may raise to give up early (propagated).
    """
    while True:
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def owned_process(
    pid: int, marks: Sequence[str], program: str | None = None
) -> psutil.Process | None:
    """The live process ``pid`` if its arguments include all ``marks``, else None (zombies too).

    With ``program``, its program file's name must also contain ``program``.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    if program is not None and not (cmdline and program in Path(cmdline[0]).name):
        return None
    return proc if all(mark in cmdline for mark in marks) else None


def stop(proc: psutil.Process | subprocess.Popen | int, *, timeout_s: float = 10.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout_s`` s, then its children still alive 5 s later.

    A process already gone is not an error; a ``Popen`` that already exited is not signalled (its
    pid may be another program's by now), and one stopped here is reaped (``returncode`` set).
    """
    popen = proc if isinstance(proc, subprocess.Popen) else None
    if popen is not None and popen.poll() is not None:
        return
    try:
        proc = psutil.Process(proc if isinstance(proc, int) else proc.pid)
        children = proc.children(recursive=True)
        proc.terminate()
        _, alive = psutil.wait_procs([proc], timeout=timeout_s)
        for leftover in alive:
            leftover.kill()
        _, alive = psutil.wait_procs(children, timeout=5)
        for leftover in alive:
            leftover.kill()
        psutil.wait_procs([*alive, proc], timeout=5)
    except psutil.NoSuchProcess:
        pass
    if popen is not None:
        popen.wait(5)


def write_state(path: Path, state: dict) -> None:
    """Write a server's state (its ``pid`` and how to reach it) as JSON, mode 0600, atomically."""
    atomic_write_text(path, json.dumps(state, indent=2) + "\n", mode=0o600)


def running_state(
    path: Path, marks: Callable[[dict], Sequence[str]], program: str | None = None
) -> dict | None:
    """The state in ``path`` if its ``pid`` runs ``marks(state)`` (and ``program``), else None.

    A stale or unreadable file is removed; the check is :func:`owned_process`.
    """
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        pid = int(state["pid"])
        expected = marks(state)
    except (OSError, ValueError, KeyError, TypeError):
        Path(path).unlink(missing_ok=True)
        return None
    if owned_process(pid, expected, program) is None:
        Path(path).unlink(missing_ok=True)
        return None
    return state


def log_tail(path: str | os.PathLike | None, lines: int = 10) -> str:
    """The last ``lines`` lines of a log file, "" when there is none."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:]).rstrip()
