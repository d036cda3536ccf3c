"""S3Storage: the :class:`~pipelines.storage.base.Storage` interface on S3-compatible storage.

Works with AWS S3 and stores that speak its protocol (MinIO, Samsung DSS, ``rclone serve
s3``). One boto3 client per process, created on first use, so the object pickles into
DataLoader workers and survives ``fork``. Credentials come from the standard AWS chain
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/credentials``,
instance roles) or the local server's env file, read when the client is created; they are
never parameters here and never appear in messages, ``repr`` or ``describe``.
"""

from __future__ import annotations

import collections
import copy
import io
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from common.errors import first_line
from pipelines.storage.base import (
    CallStats,
    MeteredStream,
    ObjectNotFound,
    PrefixNotFound,
    StorageError,
)
from pipelines.storage.env_file import read_env_file

MiB = 1024 * 1024

CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile (AWS_PROFILE, ~/.aws/credentials)"
)
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_BUSY = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "503",
    "InternalError",
    "500",
    "RequestTimeout",
}


class S3Storage:
    """Objects under ``s3://bucket/prefix/`` on AWS S3 or an S3-compatible endpoint.

    Retries are botocore's "standard" mode (``botocore/retries/standard.py``; boto3 guide:
    https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html): throttling (503
    SlowDown, Throttling), 5xx errors, connection errors and timeouts are retried, waiting
    ``rand(0, 1) * min(scale * 2**i, 20)`` seconds before retry ``i`` (0-based; ``scale`` 1 s for
    throttling, 0.05 s otherwise), until ``max_attempts`` or the client's retry quota (a token
    bucket that stops retrying while most recent attempts fail) runs out.

    Args:
        bucket: bucket name.
        prefix: key prefix inside the bucket (a "folder"; leading/trailing ``/`` ignored); keys
            are relative to it.
        endpoint_url: e.g. ``http://127.0.0.1:9000`` for MinIO / DSS / a local server; ``None``
            for AWS (or ``AWS_ENDPOINT_URL``, which boto3 reads itself).
        region: region name; ``None`` takes ``AWS_DEFAULT_REGION`` / the profile's region.
        addressing_style: ``"path"`` (``endpoint/bucket/key``: the safe choice for custom
            endpoints), ``"virtual"`` or ``"auto"``.
        max_pool_connections: HTTP connections kept per process (>= the threads reading).
        max_attempts: attempts per request, the first one included (botocore standard mode).
        connect_timeout_s: seconds to wait for a TCP connection.
        read_timeout_s: seconds to wait for the response headers or for each socket read.
        list_workers: threads listing sub-prefixes in parallel in :meth:`list` (1: one stream).
        credentials_file: an env file (``export AWS_ACCESS_KEY_ID=...``, as the local server
            writes it) whose keys sign the requests instead of the AWS chain; the keys are
            read in each process when its client is created and never kept on this object.

    Raises:
        ValueError: an empty bucket name or a setting out of range.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "path",
        max_pool_connections: int = 16,
        max_attempts: int = 5,
        connect_timeout_s: float = 5,
        read_timeout_s: float = 30,
        list_workers: int = 1,
        credentials_file: str | os.PathLike | None = None,
    ):
        if not bucket or "/" in bucket:
            raise ValueError(f"S3 bucket name {bucket!r} is empty or contains '/'")
        if addressing_style not in ("path", "virtual", "auto"):
            raise ValueError(f"addressing_style {addressing_style!r} is not path, virtual or auto")
        for name, value in (
            ("max_pool_connections", max_pool_connections),
            ("max_attempts", max_attempts),
            ("list_workers", list_workers),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be at least 1")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.region = region
        self.addressing_style = addressing_style
        self.max_pool_connections = max_pool_connections
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.list_workers = list_workers
        self.credentials_file = os.fspath(credentials_file) if credentials_file else None
        self._reset_process_state()

    def with_connections(self, max_pool_connections: int) -> S3Storage:
        """The same storage with another connection pool size (a client of its own).

        Raises:
            ValueError: ``max_pool_connections < 1``.
        """
        if max_pool_connections < 1:
            raise ValueError(f"{max_pool_connections=} must be at least 1")
        wider = copy.copy(self)
        wider.max_pool_connections = max_pool_connections
        wider._reset_process_state()
        return wider

    # -- per-process state: client, locks --------------------------------------------------------

    def _reset_process_state(self) -> None:
        """Forget the client (new object, unpickled copy, or forked child)."""
        self._pid = os.getpid()
        self._client = None
        self._session = None
        self._client_lock = threading.Lock()
        self._calls = threading.local()  # the retries of the GET this thread is sending

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_client", "_session", "_client_lock", "_calls", "_pid"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={safe_url(self.endpoint_url)!r}" if self.endpoint_url else ""
        return f"S3Storage({self.bucket!r}, {self.prefix!r}{endpoint})"

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's client and sockets are not ours
            self._reset_process_state()

    def client(self):
        """This process's boto3 S3 client, created on first use (thread-safe once created)."""
        self._check_process()
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
                client = self._client
        return client

    def connect(self) -> None:
        """Create this process's client now (no request is sent); see :meth:`client`."""
        self.client()

    def credentials_source(self) -> str:
        """Where this process's credentials come from, for the log (never the keys).

        One of ``local server (<env file>)``, ``environment``, ``profile <name>``, ``instance or
        container role``, ``unusable (<error>)``, botocore's name for another provider, or ``none
        found``.
        """
        if self.credentials_file:
            return f"local server ({self.credentials_file})"
        self.client()
        try:
            credentials = self._session.get_credentials()
        except Exception as exc:  # noqa: BLE001 - a broken profile: say so, do not fail here
            return f"unusable ({first_line(exc)})"
        if credentials is None:
            return "none found"
        method = credentials.method
        if method == "env":
            return "environment (AWS_ACCESS_KEY_ID)"
        if method in ("shared-credentials-file", "config-file", "custom-process", "sso"):
            return f"profile {self._session.profile_name or 'default'} ({method})"
        if method in ("iam-role", "container-role"):
            return f"instance or container role ({method})"
        return method

    def _make_client(self):
        config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            max_pool_connections=self.max_pool_connections,
            s3={"addressing_style": self.addressing_style},
            # boto3 >= 1.36 sends and checks CRC checksums by default; S3-compatible stores
            # (MinIO, DSS, rclone) may not support them: only when the operation requires it.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        keys = {}
        if self.credentials_file:
            try:
                values = read_env_file(self.credentials_file)
                keys = {
                    "aws_access_key_id": values["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": values["AWS_SECRET_ACCESS_KEY"],
                }
            except (StorageError, KeyError):
                raise StorageError(
                    f"{self.describe()}: cannot read the keys in {self.credentials_file}: start "
                    "the local server again (`make s3-up`)"
                ) from None
        try:
            session = boto3.session.Session(**keys)
            client = session.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
            self._session = session
        except botocore.exceptions.ProfileNotFound as exc:
            raise StorageError(
                f"{self.describe()}: AWS profile not found ({exc}): set AWS_PROFILE to a profile "
                "in ~/.aws/config or unset it"
            ) from None
        except (ValueError, botocore.exceptions.BotoCoreError) as exc:
            raise StorageError(
                f"{self.describe()}: cannot create the S3 client: {exc}: check the endpoint URL "
                "and region"
            ) from None
        client.meta.events.register("request-created.s3", self._on_request_created)
        return client

    def _on_request_created(self, request, **_kwargs) -> None:
        """botocore hook (per attempt, sending thread): count a GET's attempts after the first."""
        attempt = getattr(request, "context", {}).get("retries", {}).get("attempt", 1)
        if attempt > 1 and getattr(self._calls, "retries", None) is not None:
            self._calls.retries += 1

    # -- naming ----------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else key or self.prefix

    def _endpoint_for_messages(self) -> str:
        if self.endpoint_url:
            return safe_url(self.endpoint_url)
        client = self._client if self._pid == os.getpid() else None
        return safe_url(client.meta.endpoint_url) if client is not None else "AWS S3"

    def describe(self, key: str = "") -> str:
        """``s3://bucket/prefix/key``, plus `` (endpoint URL)`` for a custom endpoint.

        Never contains credentials (user:password in the endpoint URL is removed).
        """
        path = "/".join(p for p in (self.bucket, self._key(key)) if p)
        if self.endpoint_url:
            return f"s3://{path} (endpoint {safe_url(self.endpoint_url)})"
        return f"s3://{path}"

    def _where(self, key: str | None) -> str:
        """Bucket/key and the endpoint actually used, for error messages."""
        path = "/".join(p for p in (self.bucket, "" if key is None else self._key(key)) if p)
        return f"s3://{path} (endpoint {self._endpoint_for_messages()})"

    # -- errors ----------------------------------------------------------------------------------

    def _fail(
        self, exc: BaseException, key: str | None, action: str, *, mid_stream: bool = False
    ) -> StorageError:
        """A one-line :class:`StorageError` for ``exc`` (:class:`ObjectNotFound` for a missing key).

        Its ``stats`` hold one failed request of its kind. ``mid_stream``: the failure came while
        reading a response body (not retried; no request counted).
        """
        if mid_stream and isinstance(exc, botocore.exceptions.ReadTimeoutError):
            kind = "timeout"
            failed = StorageError(
                f"{self._where(key)}: cannot {action}: the transfer stalled (no data for "
                f"{self.read_timeout_s} s): check the server and the network, or raise "
                "read_timeout_s"
            )
        else:
            kind, message = self._explain(exc, key, action)
            failed = ObjectNotFound(message) if kind == "NoSuchKey" else StorageError(message)
        failed.stats = CallStats(requests=0 if mid_stream else 1, errors=((kind, 1),))
        return failed

    def _explain(self, exc: BaseException, key: str | None, action: str) -> tuple[str, str]:
        """The error kind and one-line message of a failed request on ``key`` (None: the bucket).

        The kind is an S3 code or a class of failure, as counted in the stats.
        """
        where = self._where(key)
        tries = f"after {self.max_attempts} attempt{'s' if self.max_attempts > 1 else ''}"
        if isinstance(exc, S3UploadFailedError):  # upload_file wraps the ClientError
            exc = exc.__cause__ or exc.__context__ or exc
        if isinstance(exc, botocore.exceptions.ClientError):
            return self._explain_client_error(exc, key, action, where, tries)
        return self._explain_other_error(exc, action, where, tries)

    def _explain_client_error(
        self,
        exc: botocore.exceptions.ClientError,
        key: str | None,
        action: str,
        where: str,
        tries: str,
    ) -> tuple[str, str]:
        """:meth:`_explain` for an error the server answered (its S3 code or HTTP status)."""
        error = exc.response.get("Error", {})
        code = str(
            error.get("Code")
            or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown")
        )
        text = error.get("Message") or ""
        if code == "NoSuchBucket":
            return code, (
                f"{where}: cannot {action}: bucket {self.bucket!r} does not exist: check the "
                "bucket name (S3_BUCKET) or create it"
            )
        if code in _MISSING:
            what = "object" if key is not None else "bucket"
            return "NoSuchKey" if key is not None else "NoSuchBucket", (
                f"{where}: cannot {action}: no such {what}: check the key and the prefix "
                "(was the object deleted or never uploaded?)"
            )
        if code in _DENIED:
            return code, (
                f"{where}: cannot {action}: access denied ({code}): {CREDENTIALS_HINT}, and "
                "that they may access this bucket"
            )
        if code in _BUSY:
            return code, (
                f"{where}: cannot {action}: the server is busy or failing ({code}) {tries}: "
                "retry later, lower the number of readers, or raise max_attempts"
            )
        detail = f"{code}: {first_line(text)}" if text else code
        return code, f"{where}: cannot {action}: S3 error {detail}"

    def _explain_other_error(
        self, exc: BaseException, action: str, where: str, tries: str
    ) -> tuple[str, str]:
        """:meth:`_explain` for a failure without a server answer.

        Credentials, timeout, connection, broken stream, invalid request, or anything else.
        """
        if isinstance(exc, botocore.exceptions.NoCredentialsError | _PartialCredentials):
            return "NoCredentials", (
                f"{where}: cannot {action}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / ~/.aws/credentials"
            )
        if isinstance(exc, botocore.exceptions.ReadTimeoutError):
            return "timeout", (
                f"{where}: cannot {action}: no response within {self.read_timeout_s} s {tries}: "
                "the server is overloaded or stalled; raise read_timeout_s or check the server"
            )
        if isinstance(exc, botocore.exceptions.ConnectionError):
            return "unreachable", (
                f"{where}: cannot {action}: endpoint unreachable {tries} ({first_line(exc)}): "
                "is the server running? check the endpoint URL (S3_ENDPOINT) and the network"
            )
        if isinstance(
            exc,
            botocore.exceptions.ResponseStreamingError
            | botocore.exceptions.IncompleteReadError
            | botocore.exceptions.ConnectionClosedError
            | OSError,
        ):
            return "stream", (
                f"{where}: cannot {action}: the connection broke mid-transfer "
                f"({first_line(exc)}): check the server and the network, then retry"
            )
        if isinstance(exc, botocore.exceptions.ParamValidationError):
            return "invalid", f"{where}: cannot {action}: invalid request: {first_line(exc)}"
        return type(exc).__name__, f"{where}: cannot {action}: {first_line(exc)}"

    # -- reads -----------------------------------------------------------------------------------

    def _get(self, key: str, action: str, **params) -> tuple[dict, CallStats] | None:
        """Send one GET.

        Returns:
            ``(response, figures)``: one request, its retries and its TTFB (seconds until the
            headers arrived, retries and backoff included); None for a Range starting at or past
            the end of the object (InvalidRange).

        Raises:
            StorageError: the GET failed (:class:`ObjectNotFound` for a missing object).
        """
        client = self.client()
        self._calls.retries = 0
        start = time.perf_counter()
        try:
            response = client.get_object(Bucket=self.bucket, Key=self._key(key), **params)
        except Exception as exc:
            retries, self._calls.retries = self._calls.retries, None
            if "Range" in params and _code(exc) in ("InvalidRange", "416"):
                return None
            failed = self._fail(exc, key, action)
            failed.stats += CallStats(retries=retries)
            raise failed from None
        retries, self._calls.retries = self._calls.retries, None
        ttfb = time.perf_counter() - start
        return response, CallStats(0, ttfb, 1, retries, (ttfb,))

    def read(self, key: str) -> bytes:
        """The whole object, in one GET.

        Raises:
            StorageError: missing object or bucket, credentials refused, endpoint unreachable or
                timing out after the retries, or the connection broke while reading the body.
        """
        return self.fetch(key)[0]

    def fetch(self, key: str) -> tuple[bytes, CallStats]:
        """The whole object in one GET, with the figures of that read.

        Raises:
            StorageError: as :meth:`read`.
        """
        response, opened = self._get(key, "read")
        return self._read_body(response, opened, key, "read")

    def open(self, key: str) -> MeteredStream:
        """Stream the object front to back (one GET; memory bounded by the ``read(n)`` sizes).

        Returns:
            A stream whose ``stats()`` gives its figures.

        Raises:
            StorageError: as :meth:`read`; errors while reading the stream are StorageError too.
        """
        response, opened = self._get(key, "open")
        return MeteredStream(S3Stream(self, key, response["Body"]), opened)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from byte offset ``start`` in one ranged GET (fewer at the end).

        Returns ``b""`` for ``length <= 0`` or a ``start`` at or past the end of the object.

        Raises:
            StorageError: as :meth:`read`.
            ValueError: ``start`` is negative.
        """
        return self.fetch_range(key, start, length)[0]

    def fetch_range(self, key: str, start: int, length: int) -> tuple[bytes, CallStats]:
        """:meth:`read_range` with the figures of that read (no request for ``length <= 0``).

        Raises:
            StorageError: as :meth:`read`.
            ValueError: ``start`` is negative.
        """
        if start < 0:
            raise ValueError(f"{start=} must not be negative")
        if length <= 0:
            return b"", CallStats()
        began = time.perf_counter()
        got = self._get(key, "read a range of", Range=f"bytes={start}-{start + length - 1}")
        if got is None:  # start at or past the end: like reading a file there
            return b"", CallStats(0, time.perf_counter() - began, 1)
        return self._read_body(*got, key, "read a range of")

    def _read_body(
        self, response: dict, opened: CallStats, key: str, action: str
    ) -> tuple[bytes, CallStats]:
        """The whole body of a GET response, with the GET's figures.

        Raises:
            StorageError: the transfer broke.
        """
        body = response["Body"]
        start = time.perf_counter()
        try:
            data = body.read()
        except Exception as exc:
            raise self._fail(exc, key, action, mid_stream=True) from None
        finally:
            body.close()
        return data, opened + CallStats(len(data), time.perf_counter() - start)

    def _head(self, key: str) -> dict:
        try:
            return self.client().head_object(Bucket=self.bucket, Key=self._key(key))
        except StorageError:
            raise
        except Exception as exc:
            if _code(exc) in _MISSING and not self._bucket_exists():
                exc = _no_such_bucket()
            raise self._fail(exc, key, "look up") from None

    def size(self, key: str) -> int:
        """Size of the object in bytes (one HEAD).

        Raises:
            StorageError: missing object or bucket, credentials refused, endpoint unreachable.
        """
        return int(self._head(key)["ContentLength"])

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key`` (one HEAD; a missing bucket raises).

        Raises:
            StorageError: missing bucket, credentials refused, endpoint unreachable.
        """
        try:
            self.client().head_object(Bucket=self.bucket, Key=self._key(key))
        except StorageError:
            raise
        except Exception as exc:
            if _code(exc) in _MISSING:
                if self._bucket_exists():
                    return False
                exc = _no_such_bucket()
            raise self._fail(exc, key, "look up") from None
        return True

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Size and ETag of each object that exists, from listings of their folders.

        Each folder of the keys (``a/b`` for ``a/b/c.jpg``) is listed once, its own objects only
        (``Delimiter="/"``): one request per 1000 objects instead of a HEAD per key. Objects not
        found are left out.

        Raises:
            StorageError: a listing fails (missing bucket, credentials refused, endpoint
                unreachable), with the folder named.
        """
        wanted: dict[str, set[str]] = collections.defaultdict(set)
        for key in keys:
            wanted[key.rpartition("/")[0]].add(key)
        cut = len(self.prefix) + 1 if self.prefix else 0
        found = {}
        for folder, names in sorted(wanted.items()):
            base = self._key(folder)
            base = f"{base}/" if base else ""
            for page in self._pages(base, delimiter="/"):
                for item in page.get("Contents", ()):
                    key = item["Key"][cut:]
                    if key in names:
                        found[key] = (int(item["Size"]), str(item.get("ETag", "")).strip('"'))
        return found

    def _bucket_exists(self) -> bool:
        """HEAD the bucket (to tell a missing bucket from a missing key after a 404)."""
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _code(exc) in _MISSING | {"NoSuchBucket"}:
                return False
        return True

    # -- listing ---------------------------------------------------------------------------------

    def list(self, prefix: str = "", *, allow_empty: bool = False) -> Iterator[str]:
        """Yield the keys under ``prefix`` (a folder: ``"a"`` lists ``a/...``, not ``ab``), sorted.

        Keys are relative to the storage prefix. Pages of 1000 keys (``list_objects_v2``) are
        fetched as the caller iterates, nothing buffered with ``list_workers=1``; with more, the
        immediate sub-prefixes (``Delimiter="/"``) are listed in parallel threads, each buffered
        whole, and yielded in order. An object store cannot tell a missing prefix from an empty one.

        Raises:
            PrefixNotFound: nothing under the prefix (unless ``allow_empty``).
            StorageError: missing bucket, credentials refused, endpoint unreachable, also for a
                page after the first (after the retries).
        """
        base = self._key(prefix.strip("/"))
        base = f"{base}/" if base else ""
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = self._list_parallel(base) if self.list_workers > 1 else self._list_pages(base)
        empty = True
        for key in keys:
            empty = False
            yield key[cut:]
        if empty and not allow_empty:
            raise PrefixNotFound(
                f"s3://{self.bucket}/{base} (endpoint {self._endpoint_for_messages()}): no "
                "objects under this prefix: check the bucket and prefix, or upload the dataset"
            )

    def _pages(self, base: str, delimiter: str | None = None) -> Iterator[dict]:
        params = {"Bucket": self.bucket, "Prefix": base}
        if delimiter:
            params["Delimiter"] = delimiter
        try:
            yield from self.client().get_paginator("list_objects_v2").paginate(**params)
        except StorageError:
            raise
        except Exception as exc:
            relative = base[len(self.prefix) + 1 :] if self.prefix else base
            raise self._fail(exc, relative, "list") from None

    def _list_pages(self, base: str) -> Iterator[str]:
        for page in self._pages(base):
            for item in page.get("Contents", ()):
                yield item["Key"]

    def _list_parallel(self, base: str) -> Iterator[str]:
        entries: list[tuple[str, bool]] = []  # (key or sub-prefix, is_prefix)
        for page in self._pages(base, delimiter="/"):
            entries += [(item["Key"], False) for item in page.get("Contents", ())]
            entries += [(item["Prefix"], True) for item in page.get("CommonPrefixes", ())]
        entries.sort()
        # All keys under a sub-prefix are contiguous in lexicographic order: list each prefix
        # whole in a thread, keep at most `workers` in flight (memory: at most that many
        # sub-prefixes' keys at once), yield in order.
        pending: collections.deque = collections.deque()
        with ThreadPoolExecutor(self.list_workers, thread_name_prefix="s3-list") as pool:
            try:
                position = 0
                while position < len(entries) or pending:
                    while position < len(entries) and len(pending) < self.list_workers:
                        name, is_prefix = entries[position]
                        position += 1
                        pending.append(pool.submit(self._list_all, name) if is_prefix else name)
                    head = pending.popleft()
                    if isinstance(head, str):
                        yield head
                    else:
                        yield from head.result()
            finally:  # the caller stopped early or a listing failed: drop what has not started
                for item in pending:
                    if not isinstance(item, str):
                        item.cancel()

    def _list_all(self, base: str) -> list[str]:
        return list(self._list_pages(base))

    # -- writes ----------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` with one PUT (atomic: readers see the old or the new object).

        Raises:
            StorageError: missing bucket, credentials refused, endpoint unreachable.
        """
        try:
            self.client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, key, "write") from None

    def delete(self, key: str) -> None:
        """Remove the object (one DELETE; a missing one is fine, as S3 itself answers).

        Raises:
            StorageError: missing bucket, credentials refused, endpoint unreachable.
        """
        try:
            self.client().delete_object(Bucket=self.bucket, Key=self._key(key))
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, key, "delete") from None

    def put_file(
        self,
        key: str,
        path: str | os.PathLike,
        *,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_concurrency: int = 4,
    ) -> None:
        """Upload a local file to ``key``; the local file is left in place (a copy, not a move).

        Files of ``multipart_threshold`` bytes or more go as a multipart upload of
        ``multipart_chunksize``-byte parts, ``max_concurrency`` parts at a time (boto3
        ``TransferConfig``). Either way the object appears whole, on success only.

        Raises:
            StorageError: the local file cannot be read, missing bucket, credentials refused,
                endpoint unreachable.
        """
        config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
        )
        try:
            self.client().upload_file(os.fspath(path), self.bucket, self._key(key), Config=config)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(
                f"cannot upload {path} to {self._where(key)}: {exc.strerror or exc}"
            ) from None
        except Exception as exc:
            raise self._fail(exc, key, f"upload {path} to") from None

    def upload_stream(
        self, key: str, stream: BinaryIO, *, part_size: int = 16 * MiB, concurrency: int = 4
    ) -> None:
        """Store what ``stream`` yields, read front to back (it need not seek), as one object.

        A multipart upload of ``part_size``-byte parts, ``concurrency`` in flight (boto3's
        ``upload_fileobj``; one PUT below ``part_size``). The object appears whole, on success only:
        when an upload request or ``stream.read`` fails, the multipart upload is aborted.

        Raises:
            StorageError: missing bucket, credentials refused, endpoint unreachable, or the
                stream failed (its error is the cause).
        """
        config = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=concurrency,
        )
        try:
            self.client().upload_fileobj(stream, self.bucket, self._key(key), Config=config)
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, key, "upload to") from exc

    def download_stream(
        self, key: str, sink: BinaryIO, *, part_size: int = 16 * MiB, concurrency: int = 4
    ) -> None:
        """Write the object into ``sink`` in ranged GETs of ``part_size`` bytes.

        ``sink`` must be a seekable binary file (ranges arrive out of order); ``concurrency`` GETs
        are in flight (boto3's ``download_fileobj``: one HEAD, then the GETs).

        Raises:
            StorageError: missing object or bucket, credentials refused, endpoint unreachable,
                or a transfer broke.
        """
        config = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=concurrency,
        )
        try:
            self.client().download_fileobj(self.bucket, self._key(key), sink, Config=config)
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, key, "download") from None


