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

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

#: Repository root (this file is ``serve/runtime.py``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The base server configuration the derived one starts from.
BASE_CONFIG = REPO_ROOT / "config.properties"
#: Java main class of TorchServe's frontend; identifies its process.
TS_MAIN_CLASS = "org.pytorch.serve.ModelServer"
#: Oldest Java major version TorchServe 0.12 supports.
MIN_JAVA = 17
#: Log lines that mean a model will not become ready (TorchServe would retry forever).
_LOAD_FAILED = re.compile(r"Load model failed|Failed to load model|ModelNotFoundException")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServeError(Exception):
    """A problem the user can fix; ``str()`` is one line that names the fix.

    Attributes:
        details: extra text for the user (e.g. the last lines of the TorchServe logs), or "".
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


# ---------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Listener:
    """One socket TorchServe listens on.

    Attributes:
        scheme: ``http``/``https`` for the REST APIs, ``""`` for gRPC (address and port are
            separate keys in config.properties for gRPC).
        host: IP address or host name to bind.
        port: TCP port.
    """

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """``scheme://host:port`` (IPv6 hosts in brackets); for gRPC just ``host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}" if self.scheme else f"{host}:{self.port}"

    @property
    def client_url(self) -> str:
        """:attr:`url` with a wildcard bind address (0.0.0.0, ::) replaced by loopback, for
        clients on this machine."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return replace(self, host=host).url

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Listeners:
    """The five sockets of a TorchServe instance (REST inference/management/metrics, gRPC)."""

    inference: Listener
    management: Listener
    metrics: Listener
    grpc_inference: Listener
    grpc_management: Listener

    def all(self) -> dict[str, Listener]:
        """Name -> listener, in a stable order."""
        return {
            "inference": self.inference,
            "management": self.management,
            "metrics": self.metrics,
            "grpc_inference": self.grpc_inference,
            "grpc_management": self.grpc_management,
        }

    @property
    def all_loopback(self) -> bool:
        """True when no listener can be reached from another machine."""
        return all(listener.is_loopback for listener in self.all().values())

    def override(self, host: str | None = None, **ports: int | None) -> Listeners:
        """Copy with every host replaced by ``host`` and the given ports replaced.

        Args:
            host: bind address for all five listeners, or None to keep each one's.
            **ports: ``inference=``, ``management=``, ``metrics=``, ``grpc_inference=``,
                ``grpc_management=``; None keeps the configured port.
        """
        updated = {}
        for name, listener in self.all().items():
            port = ports.get(name)
            updated[name] = replace(
                listener,
                host=host if host is not None else listener.host,
                port=port if port is not None else listener.port,
            )
        return Listeners(**updated)


def read_properties(path: Path) -> dict[str, str]:
    """Read a TorchServe ``config.properties`` (``key=value`` lines, ``#``/``!`` comments).

    Values are kept verbatim (backslash escapes are not interpreted) so that they can be written
    back unchanged.

    Raises:
        ServeError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ServeError(f"server configuration {path} not found: run from the repository root")
    props: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#!" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def listeners_from_properties(props: dict[str, str]) -> Listeners:
    """Parse the five listeners of a config, with TorchServe's defaults for missing keys.

    Raises:
        ServeError: an address is not ``scheme://host:port``.
    """

    def rest(key: str, default: str) -> Listener:
        value = props.get(key, default)
        match = re.fullmatch(r"(https?)://(\[[^\]]+\]|[^:/]+):(\d+)/?", value)
        if match is None:
            raise ServeError(f"{key}={value} in config.properties is not scheme://host:port")
        return Listener(match[1], match[2].strip("[]"), int(match[3]))

    def grpc(prefix: str, default_port: int) -> Listener:
        return Listener(
            "",
            props.get(f"{prefix}_address", "0.0.0.0"),
            int(props.get(f"{prefix}_port", default_port)),
        )

    return Listeners(
        inference=rest("inference_address", "http://127.0.0.1:8080"),
        management=rest("management_address", "http://127.0.0.1:8081"),
        metrics=rest("metrics_address", "http://127.0.0.1:8082"),
        grpc_inference=grpc("grpc_inference", 7070),
        grpc_management=grpc("grpc_management", 7071),
    )


def derive_properties(
    base: dict[str, str], listeners: Listeners, model_store: Path, *, token_auth: bool = False
) -> dict[str, str]:
    """Build the configuration a runtime dir's server runs with.

    Args:
        base: the repo's config.properties (see :func:`read_properties`).
        listeners: addresses/ports to bind.
        model_store: absolute model store; ``allowed_urls`` is pinned to its ``*.mar`` files.
        token_auth: ask for token authorization even when every listener is loopback.

    Returns:
        The properties. Token authorization is on (``disable_token_authorization`` dropped)
        whenever ``token_auth`` is set or a listener is not loopback. ``model_store`` and
        ``load_models`` are dropped: the store and the models are given on the command line.

    Raises:
        ServeError: the model store path contains a comma (``allowed_urls`` is comma-separated).
    """
    props = {k: v for k, v in base.items() if k not in ("model_store", "load_models")}
    props["inference_address"] = listeners.inference.url
    props["management_address"] = listeners.management.url
    props["metrics_address"] = listeners.metrics.url
    props["grpc_inference_address"] = listeners.grpc_inference.host
    props["grpc_inference_port"] = str(listeners.grpc_inference.port)
    props["grpc_management_address"] = listeners.grpc_management.host
    props["grpc_management_port"] = str(listeners.grpc_management.port)
    if "," in str(model_store):
        raise ServeError(f"model store path {model_store} must not contain a comma")
    # Java regex inside a Java properties value: every backslash is written twice.
    regex = "file://" + re.escape(str(Path(model_store).resolve())) + r"/[^/]+\.mar"
    props["allowed_urls"] = regex.replace("\\", "\\\\")
    if token_auth or not listeners.all_loopback:
        props.pop("disable_token_authorization", None)
    return props


def write_properties(path: Path, props: dict[str, str], header: str) -> None:
    """Write ``key=value`` lines atomically (temporary file in the same dir, then rename)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={value}" for key, value in props.items()]
    _atomic_write(Path(path), "\n".join(lines) + "\n")


# ---------------------------------------------------------------------- runtime dir


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
    import psutil  # dependency of torchserve

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return TS_MAIN_CLASS in cmdline and str(rt.config) in cmdline


# ---------------------------------------------------------------------- preflight checks


def check_java() -> str:
    """Check that Java >= 17 is available the way TorchServe looks for it ($JAVA_HOME, PATH).

    Returns:
        The version string, e.g. ``17.0.15``.

    Raises:
        ServeError: no java, or an older one.
    """
    fix = "install Java 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set "
    fix += "JAVA_HOME"
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise ServeError(f"java not found (TorchServe needs Java {MIN_JAVA}+): {fix}")
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServeError(f"{java} -version failed ({exc}): {fix}") from None
    match = re.search(r'version "([^"]+)"', result.stderr + result.stdout)
    if match is None:
        raise ServeError(f"could not read the version of {java}: {fix}")
    version = match[1]
    parts = version.split(".")
    major = int(parts[1] if parts[0] == "1" and len(parts) > 1 else re.match(r"\d+", parts[0])[0])
    if major < MIN_JAVA:
        raise ServeError(f"{java} is Java {version}; TorchServe 0.12 needs {MIN_JAVA}+: {fix}")
    return version


def find_tool(name: str) -> str | None:
    """Locate a console script of the environment (``torchserve``, ``torch-model-archiver``):
    next to this interpreter first, then on PATH; None when it is not installed."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def find_torchserve() -> str:
    """Locate the ``torchserve`` launcher.

    Raises:
        ServeError: not installed.
    """
    found = find_tool("torchserve")
    if found is None:
        raise ServeError("torchserve not found: run `make setup` (it is a dependency)")
    return found


def list_models(model_store: Path) -> list[str]:
    """Names of the archives (``NAME.mar``) in a model store, sorted.

    Raises:
        ServeError: no store, no archive, or an archive name TorchServe would refuse.
    """
    model_store = Path(model_store)
    archives = sorted(model_store.glob("*.mar")) if model_store.is_dir() else []
    if not archives:
        raise ServeError(f"no model archive (*.mar) in {model_store}: run `make archive` first")
    names = [path.stem for path in archives]
    bad = [name for name in names if not _MODEL_NAME.match(name)]
    if bad:
        raise ServeError(f"archive names {bad} in {model_store} are not valid model names")
    return names


def check_ports_free(listeners: Listeners) -> None:
    """Check that every listener's address can be bound now.

    Raises:
        ServeError: a port is taken (names the option that changes it) or the address is not
            one of this machine's.
    """
    for name, listener in listeners.all().items():
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((listener.host, listener.port))
            except OSError as exc:
                option = "--" + name.replace("_", "-") + "-port"
                raise ServeError(
                    f"cannot bind the {name} address {listener.url} ({exc.strerror}): stop what "
                    f"uses it or choose another with {option}"
                ) from None


def _check_socket_path(rt: RuntimeDir) -> None:
    """Worker sockets are ``TMPDIR/.ts.sock.PORT``; a Unix socket path has at most 107 bytes."""
    longest = len(os.fsencode(rt.tmp / ".ts.sock.65535"))
    if longest > 107:
        raise ServeError(
            f"runtime dir {rt.root} is too deep for TorchServe's worker sockets "
            f"({longest} > 107 bytes): choose a shorter --runtime-dir"
        )


# ---------------------------------------------------------------------- start / wait / stop


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
        f"Derived from {Path(base_config).resolve()} by serve/runtime.py; rewritten at each start.",
    )

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
    cmd = [torchserve, "--start", "--ncs", "--ts-config", str(rt.config),
           "--model-store", str(model_store),
           "--models", *[f"{name}={name}.mar" for name in models]]  # fmt: skip
    log(f"starting TorchServe for {', '.join(models)} (logs in {rt.logs})")
    log_offset = _size(rt.logs / "ts_log.log")
    launcher: subprocess.Popen | None = None
    try:
        with rt.console_log.open("ab") as console:
            # New session: the server outlives this process and ignores the terminal's Ctrl-C.
            launcher = subprocess.Popen(
                cmd,
                cwd=rt.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            code = launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ServeError("the torchserve launcher did not return") from None
        server_pid = running_pid(rt.root)
        if code != 0 or server_pid is None:
            raise ServeError(f"torchserve --start failed (exit {code})")
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
        _atomic_write(rt.state, json.dumps(asdict(info), indent=2) + "\n")
        return info
    except BaseException as exc:
        details = log_tails(rt)
        stop_server(rt.root)
        if launcher is not None and launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if isinstance(exc, ServeError):
            raise ServeError(str(exc), details) from None
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ServeError(f"starting TorchServe failed: {exc}", details) from exc


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
    while True:
        if running_pid(rt.root) != info.pid:
            raise ServeError("TorchServe exited while starting")
        failure = _load_failure(rt, log_offset)
        if failure:
            raise ServeError(f"a model failed to load: {failure}")
        keys = read_keys(rt) if info.token_auth else {}
        if not info.token_auth or keys:
            status, body = http_json(f"{info.inference_url}/ping", keys.get("inference"))
            if status == 200 and isinstance(body, dict) and body.get("status") == "Healthy":
                pending = [
                    name
                    for name in info.models
                    if not model_ready(info.management_url, name, keys.get("management"))
                ]
                if not pending:
                    return
                waiting_for = f"workers READY for {', '.join(pending)}"
            else:
                waiting_for = f"GET /ping healthy (last answer: {status} {body})"
        if time.monotonic() >= deadline:
            raise ServeError(f"TorchServe not ready before the deadline: waiting for {waiting_for}")
        time.sleep(poll_s)


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
    import psutil  # dependency of torchserve

    rt = RuntimeDir(Path(runtime_dir).resolve())
    pid = running_pid(rt.root)
    if pid is None:
        rt.state.unlink(missing_ok=True)
        return None
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([proc], timeout=timeout_s)
        for leftover in alive:
            leftover.kill()
        _, alive = psutil.wait_procs(children, timeout=5)
        for leftover in alive:
            leftover.kill()
        psutil.wait_procs(alive, timeout=5)
    except psutil.NoSuchProcess:
        pass
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


# ---------------------------------------------------------------------- helpers


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
        try:
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            continue
        if text:
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago (for tests)."""
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


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same dir and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _size(path: Path) -> int:
    """Size of a file in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
