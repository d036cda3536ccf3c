"""TorchServe's server configuration: read the repository's, derive and write a server's own.

The derived one sets addresses, ports, token authorization and allowed archive URLs. The format is
Java properties as TorchServe reads them (``key=value`` lines, ``#``/``!`` comments;
https://github.com/pytorch/serve/blob/master/docs/configuration.md).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from common.files import atomic_write_text

#: Repository root (this file is ``serve/properties.py``).
REPO_ROOT = Path(__file__).resolve().parents[1]


#: The base server configuration the derived one starts from.
BASE_CONFIG = REPO_ROOT / "config.properties"


class ServeError(Exception):
    """A problem the user can fix; ``str()`` is one line that names the fix.

    Attributes:
        details: extra text for the user (e.g. the last lines of the TorchServe logs), or "".
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


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
        """:attr:`url` with a wildcard host (0.0.0.0, ::) made loopback, for local clients."""
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
    """Write ``key=value`` lines atomically, mode 0600 (they may hold a keystore password)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={value}" for key, value in props.items()]
    atomic_write_text(path, "\n".join(lines) + "\n", mode=0o600)


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
