"""S3 through s3dlio (MLPerf Storage v3.0's object client), behind the same Storage interface.

Selected by ``storage.client_lib: s3dlio``. s3dlio 0.10 (a Rust library; the version is pinned)
keeps one S3 client per process, built on its first request from environment variables
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_S3_ADDRESSING_STYLE``, ``AWS_MAX_ATTEMPTS``, the
keys). :class:`S3dlioStorage` sets them around that first request only and puts the user's
environment back after it, so nothing leaks into the environment of the process or of what it
starts. Two consequences, each checked with a clear error:

- one endpoint per process: a second storage naming another endpoint or region is refused;
- the client does not survive ``fork``: a forked child that uses it hangs, so DataLoader workers
  of an s3dlio storage start with ``forkserver`` (:func:`pipelines.storage.base.worker_context`).

Figures (see ``docs/benchmark.md``, "Client libraries"): bytes, seconds and requests are exact
(``S3DLIO_ENABLE_RANGE_OPTIMIZATION`` is 0 here unless the user sets it, as in MLPerf Storage's
s3dlio runs: one GET per read, no HEAD before it); s3dlio does not expose a request's time to first
byte, so ``ttfb_s`` stays empty, and its retries are not counted.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from pipelines.storage.base import (
    CallStats,
    MeteredStream,
    ObjectNotFound,
    PartReader,
    StorageError,
    client_error,
)
from pipelines.storage.s3 import safe_url

#: Bytes per ranged GET of a streaming read (:meth:`S3dlioStorage.open`), one in flight: memory
#: is bounded by one window, held in s3dlio's own buffer (no copy). Measured with ``make
#: bench-memory`` (a 1 GB shard): 16 MiB windows copied to ``bytes`` added 84 MiB of RSS.
STREAM_WINDOW = 8 * 2**20

#: Concurrent HEADs of :meth:`S3dlioStorage.versions` (s3dlio lists keys without sizes or ETags).
STAT_THREADS = 16

#: How s3dlio's errors say that an object or a bucket is missing, and that a range starts past
#: the end of an object (matched in the error's text: s3dlio raises ``RuntimeError`` for both).
_MISSING = (
    "nosuchkey",
    "nosuchbucket",
    "service error: notfound",  # a HEAD's 404 (no body to name the cause)
    "object key does not exist",
    "bucket does not exist",
)
_NO_RANGE = ("invalidrange",)

#: This process's s3dlio client: ``(pid, where)`` once its first request was sent, ``where``
#: being the endpoint and region it was built for. One per process: s3dlio cannot rebuild it.
_client_lock = threading.Lock()
_client: dict[str, object] = {}


class S3dlioStorage:
    """Objects under ``s3://bucket/`` read with s3dlio.

    Credentials come from the environment or, for the local server of ``make s3-up``, from its
    env file (``credentials_file``), set for s3dlio's first request only. Picklable: a DataLoader
    worker builds its own client on its first request.

    Args:
        bucket: bucket name.
        endpoint_url: custom endpoint (MinIO, DSS, a local server); ``None`` for AWS.
        region: region (default ``AWS_DEFAULT_REGION`` or us-east-1).
        addressing_style: ``path`` or ``virtual`` (``AWS_S3_ADDRESSING_STYLE``).
        max_attempts: attempts per request (``AWS_MAX_ATTEMPTS``, s3dlio's AWS SDK retries).
        credentials_file: an env file (``AWS_ACCESS_KEY_ID=...`` lines) whose keys are used when
            the environment has none.

    Raises:
        StorageError: s3dlio is not installed (the message says how to install it).
    """

    #: DataLoader workers must not be forked from a process that used this storage.
    fork_safe = False

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "path",
        max_attempts: int = 5,
        credentials_file: str | os.PathLike | None = None,
    ):
        try:
            import s3dlio  # noqa: F401
        except ImportError:
            raise StorageError(
                "storage.client_lib is s3dlio but it is not installed: `uv pip install "
                "s3dlio==0.10.0`, or use client_lib: boto3"
            ) from None
        self.bucket = bucket
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.addressing_style = addressing_style
        self.max_attempts = max_attempts
        self.credentials_file = Path(credentials_file) if credentials_file else None

    def __repr__(self) -> str:
        return f"S3dlioStorage({self.describe()!r})"

    # -- the process's client ----------------------------------------------------------------

    def _client_environment(self) -> dict[str, str]:
        """The variables s3dlio's client is built from (keys only from ``credentials_file``).

        Raises:
            StorageError: the environment holds other keys than ``credentials_file``'s.
        """
        env = {
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_S3_ADDRESSING_STYLE": self.addressing_style,
            "AWS_MAX_ATTEMPTS": str(self.max_attempts),
            "S3DLIO_ENABLE_RANGE_OPTIMIZATION": os.environ.get(
                "S3DLIO_ENABLE_RANGE_OPTIMIZATION", "0"
            ),
        }
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL_S3"] = self.endpoint_url
        if self.credentials_file is not None:
            from pipelines.storage.env_file import keys_for_environment

            keys = keys_for_environment(self.credentials_file)
            if keys is None:
                raise StorageError(
                    f"{self.describe()}: AWS_ACCESS_KEY_ID (or AWS_SESSION_TOKEN) holds other "
                    f"keys than the local server's ({self.credentials_file}), and s3dlio reads "
                    "keys from the environment only: name the endpoint (S3_ENDPOINT=...) to use "
                    "those keys, or unset them"
                )
            env.update(keys)
        return env

    def _where(self) -> tuple[str | None, str, str]:
        return self.endpoint_url, self.region, self.addressing_style

    def _call(self, key: str, action: str, fn: Callable, *args):
        """``fn(*args)`` (an s3dlio function), building this process's client on the first call.

        The first call runs with :meth:`_client_environment` set, under a lock; the environment
        is put back after it.

        Raises:
            StorageError: the call failed (:class:`ObjectNotFound` for a missing object); another
                endpoint's client already serves this process.
        """
        pid = os.getpid()
        if _client.get("pid") != pid:
            with _client_lock:
                if _client.get("pid") != pid:
                    env = self._client_environment()
                    try:
                        return self._run(env, key, action, fn, *args)
                    finally:
                        _client.update(pid=pid, where=self._where())
        if _client.get("where") != self._where():
            endpoint, region, style = _client["where"]
            raise StorageError(
                f"{self.describe(key)}: this process's s3dlio client already serves "
                f"{safe_url(endpoint) if endpoint else 'AWS'} ({region}, {style} addressing) and "
                "s3dlio builds one client per process: use one endpoint per run with s3dlio"
            )
        return self._run({}, key, action, fn, *args)

    def _call_in_environment(self, key: str, action: str, fn: Callable, *args):
        """``fn(*args)`` with :meth:`_client_environment` set, under the lock.

        For s3dlio's streaming writer, which builds a client of its own from the environment when
        it sends its first request (measured with 0.10.0: outside the environment it went to AWS).

        Raises:
            StorageError: as :meth:`_call`.
        """
        env = self._client_environment()
        with _client_lock:
            return self._run(env, key, action, fn, *args)

    def _run(self, env: dict[str, str], key: str, action: str, fn: Callable, *args):
        """``fn(*args)`` with ``env`` set for it; its failure as :meth:`_fail`'s one line."""
        try:
            with _environment(env):
                return fn(*args)
        except Exception as exc:  # noqa: BLE001 - s3dlio raises RuntimeError
            raise self._fail(exc, key, action) from None

    def connect(self) -> None:
        """Nothing: s3dlio builds its client on the first request (that read's time includes it)."""

    # -- naming and errors -------------------------------------------------------------------

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def describe(self, key: str = "") -> str:
        """``s3://bucket/key (endpoint URL, s3dlio)``, for messages; never credentials."""
        endpoint = safe_url(self.endpoint_url) if self.endpoint_url else f"AWS {self.region}"
        return f"{self._uri(key)} ({endpoint}, s3dlio)"

    def _fail(self, exc: Exception, key: str, action: str) -> StorageError:
        """Turn ``exc`` into a one-line :class:`StorageError` naming the object.

        Its ``stats`` hold the failed request and its kind; a missing object or bucket gives
        :class:`ObjectNotFound`.
        """
        if isinstance(exc, StorageError):
            return exc
        return client_error(exc, self.describe(key), action, _MISSING)

    # -- reads -------------------------------------------------------------------------------

    def fetch(self, key: str) -> tuple[bytes, CallStats]:
        """The whole object (one GET), with the figures of that read.

        Raises:
            StorageError: missing object (:class:`ObjectNotFound`), credentials refused,
                endpoint unreachable.
        """
        import s3dlio

        began = time.perf_counter()
        data = bytes(self._call(key, "read", s3dlio.get, self._uri(key)))
        return data, CallStats(len(data), time.perf_counter() - began, 1)

    def read(self, key: str) -> bytes:
        """The whole object (one GET). Raises StorageError as :meth:`fetch`."""
        return self.fetch(key)[0]

    def fetch_range(self, key: str, start: int, length: int) -> tuple[bytes, CallStats]:
        """``length`` bytes from offset ``start`` in one ranged GET, with its figures.

        Returns ``b""`` for ``length <= 0`` (no request) or a ``start`` at or past the end.

        Raises:
            StorageError: as :meth:`fetch`.
            ValueError: ``start`` is negative.
        """
        if start < 0:
            raise ValueError(f"{start=} must not be negative")
        if length <= 0:
            return b"", CallStats()
        began = time.perf_counter()
        data = bytes(self._get_range(key, "read a range of", start, length))
        return data, CallStats(len(data), time.perf_counter() - began, 1)

    def _get_range(self, key: str, action: str, start: int, length: int):
        """One ranged GET: s3dlio's buffer (no copy), or ``b""`` for a range past the end.

        Raises:
            StorageError: as :meth:`fetch`.
        """
        import s3dlio

        try:
            return self._call(key, action, s3dlio.get_range, self._uri(key), start, length)
        except StorageError as exc:
            if not any(m in str(exc).lower() for m in _NO_RANGE):
                raise
            return b""

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """:meth:`fetch_range` without the figures."""
        return self.fetch_range(key, start, length)[0]

    def open(self, key: str) -> MeteredStream:
        """Stream the object front to back in ranged GETs of :data:`STREAM_WINDOW` bytes.

        The first GET is sent now; memory is bounded by one window, whatever the object's size.

        Raises:
            StorageError: as :meth:`fetch`; errors while reading the stream are StorageError too.
        """
        stream = MeteredStream(None, CallStats())
        stream.raw = WindowStream(self, key, stream.count_request)
        began = time.perf_counter()
        stream.raw.next_window()
        stream.add_open_seconds(time.perf_counter() - began)
        return stream

    def size(self, key: str) -> int:
        """Size in bytes (one HEAD).

        Raises:
            StorageError: missing object (:class:`ObjectNotFound`), credentials, endpoint.
        """
        import s3dlio

        return int(self._call(key, "stat", s3dlio.stat, self._uri(key))["size"])

    def exists(self, key: str) -> bool:
        """Whether the object exists (one HEAD; s3dlio's own ``exists`` hides failures)."""
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    # -- listing -----------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys under ``prefix`` (a folder) in lexicographic order.

        s3dlio lists every page before it returns: a listing that fails part-way raises and
        yields nothing. A prefix without objects yields nothing.

        Raises:
            StorageError: the listing failed or was refused (names the prefix).
        """
        import s3dlio

        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        uris = self._call(base, "list", s3dlio.list, self._uri(base), True)
        skip = len(self._uri(""))
        yield from sorted(uri[skip:] for uri in uris if not uri.endswith("/"))

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Size and ETag of each object that exists: one HEAD per key, :data:`STAT_THREADS` at once.

        Raises:
            StorageError: a HEAD fails for another reason than a missing object.
        """
        import s3dlio

        def stat(key: str) -> tuple[str, dict | None]:
            try:
                return key, self._call(key, "stat", s3dlio.stat, self._uri(key))
            except ObjectNotFound:
                return key, None

        with ThreadPoolExecutor(STAT_THREADS) as pool:
            found = pool.map(stat, keys)
            return {k: (int(m["size"]), str(m["etag"]).strip('"')) for k, m in found if m}

    # -- writes ------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> None:
        """One PUT of ``data`` (atomic: the object appears whole, on success only)."""
        import s3dlio

        self._call(key, "write", s3dlio.put_bytes, self._uri(key), data)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a local file in one PUT of its memory map (no copy on the Python heap).

        One PUT, not s3dlio's multipart writer: rclone's local server answers
        ``CreateMultipartUpload`` in a dialect s3dlio rejects (as s3torchconnector's dcp does).
        The object appears whole, on success only.

        Raises:
            StorageError: the file cannot be read, or the upload failed.
        """
        import s3dlio

        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    return self.write(key, b"")
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    self._call(key, f"upload {path} to", s3dlio.put_bytes, self._uri(key), mapped)
        except OSError as exc:
            raise StorageError(
                f"cannot upload {path} to {self.describe(key)}: {exc.strerror or exc}"
            ) from None

    def upload_stream(self, key: str, stream: BinaryIO, *, part_size: int) -> int:
        """Upload ``stream`` to ``key`` with s3dlio's multipart writer, ``part_size`` bytes a read.

        Memory holds about one part; the object appears whole, on success only. The server must
        answer CreateMultipartUpload as S3 does (rclone's local server does not).

        Returns:
            The bytes uploaded.

        Raises:
            StorageError: the upload failed.
        """
        import s3dlio

        action = "upload a stream to"
        writer = self._call_in_environment(key, action, s3dlio.create_s3_writer, self._uri(key))
        nbytes = 0
        while piece := stream.read(part_size):
            self._call_in_environment(key, action, writer.write_chunk, piece)
            nbytes += len(piece)
        self._call_in_environment(key, action, writer.finalize)
        return nbytes

    def delete(self, key: str) -> None:
        """Remove the object (one DELETE; a missing one is fine)."""
        import s3dlio

        self._call(key, "delete", s3dlio.delete, self._uri(key))


class WindowStream(PartReader):
    """An object read front to back in ranged GETs of :data:`STREAM_WINDOW` bytes, one at a time.

    A window that comes back short, or a range past the end (HTTP 416), ends the stream.

    Args:
        storage: sends the GETs and names failures.
        key: the object.
        on_request: called once per GET sent (:meth:`MeteredStream.count_request`).
    """

    def __init__(self, storage: S3dlioStorage, key: str, on_request: Callable[..., None]):
        self._storage, self._key, self._on_request = storage, key, on_request
        self._pos = 0
        self._ended = False

    def next_window(self) -> bool:
        """Send the next window's GET; False at the end of the object."""
        if self._ended:
            return False
        self._part = memoryview(b"")  # the last window is dropped before the next arrives
        try:  # b"": the previous window ended exactly at the end of the object
            data = self._storage._get_range(self._key, "stream", self._pos, STREAM_WINDOW)
        finally:
            self._on_request(None)
        self._part = memoryview(data)  # s3dlio's buffer itself: no copy
        self._ended = len(self._part) < STREAM_WINDOW
        return bool(self._part)

    def _next_part(self) -> bool:
        return self.next_window()

    def _consumed(self, nbytes: int) -> None:
        self._pos += nbytes


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then put back what was there."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
