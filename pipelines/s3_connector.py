"""S3 through AWS's s3torchconnector (the AWS CRT client), behind the same Storage interface.

``storage.client_lib: s3torchconnector`` selects it instead of boto3, as the original DSS tool
let users choose between boto3 and its own C++ client. Only the public API of
s3torchconnector 1.5 is used: ``S3Checkpoint.reader`` / ``writer`` for object I/O and
``S3IterableDataset.from_prefix`` for listing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import BinaryIO

from pipelines.storage import ObjectNotFound, RequestStats, StorageError


class S3ConnectorStorage:
    """Objects under ``s3://bucket/`` read with s3torchconnector (CRT).

    Args:
        bucket: bucket name.
        endpoint_url: custom endpoint (MinIO, DSS, a local server); ``None`` for AWS.
        region: region; the CRT client needs one (default ``AWS_DEFAULT_REGION`` or us-east-1).
        addressing_style: ``path`` forces path-style requests (custom endpoints).
        max_attempts: attempts per request (the CRT client's own retry strategy).

    Stats: one request per ``read`` / ``open`` / ``read_range``; ``ttfb_s`` is measured until
    the first byte of the body was returned. Retries happen inside the CRT client and cannot be
    counted (``retries`` stays 0).

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
        self._checkpoint = None
        self._pid = None
        self._stats = RequestStats()

    def __getstate__(self) -> dict:
        # the CRT client is per process: a copy builds its own, and counts from zero
        return {**self.__dict__, "_checkpoint": None, "_pid": None, "_stats": RequestStats()}

    def __repr__(self) -> str:
        return f"S3ConnectorStorage({self.describe()!r})"

    def _config(self):
        from s3torchconnector import S3ClientConfig

        return S3ClientConfig(
            force_path_style=self.force_path_style, max_attempts=self.max_attempts
        )

    def _client(self):
        if self._checkpoint is None or self._pid != os.getpid():
            from s3torchconnector import S3Checkpoint

            self._checkpoint = S3Checkpoint(
                self.region, endpoint=self.endpoint_url, s3client_config=self._config()
            )
            self._pid = os.getpid()
        return self._checkpoint

    def connect(self) -> None:
        """Create this process's s3torchconnector client now (no request is sent)."""
        self._client()

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def describe(self, key: str = "") -> str:
        """``s3://bucket/key (endpoint URL, s3torchconnector)``; never credentials."""
        endpoint = self.endpoint_url or f"AWS {self.region}"
        return f"{self._uri(key)} ({endpoint}, s3torchconnector)"

    def _fail(self, exc: Exception, key: str, action: str) -> StorageError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        lowered = text.lower()
        missing = any(m in lowered for m in ("nosuchkey", "not found", "does not exist", "404"))
        kind = "NoSuchKey" if missing else type(exc).__name__
        self._stats.errors[kind] += 1
        hint = (
            "check the key and the prefix"
            if missing
            else "check the endpoint, the bucket and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
        error = ObjectNotFound if missing else StorageError
        return error(f"{self.describe(key)}: cannot {action}: {text}; {hint}")

    def open(self, key: str) -> BinaryIO:
        """A streaming reader (one GET, read front to back)."""
        self._stats.requests += 1
        start = time.perf_counter()
        try:
            reader = self._client().reader(self._uri(key))
            first = reader.read(1)
        except Exception as exc:  # noqa: BLE001 - the CRT raises S3Exception and others
            raise self._fail(exc, key, "read") from None
        self._stats.ttfb_s.append(time.perf_counter() - start)
        return _Prefixed(first, reader, self, key)

    def read(self, key: str) -> bytes:
        """The whole object."""
        with self.open(key) as f:
            return f.read()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (fewer at the end of the object)."""
        self._stats.requests += 1
        began = time.perf_counter()
        try:
            reader = self._client().reader(self._uri(key))
            reader.seek(start)
            data = reader.read(length)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "read a range of") from None
        self._stats.ttfb_s.append(time.perf_counter() - began)
        return data

    def size(self, key: str) -> int:
        """Size in bytes."""
        try:
            reader = self._client().reader(self._uri(key))
            return reader.seek(0, os.SEEK_END)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "stat") from None

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a folder), in listing order."""
        from s3torchconnector import S3IterableDataset

        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        try:
            dataset = S3IterableDataset.from_prefix(
                self._uri(base),
                region=self.region,
                endpoint=self.endpoint_url,
                transform=lambda reader: reader.key,
                s3client_config=self._config(),
            )
            yield from dataset
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, base, "list") from None

    def write(self, key: str, data: bytes) -> None:
        """One PUT of ``data`` (atomic: the object appears whole)."""
        try:
            with self._client().writer(self._uri(key)) as writer:
                writer.write(data)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "write") from None

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a local file (read whole; fine for shards of tens of MB)."""
        with open(path, "rb") as f:
            self.write(key, f.read())

    def take_stats(self) -> RequestStats:
        """Requests since the last call."""
        stats, self._stats = self._stats, RequestStats()
        return stats


class _Prefixed:
    """A reader whose first byte was already read (to time the first byte)."""

    def __init__(self, first: bytes, reader, storage: S3ConnectorStorage, key: str):
        self._first = first
        self._reader = reader
        self._storage = storage
        self._key = key

    def read(self, n: int = -1) -> bytes:
        head, self._first = self._first, b""
        if n is not None and 0 <= n <= len(head):
            self._first = head[n:]
            return head[:n]
        try:
            rest = self._reader.read(-1 if n is None or n < 0 else n - len(head))
        except Exception as exc:  # noqa: BLE001
            raise self._storage._fail(exc, self._key, "read") from None
        return head + rest

    def close(self) -> None:
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