class S3Stream(io.RawIOBase):
    """A GET's body as a read-only binary stream; errors while reading are StorageError.

    Memory is bounded by the sizes passed to :meth:`read`; ``read()`` / ``read(-1)`` reads the
    rest of the object at once.
    """

    def __init__(self, storage: S3Storage, key: str, body):
        super().__init__()
        self._storage = storage
        self._key = key
        self._body = body

    def readable(self) -> bool:
        """Always True."""
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (the rest when ``n < 0``); ``b""`` at the end.

        Raises:
            StorageError: the connection broke or timed out mid-stream.
        """
        if self.closed:
            raise ValueError("read from a closed S3Stream")
        try:
            return self._body.read(None if n is None or n < 0 else n)
        except Exception as exc:
            raise self._storage._fail(exc, self._key, "stream", mid_stream=True) from None

    def readall(self) -> bytes:
        """The rest of the object."""
        return self.read(-1)

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` with up to ``len(buffer)`` bytes; the number read (0 at the end)."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Release the connection (unread bytes are discarded)."""
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


_PartialCredentials = botocore.exceptions.PartialCredentialsError


def _code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (or its HTTP status), else ``""``."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        return str(error.get("Code") or status)
    return ""


def _no_such_bucket() -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"}},
        "HeadBucket",
    )


def safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
