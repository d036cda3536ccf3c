"""Start, watch and stop a TorchServe instance that serves every archive of a model store.

Each instance lives in its own *runtime dir* (default ``serve/run/``, git-ignored)::

    RUNTIME/config.properties   derived from the repo's config.properties (addresses, ports, ...)
    RUNTIME/server.json         what `start` reported: pid, URLs, models (for `status`)
    RUNTIME/key_file.json       API keys, only when token authorization is on
    RUNTIME/logs/               LOG_LOCATION / METRICS_LOCATION: ts_log.log, model_log.log, ...
    RUNTIME/tmp/                TMPDIR of the server: its pid file .model_server.pid, the worker
                                sockets and the extracted archives

TorchServe keeps its pid file in ``tempfile.gettempdir()`` and refuses to start while it names a
live server; a private TMPDIR per runtime dir lets a test server run next to a user's, and lets
:func:`stop_server` stop exactly the server its runtime dir started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.process import log_tail, owned_process, poll_until, start_detached, stop, write_state
from serve.preflight import check_java, find_torchserve, list_models
from serve.properties import (
    BASE_CONFIG,
    Listeners,
    ServeError,
    check_ports_free,
    derive_properties,
    listeners_from_properties,
    read_properties,
    write_properties,
)

#: Java main class of TorchServe's frontend; identifies its process.
TS_MAIN_CLASS = "org.pytorch.serve.ModelServer"


#: Log lines that mean a model will not become ready (TorchServe would retry forever).
_LOAD_FAILED = re.compile(r"Load model failed|Failed to load model|ModelNotFoundException")


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class RuntimeDir:
    """Paths inside one server's runtime dir (see the module docstring)."""

    root: Path

    @property
    def config(self) -> Path:
        """Derived config.properties."""
        return self.root / "config.properties"

    @property
    def state(self) -> Path:
        """``server.json`` written once the server is ready."""
        return self.root / "server.json"

    @property
    def key_file(self) -> Path:
        """TorchServe's API keys (token authorization), written in its working dir."""
        return self.root / "key_file.json"

    @property
    def logs(self) -> Path:
        """LOG_LOCATION and METRICS_LOCATION of the server."""
        return self.root / "logs"

    @property
    def tmp(self) -> Path:
        """TMPDIR of the server."""
        return self.root / "tmp"

    @property
    def pid_file(self) -> Path:
        """TorchServe's own pid file (``tempfile.gettempdir()/.model_server.pid``)."""
        return self.tmp / ".model_server.pid"

    @property
    def console_log(self) -> Path:
        """stdout/stderr of the ``torchserve`` launcher and the Java frontend."""
        return self.logs / "console.log"


@dataclass
class ServerInfo:
    """A running server, as reported by :func:`start_server` and kept in ``server.json``.

    Attributes:
        pid: process id of the Java frontend.
        runtime_dir: its runtime dir.
        inference_url, management_url, metrics_url: REST API roots (no trailing slash).
        models: names of the served models.
        token_auth: whether API calls need ``Authorization: Bearer KEY``.
        key_file: path of key_file.json when ``token_auth``, else None.
    """

    pid: int
    runtime_dir: str
    inference_url: str
    management_url: str
    metrics_url: str
    models: list[str] = field(default_factory=list)
    token_auth: bool = False
    key_file: str | None = None

    def prediction_url(self, model: str) -> str:
        """``POST`` URL of one model's predictions."""
        return f"{self.inference_url}/predictions/{model}"


