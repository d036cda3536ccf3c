"""S3 through AWS's s3torchconnector (the AWS CRT client), behind the same Storage interface.

Selected by ``storage.client_lib: s3torchconnector`` instead of boto3. s3torchconnector 1.5's
``S3Client`` (``s3torchconnector._s3client``, which ``S3Checkpoint`` and the datasets wrap; the
version is pinned) is used directly, as only its ``get_object`` takes a reader constructor:
the default ``SequentialS3Reader`` keeps every byte read to seek back (a streamed 1 GB shard
whole), and the CRT fetches a GET's parts ahead of the reader without a limit. Here a stream
is read in ranged GETs of :data:`STREAM_WINDOW` bytes, one in flight, each part dropped once
read (:class:`ObjectStream`): memory is bounded by one window.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence

from pipelines.storage.base import (
    CallStats,
    MeteredStream,
    ObjectNotFound,
    PartReader,
    StorageError,
    client_error,
)
from pipelines.storage.s3 import safe_url

#: Bytes per ranged GET of a streaming read (:meth:`S3ConnectorStorage.open`): two of the CRT
#: client's 8 MiB parts, fetched in parallel; memory is bounded by one window. Measured with
#: ``make bench-memory`` (a 1 GB shard): +41.6 MiB of RSS at 416 MB/s (8 MiB windows: +40.8
#: MiB; 32 MiB: +73.6 MiB); the library's sequential reader held the whole shard (+1554 MiB).
STREAM_WINDOW = 16 * 2**20

#: How the CRT client's errors say that an object is missing, and that a range starts past the
#: end of an object (matched in the error's text, which also holds the response's body: a bare
#: "404" or "416" could be part of a key or a request id).
_MISSING = (
    "nosuchkey",
    "nosuchbucket",
    "the key does not exist",
    "the object was not found",
    "bucket does not exist",
    "response_status: 404",
)
_NO_RANGE = ("response_status: 416", "<code>invalidrange</code>")


class S3ConnectorStorage:
    """Objects under ``s3://bucket/`` read with s3torchconnector (CRT).

    Credentials come from the CRT's standard chain (environment, profile, instance role). One
    client per process, created on first use under a lock (the objects pattern reads from several
    threads) and again in a forked or unpickled copy (DataLoader workers). Figures per call
    (:class:`pipelines.storage.base.CallStats`): one request per GET (``fetch``, ``fetch_range``:
    one; ``open``: one per :data:`STREAM_WINDOW` bytes), ``ttfb_s`` until the GET's first part
    arrived; retries happen inside the CRT client and cannot be counted (``retries`` stays 0).

    Args:
        bucket: bucket name.
        endpoint_url: custom endpoint (MinIO, DSS, a local server); ``None`` for AWS.
        region: region; the CRT client needs one (default ``AWS_DEFAULT_REGION`` or us-east-1).
        addressing_style: ``path`` forces path-style requests (custom endpoints).
        max_attempts: attempts per request (the CRT client's own retry strategy).

    Raises:
        StorageError: s3torchconnector is not installed (message says how to install it).
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "path",
        max_attempts: int = 5,
    ):
        try:
            import s3torchconnector  # noqa: F401
        except ImportError:
            raise StorageError(
                "storage.client_lib is s3torchconnector but it is not installed: "
                "`uv pip install s3torchconnector`, or use client_lib: boto3"
            ) from None
        self.bucket = bucket
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.force_path_style = addressing_style == "path"
        self.max_attempts = max_attempts
        self._reset_process_state()

    # -- per-process state: client, lock ---------------------------------------------------------

    def _reset_process_state(self) -> None:
        """Forget the client (new object, unpickled copy, or forked child)."""
        self._pid = os.getpid()
        self._client = None
        self._client_lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_client", "_client_lock", "_pid"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def __repr__(self) -> str:
        return f"S3ConnectorStorage({self.describe()!r})"

    def client(self):
        """This process's s3torchconnector ``S3Client``, created once (thread-safe)."""
        if self._pid != os.getpid():  # forked: the parent's client is not ours
            self._reset_process_state()
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    from s3torchconnector import S3ClientConfig
                    from s3torchconnector._s3client import S3Client

                    config = S3ClientConfig(
                        force_path_style=self.force_path_style, max_attempts=self.max_attempts
                    )
                    self._client = S3Client(
                        self.region, endpoint=self.endpoint_url, s3client_config=config
                    )
                client = self._client
        return client

    def connect(self) -> None:
        """Create this process's client now (no request is sent)."""
        self.client()

    # -- naming and errors -----------------------------------------------------------------------

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def describe(self, key: str = "") -> str:
        """``s3://bucket/key (endpoint URL, s3torchconnector)``, for messages.

        Never credentials: a ``user:password@`` in the endpoint URL is left out.
        """
        endpoint = safe_url(self.endpoint_url) if self.endpoint_url else f"AWS {self.region}"
        return f"{self._uri(key)} ({endpoint}, s3torchconnector)"

    def _fail(self, exc: Exception, key: str, action: str, *, request: bool = True) -> StorageError:
        """Turn ``exc`` into a one-line :class:`StorageError` naming the object.

        Its ``stats`` hold the failed request (``request``: one was sent) and its kind; a missing
        object gives :class:`ObjectNotFound`.
        """
        return client_error(exc, self.describe(key), action, _MISSING, request=request)

    # -- reads -----------------------------------------------------------------------------------

    def _stream(
        self, key: str, action: str, start: int = 0, end: int | None = None, window: int = 0
    ) -> MeteredStream:
        """Open a metered :class:`ObjectStream` of bytes ``start`` to ``end``, first part received.

        ``end`` is exclusive (None: the end of the object); the stream's ``stats()`` count every GET
        it sends.
        """
        began = time.perf_counter()
        raw = self.client().get_object(
            self.bucket,
            key,
            reader_constructor=lambda *, bucket, key, get_object_info, get_stream: ObjectStream(
                self, key, action, get_stream, start=start, end=end, window=window
            ),
        )
        stream = MeteredStream(raw, CallStats())
        raw.on_request = stream.count_request
        raw.next_get()
        stream.add_open_seconds(time.perf_counter() - began)
        return stream

    def _get(self, key: str, action: str, get, *, ranged: bool):
        """Send one GET (``get()`` returns the CRT's iterator of parts) and wait for its first part.

        Returns:
            ``(first part, the other parts, its TTFB in seconds)``, or ``(None, None, TTFB)``
            for a ``ranged`` GET whose range starts at or past the end of the object (HTTP
            416, InvalidRange).

        Raises:
            StorageError: the request failed (:class:`ObjectNotFound` for a missing object).
        """
        began = time.perf_counter()
        try:
            parts = get()
            first = next(parts, b"")
        except Exception as exc:  # noqa: BLE001 - the CRT raises S3Exception and others
            if ranged and any(m in str(exc).lower() for m in _NO_RANGE):
                return None, None, time.perf_counter() - began
            raise self._fail(exc, key, action) from None
        return first, parts, time.perf_counter() - began

    def open(self, key: str) -> MeteredStream:
        """Stream the object front to back in ranged GETs of :data:`STREAM_WINDOW` bytes.

        Each is read as it arrives: memory is bounded by one window, whatever the object's size.

        Raises:
            StorageError: missing object (:class:`ObjectNotFound`), credentials refused,
                endpoint unreachable; errors while reading the stream are StorageError too.
        """
        return self._stream(key, "open", window=STREAM_WINDOW)

    def read(self, key: str) -> bytes:
        """The whole object (one GET).

        Raises:
            StorageError: as :meth:`open`.
        """
        return self.fetch(key)[0]

    def fetch(self, key: str) -> tuple[bytes, CallStats]:
        """The whole object (one GET), with the figures of that read.

        Raises:
            StorageError: as :meth:`open`.
        """
        with self._stream(key, "read") as stream:
            data = stream.read()
            return data, stream.stats()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` in one ranged GET (fewer at the object's end).

        Returns ``b""`` for ``length <= 0`` or a ``start`` at or past the end.

        Raises:
            StorageError: as :meth:`open`.
            ValueError: ``start`` is negative.
        """
        return self.fetch_range(key, start, length)[0]

    def fetch_range(self, key: str, start: int, length: int) -> tuple[bytes, CallStats]:
        """:meth:`read_range` with the figures of that read (no request for ``length <= 0``).

        Raises:
            StorageError: as :meth:`open`.
            ValueError: ``start`` is negative.
        """
        if start < 0:
            raise ValueError(f"{start=} must not be negative")
        if length <= 0:
            return b"", CallStats()
        with self._stream(key, "read a range of", start, start + length) as stream:
            data = stream.read()
            return data, stream.stats()

    def size(self, key: str) -> int:
        """Size in bytes (one HEAD).

        Raises:
            StorageError: missing object (:class:`ObjectNotFound`), credentials, endpoint.
        """
        try:
            return int(self.client().head_object(self.bucket, key).size)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "stat") from None

    def exists(self, key: str) -> bool:
        """Whether the object exists (one HEAD)."""
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    # -- listing ---------------------------------------------------------------------------------

    def _list_pages(self, base: str, delimiter: str = "") -> Iterator:
        """The ``ListObjectsV2`` pages under ``base``; a failure names the prefix."""
        try:
            yield from self.client().list_objects(self.bucket, base, delimiter)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, base, "list") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys under ``prefix`` (a folder) in listing order, fetching pages as needed.

        A prefix without objects yields nothing.

        Raises:
            StorageError: the listing failed or was refused (names the prefix).
        """
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        for page in self._list_pages(base):
            for info in page.object_info:
                yield info.key

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Size and ETag of each object that exists, from one listing per folder (as ``S3Storage``).

        Raises:
            StorageError: a listing fails.
        """
        wanted: dict[str, set[str]] = {}
        for key in keys:
            wanted.setdefault(key.rpartition("/")[0], set()).add(key)
        found = {}
        for folder, names in sorted(wanted.items()):
            for page in self._list_pages(f"{folder}/" if folder else "", delimiter="/"):
                for info in page.object_info:
                    if info.key in names:
                        found[info.key] = (int(info.size), str(info.etag).strip('"'))
        return found

    # -- writes ----------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> None:
        """One PUT of ``data`` (atomic: the object appears whole, on success only)."""
        try:
            with self.client().put_object(self.bucket, key) as writer:
                writer.write(data)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "write") from None

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a local file in 8 MiB pieces (memory bounded; the object appears whole)."""
        try:
            with open(path, "rb") as f, self.client().put_object(self.bucket, key) as writer:
                while piece := f.read(8 * 2**20):
                    writer.write(piece)
        except OSError as exc:
            raise StorageError(
                f"cannot upload {path} to {self.describe(key)}: {exc.strerror or exc}"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, f"upload {path} to") from None

    def delete(self, key: str) -> None:
        """Remove the object (a missing one is fine, and not counted as an error)."""
        try:
            self.client().delete_object(self.bucket, key)
        except Exception as exc:  # noqa: BLE001
            if not any(m in str(exc).lower() for m in _MISSING):
                raise self._fail(exc, key, "delete") from None


class ObjectStream(PartReader):
    """An object, or a byte range of it, read front to back from the CRT's streams of parts.

    Each part is dropped once read. With ``window`` 0 it is one GET; otherwise one ranged GET per
    ``window`` bytes, the next sent when the previous one is read out, so that at most one window
    is in flight (the CRT fetches a GET's parts ahead of the reader without a limit). A window
    that comes back short, or a range past the end (HTTP 416), ends the stream.

    Args:
        storage: counts the GETs and names failures.
        key: the object.
        action: what failures say was being done (``open``, ``read``...).
        get_stream: the CRT's ``get_stream(start, end)`` for this object (from
            ``S3Client.get_object``'s reader constructor).
        start, end: the byte range (``end`` exclusive; None: to the end of the object).
        window: bytes per ranged GET; 0: one GET for the whole range.
    """

    def __init__(
        self,
        storage: S3ConnectorStorage,
        key: str,
        action: str,
        get_stream,
        *,
        start: int = 0,
        end: int | None = None,
        window: int = 0,
    ):
        self._storage, self._key, self._action = storage, key, action
        self._get_stream = get_stream
        self._pos, self._end, self._window = start, end, window
        self._parts = None  # the current GET's remaining parts; None: closed or at the end
        self._part = memoryview(b"")
        self._window_left = 0  # bytes of the current window not yet received
        self._closed = False
        #: called with each GET's time to first byte (the :class:`MeteredStream` around it)
        self.on_request = lambda ttfb_s: None

    def next_get(self) -> bool:
        """Send the next GET (the first, or the next window); False at the end."""
        start = self._pos
        if self._end is not None and start >= self._end:
            return False
        stop = self._end
        if self._window:
            stop = start + self._window if stop is None else min(stop, start + self._window)
        unranged = start == 0 and stop is None
        first, parts, ttfb = self._storage._get(
            self._key,
            self._action,
            lambda: self._get_stream(None, None) if unranged else self._get_stream(start, stop),
            ranged=not unranged,
        )
        self.on_request(ttfb)
        if parts is None:
            self._parts = None
            return False
        self._parts = parts
        self._part = memoryview(first)
        self._window_left = (stop - start) if stop is not None else -1
        return True

    def _next_part(self) -> bool:
        """Move to the next part (sending the next window's GET when one is read out)."""
        while True:
            if self._parts is None:
                return False
            try:
                part = next(self._parts, None)
            except Exception as exc:  # noqa: BLE001 - the CRT raises S3Exception and others
                raise self._storage._fail(exc, self._key, "stream", request=False) from None
            if part is not None:
                self._part = memoryview(part)
                return True
            full = self._window and self._window_left == 0
            self._parts = None
            if not (full and self.next_get()):
                return False
            if self._part:
                return True

    def _consumed(self, nbytes: int) -> None:
        self._pos += nbytes
        self._window_left -= nbytes

    def close(self) -> None:
        """Drop the stream (the CRT cancels a GET not read to the end); idempotent."""
        super().close()
        self._parts = None