def running_pid(runtime_dir: Path) -> int | None:
    """Pid of the TorchServe this runtime dir started, or None when none runs.

    A pid file naming a dead process, or a process that is not this dir's TorchServe (pid
    reuse), is removed.
    """
    rt = RuntimeDir(Path(runtime_dir).resolve())
    try:
        pid = int(rt.pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if _is_our_server(pid, rt):
        return pid
    rt.pid_file.unlink(missing_ok=True)
    return None


def _is_our_server(pid: int, rt: RuntimeDir) -> bool:
    """True when ``pid`` is a live TorchServe frontend started with ``rt``'s config."""
    return owned_process(pid, (TS_MAIN_CLASS, str(rt.config))) is not None


def _check_socket_path(rt: RuntimeDir) -> None:
    """Worker sockets are ``TMPDIR/.ts.sock.PORT``; a Unix socket path has at most 107 bytes."""
    longest = len(os.fsencode(rt.tmp / ".ts.sock.65535"))
    if longest > 107:
        raise ServeError(
            f"runtime dir {rt.root} is too deep for TorchServe's worker sockets "
            f"({longest} > 107 bytes): choose a shorter --runtime-dir"
        )


def start_server(
    model_store: Path,
    runtime_dir: Path,
    *,
    base_config: Path = BASE_CONFIG,
    host: str | None = None,
    ports: dict[str, int | None] | None = None,
    token_auth: bool = False,
    timeout_s: float = 300.0,
    log: Callable[[str], None] = print,
) -> ServerInfo:
    """Start TorchServe in the background on every archive of ``model_store``; wait until ready.

    Returns once ``GET /ping`` is healthy and every model's workers are READY on the
    management API. On any failure (including timeout and Ctrl-C) it stops what it started.

    Args:
        model_store: dir holding ``NAME.mar`` archives; all of them are served.
        runtime_dir: this server's runtime dir (created); see the module docstring.
        base_config: config.properties the derived configuration starts from.
        host: bind address for all listeners (None: as configured).
        ports: ``{"inference": 8080, "management": ..., "metrics": ..., "grpc_inference": ...,
            "grpc_management": ...}``; missing or None entries keep the configured port.
        token_auth: require API keys even on loopback (always on for other addresses).
        timeout_s: deadline for the whole start, in seconds.
        log: callable taking one progress line.

    Returns:
        The running server (also written to ``RUNTIME/server.json``).

    Raises:
        ServeError: missing java/archives, busy port, server already running for this runtime
            dir, or the server did not become ready (``details`` holds the log tails).
    """
    deadline = time.monotonic() + timeout_s
    model_store = Path(model_store).resolve()
    rt = RuntimeDir(Path(runtime_dir).resolve())
    models = list_models(model_store)
    check_java()
    torchserve = find_torchserve()
    listeners = _check_can_start(rt, base_config, host, ports)
    secured = _prepare_runtime_dir(rt, base_config, listeners, model_store, token_auth)
    env = _server_env(rt, secured)
    cmd = [torchserve, "--start", "--ncs", "--ts-config", str(rt.config),
           "--model-store", str(model_store),
           "--models", *[f"{name}={name}.mar" for name in models]]  # fmt: skip
    log(f"starting TorchServe for {', '.join(models)} (logs in {rt.logs})")
    log_offset = _size(rt.logs / "ts_log.log")
    launcher: subprocess.Popen | None = None
    try:
        launcher = start_detached(cmd, log_path=rt.console_log, env=env, cwd=rt.root)
        server_pid = _wait_for_launcher(launcher, rt, deadline)
        info = ServerInfo(
            pid=server_pid,
            runtime_dir=str(rt.root),
            inference_url=listeners.inference.client_url,
            management_url=listeners.management.client_url,
            metrics_url=listeners.metrics.client_url,
            models=models,
            token_auth=secured,
            key_file=str(rt.key_file) if secured else None,
        )
        wait_until_ready(info, deadline=deadline, log_offset=log_offset)
        write_state(rt.state, asdict(info))
        return info
    except BaseException as exc:
        details = _clean_up_failed_start(rt, launcher)
        if isinstance(exc, ServeError):
            raise ServeError(str(exc), details) from None
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ServeError(f"starting TorchServe failed: {exc}", details) from exc


def _check_can_start(
    rt: RuntimeDir,
    base_config: Path,
    host: str | None,
    ports: dict[str, int | None] | None,
) -> Listeners:
    """The listeners a new server of ``rt`` would bind, once nothing stands in its way.

    Args:
        rt: the new server's runtime dir.
        base_config: config.properties the listeners are read from.
        host: bind address for all listeners (None: as configured).
        ports: listener name -> port; missing or None entries keep the configured port.

    Raises:
        ServeError: a server already runs for ``rt``, a port is busy, or ``rt`` is too deep for
            the worker sockets.
    """
    pid = running_pid(rt.root)
    if pid is not None:
        raise ServeError(
            f"TorchServe (pid {pid}) already runs for {rt.root}: "
            f"`python -m scripts.serve stop --runtime-dir {rt.root}` first"
        )
    listeners = listeners_from_properties(read_properties(base_config)).override(
        host, **(ports or {})
    )
    check_ports_free(listeners)
    _check_socket_path(rt)
    return listeners


def _prepare_runtime_dir(
    rt: RuntimeDir, base_config: Path, listeners: Listeners, model_store: Path, token_auth: bool
) -> bool:
    """Make the runtime dir, drop stale state and keys, write the config; True: API keys needed."""
    rt.logs.mkdir(parents=True, exist_ok=True)
    rt.tmp.mkdir(parents=True, exist_ok=True)
    for stale in (rt.state, rt.key_file):
        stale.unlink(missing_ok=True)
    props = derive_properties(
        read_properties(base_config), listeners, model_store, token_auth=token_auth
    )
    secured = "disable_token_authorization" not in props
    write_properties(
        rt.config,
        props,
        f"Derived from {Path(base_config).resolve()} by serve/torchserve.py; rewritten at each "
        "start.",
    )
    return secured


def _server_env(rt: RuntimeDir, secured: bool) -> dict[str, str]:
    """The launcher's environment: runtime dir's TMPDIR and logs, nothing overriding the config."""
    env = dict(os.environ)
    env.pop("TS_CONFIG_FILE", None)  # would override --ts-config
    if secured:  # only read with enable_envvars_config=true, but never let it switch auth off
        env.pop("TS_DISABLE_TOKEN_AUTHORIZATION", None)
    env.update(
        TMPDIR=str(rt.tmp),
        TEMP=str(rt.tmp),  # -> java.io.tmpdir: worker sockets, extracted archives
        TMP=str(rt.tmp),
        LOG_LOCATION=str(rt.logs),
        METRICS_LOCATION=str(rt.logs),
    )
    return env


def _wait_for_launcher(launcher: subprocess.Popen, rt: RuntimeDir, deadline: float) -> int:
    """Wait for ``torchserve --start`` to return; the pid of the frontend it started.

    Raises:
        ServeError: the launcher did not return before ``deadline`` (at least 1 s), failed, or
            left no server running for ``rt``.
    """
    try:
        code = launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise ServeError("the torchserve launcher did not return") from None
    server_pid = running_pid(rt.root)
    if code != 0 or server_pid is None:
        raise ServeError(f"torchserve --start failed (exit {code})")
    return server_pid


def _clean_up_failed_start(rt: RuntimeDir, launcher: subprocess.Popen | None) -> str:
    """Stop what a failed start left running; return the log tails read first (for ``details``)."""
    details = log_tails(rt)
    stop_server(rt.root)
    if launcher is not None and launcher.poll() is None:
        launcher.kill()
        launcher.wait()
    return details


def wait_until_ready(
    info: ServerInfo, *, deadline: float, log_offset: int = 0, poll_s: float = 0.5
) -> None:
    """Poll until ``/ping`` is healthy and every model has all its workers READY.

    Args:
        info: the starting server.
        deadline: ``time.monotonic()`` value to give up at.
        log_offset: size of ts_log.log before this start; only later lines are searched for
            load failures.
        poll_s: pause between polls, in seconds.

    Raises:
        ServeError: the server exited, a model failed to load (seen in ts_log.log), or the
            deadline passed (the message says what was still missing).
    """
    rt = RuntimeDir(Path(info.runtime_dir))
    waiting_for = "GET /ping"

    def ready() -> bool:
        nonlocal waiting_for
        if running_pid(rt.root) != info.pid:
            raise ServeError("TorchServe exited while starting")
        failure = _load_failure(rt, log_offset)
        if failure:
            raise ServeError(f"a model failed to load: {failure}")
        keys = read_keys(rt) if info.token_auth else {}
        if info.token_auth and not keys:
            return False
        status, body = http_json(f"{info.inference_url}/ping", keys.get("inference"))
        if status != 200 or not isinstance(body, dict) or body.get("status") != "Healthy":
            waiting_for = f"GET /ping healthy (last answer: {status} {body})"
            return False
        pending = [
            name
            for name in info.models
            if not model_ready(info.management_url, name, keys.get("management"))
        ]
        waiting_for = f"workers READY for {', '.join(pending)}"
        return not pending

    if not poll_until(ready, deadline=deadline, poll_s=poll_s):
        raise ServeError(f"TorchServe not ready before the deadline: waiting for {waiting_for}")


def model_ready(management_url: str, name: str, token: str | None = None) -> bool:
    """True when ``GET /models/NAME`` lists at least ``minWorkers`` (>= 1) workers, all READY."""
    status, body = http_json(f"{management_url}/models/{name}", token)
    if status != 200 or not isinstance(body, list) or not body:
        return False
    entry = body[0]
    workers = entry.get("workers") or []
    ready = [w for w in workers if w.get("status") == "READY"]
    return len(ready) == len(workers) and len(ready) >= max(1, int(entry.get("minWorkers", 1)))


def stop_server(runtime_dir: Path, *, timeout_s: float = 60.0) -> int | None:
    """Stop the TorchServe this runtime dir started, with its worker processes.

    Sends SIGTERM to the frontend (it stops its workers), waits up to ``timeout_s`` seconds,
    then SIGKILLs what is left of the frontend and the workers it had. Other TorchServe
    instances (other runtime dirs, a user's own) are never touched.

    Returns:
        The pid that was stopped, or None when no server ran for this runtime dir.
    """
    rt = RuntimeDir(Path(runtime_dir).resolve())
    pid = running_pid(rt.root)
    if pid is None:
        rt.state.unlink(missing_ok=True)
        return None
    stop(pid, timeout_s=timeout_s)
    for path in (rt.pid_file, rt.state, rt.key_file):
        path.unlink(missing_ok=True)
    return pid


def server_status(runtime_dir: Path) -> dict | None:
    """Describe the server of a runtime dir, or None when none runs.

    Returns:
        ``server.json``'s fields (or just ``pid`` and ``runtime_dir`` while it is still
        starting) plus ``models_ready``: model name -> bool (management API).
    """
    rt = RuntimeDir(Path(runtime_dir).resolve())
    pid = running_pid(rt.root)
    if pid is None:
        return None
    try:
        state = json.loads(rt.state.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {"pid": pid, "runtime_dir": str(rt.root), "models_ready": {}}
    if state.get("pid") != pid:
        return {"pid": pid, "runtime_dir": str(rt.root), "models_ready": {}}
    keys = read_keys(rt) if state.get("token_auth") else {}
    state["models_ready"] = {
        name: model_ready(state["management_url"], name, keys.get("management"))
        for name in state.get("models", [])
    }
    return state


def read_keys(rt: RuntimeDir) -> dict[str, str]:
    """API keys from ``key_file.json``: ``{"inference": KEY, "management": KEY, "API": KEY}``.

    Returns {} while the file does not exist (yet).
    """
    try:
        raw = json.loads(rt.key_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {
        name: entry["key"]
        for name, entry in raw.items()
        if isinstance(entry, dict) and isinstance(entry.get("key"), str)
    }


def http_json(url: str, token: str | None = None, timeout_s: float = 5.0):
    """GET a JSON document, bypassing any HTTP proxy.

    Returns:
        ``(status, parsed_body)``; ``(None, None)`` when nothing answers; the body is None when
        it is not JSON.
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _NO_PROXY.open(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError):
        return None, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _load_failure(rt: RuntimeDir, offset: int = 0) -> str:
    """The first ts_log.log line past byte ``offset`` saying a model failed to load, or ""."""
    path = rt.logs / "ts_log.log"
    try:
        with path.open("rb") as f:
            f.seek(offset)
            for raw in f:
                line = raw.decode("utf-8", errors="replace")
                match = _LOAD_FAILED.search(line)
                if match:
                    return line[match.start() :].strip()
    except FileNotFoundError:
        pass
    return ""


def log_tails(rt: RuntimeDir, lines: int = 20) -> str:
    """The last ``lines`` lines of the frontend log and of the model (worker) log.

    The console log (launcher and Java stdout, mostly a copy of ts_log.log) is shown instead
    when neither exists, e.g. when Java did not start.
    """
    parts = []
    for path in (rt.logs / "ts_log.log", rt.logs / "model_log.log", rt.console_log):
        if path == rt.console_log and parts:
            break
        text = log_tail(path, lines)
        if text:
            parts.append(f"--- last lines of {path} ---\n{text}")
    return "\n".join(parts)


def _size(path: Path) -> int:
    """Size of a file in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
