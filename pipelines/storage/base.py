"""Storage: the one interface through which every byte of the dataset is read.

Datasets and pipelines only ever hold a :class:`Storage`; they do not know whether it is a
directory or an object store. Keys are ``/``-separated paths relative to the storage root
(a directory here; a bucket + prefix for S3).
"""

from __future__ import annotations

import os
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from common.errors import UserError


class StorageError(UserError):
    """A read or write failed for a reason the user can act on; the message names the key.

    Attributes:
        stats: the figures of the call that failed (its requests and the error's kind in
            ``errors``), where the storage made them; None otherwise.
    """

    stats: CallStats | None = None


class ObjectNotFound(StorageError):
    """The object (file) does not exist; other failures (credentials, network) are not this."""


class PrefixNotFound(ObjectNotFound):
    """Nothing is stored under a prefix (a missing directory, an S3 prefix without objects).

    A listing that fails or is refused raises a plain :class:`StorageError`, never this.
    """


@dataclass(frozen=True)
class CallStats:
    """Immutable figures of one storage call: a whole or ranged read, or a stream so far.

    Made by the call itself; callers sum them, nothing is ever reset.

    Attributes:
        nbytes: bytes the call returned.
        seconds: wall time spent inside the call (for a stream: its open and its reads).
        requests: requests sent (S3: GETs, one per window of a windowed stream; filesystem: one
            ``open``).
        retries: attempts retried after a transient failure (boto3; the CRT and s3dlio do not
            say).
        ttfb_s: time to first byte of each request, seconds (S3: until the response headers
            or the first part arrived, retries and backoff included; filesystem: ``open``;
            s3dlio does not expose it: empty).
        errors: failed requests by kind, ``((kind, count), ...)`` (on the
            :class:`StorageError` of a call that failed).
    """

    nbytes: int = 0
    seconds: float = 0.0
    requests: int = 0
    retries: int = 0
    ttfb_s: tuple[float, ...] = ()
    errors: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: CallStats) -> CallStats:
        errors = Counter(dict(self.errors))
        errors.update(dict(other.errors))
        return CallStats(
            self.nbytes + other.nbytes,
            self.seconds + other.seconds,
            self.requests + other.requests,
            self.retries + other.retries,
            self.ttfb_s + other.ttfb_s,
            tuple(sorted(errors.items())),
        )

    def since(self, before: CallStats) -> CallStats:
        """This figure minus ``before``, an earlier one of this stream (TTFBs: those after its)."""
        errors = Counter(dict(self.errors))
        errors.subtract(dict(before.errors))
        return CallStats(
            self.nbytes - before.nbytes,
            self.seconds - before.seconds,
            self.requests - before.requests,
            self.retries - before.retries,
            self.ttfb_s[len(before.ttfb_s) :],
            tuple(sorted((k, n) for k, n in errors.items() if n)),
        )


@dataclass
class RequestStats:
    """The requests of many storage calls, summed (a batch, an epoch, a pass).

    Attributes:
        requests: read requests sent (S3: GET; filesystem: one ``open`` per read).
        retries: requests retried after transient failures (throttling, connection errors).
        errors: failed requests by kind (e.g. ``{"NoSuchKey": 1, "timeout": 2}``).
        ttfb_s: time to first byte of each request in seconds.
    """

    requests: int = 0
    retries: int = 0
    errors: Counter = field(default_factory=Counter)
    ttfb_s: list[float] = field(default_factory=list)

    def add(self, call: CallStats | None) -> None:
        """Add one call's requests (None: a sample that made none)."""
        if call is None or not (call.requests or call.retries or call.errors):
            return
        self.requests += call.requests
        self.retries += call.retries
        self.errors.update(dict(call.errors))
        self.ttfb_s.extend(call.ttfb_s)

    def merge(self, other: RequestStats) -> None:
        """Add ``other``'s counts into this one."""
        if not (other.requests or other.retries or other.errors or other.ttfb_s):
            return  # the usual case for a batch of shard samples: skip the Counter update
        self.requests += other.requests
        self.retries += other.retries
        self.errors.update(other.errors)
        self.ttfb_s.extend(other.ttfb_s)


class MeteredStream:
    """A storage's stream of one object that keeps its own figures (:meth:`stats`).

    They are the requests of its open (``opened``) and any it sends while reading
    (:meth:`count_request`: a windowed S3 stream), and the bytes and seconds of its reads.

    Args:
        raw: the binary stream (``read``, ``close``).
        opened: the figures of opening it (its request, TTFB, retries, seconds).
    """

    def __init__(self, raw, opened: CallStats):
        self.raw = raw
        self._opened = opened
        self._nbytes = 0
        self._read_s = 0.0
        self._requests = 0
        self._ttfb: list[float] = []
        #: whether :meth:`close` was called
        self.closed = False

    def count_request(self, ttfb_s: float | None) -> None:
        """Count a request the stream sent, with its time to first byte (None: not measured)."""
        self._requests += 1
        if ttfb_s is not None:
            self._ttfb.append(ttfb_s)

    def add_open_seconds(self, seconds: float) -> None:
        """Count ``seconds`` spent opening (when the stream sent its first request itself)."""
        self._read_s += seconds

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (the rest when ``n < 0``), timed; ``b""`` at the end."""
        start = time.perf_counter()
        data = self.raw.read(n)
        self._read_s += time.perf_counter() - start
        self._nbytes += len(data)
        return data

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` with up to ``len(buffer)`` bytes; the number read (0 at the end)."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def stats(self) -> CallStats:
        """The stream's figures so far: its open, the requests sent since, its reads."""
        return self._opened + CallStats(
            self._nbytes, self._read_s, self._requests, 0, tuple(self._ttfb)
        )

    def fileno(self) -> int:
        """The file descriptor of a file's stream (OSError for others)."""
        return self.raw.fileno()

    def close(self) -> None:
        """Close the stream."""
        self.raw.close()
        self.closed = True

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PartReader:
    """A binary stream read front to back from parts a subclass fetches one at a time.

    Subclasses set ``_part`` (a memoryview of the part being read) and implement
    :meth:`_next_part`; :meth:`_consumed` hears how many bytes each read took. A part is
    dropped once read, so memory holds one part, whatever the object's size.
    """

    _part: memoryview = memoryview(b"")
    _closed: bool = False

    def _next_part(self) -> bool:
        """Fetch the next part into ``_part``; False at the end."""
        raise NotImplementedError

    def _consumed(self, nbytes: int) -> None:
        """``nbytes`` of the current part were read (the position moves on)."""

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (the rest when ``n`` is None or negative); ``b""`` at the end.

        Raises:
            StorageError: fetching a part failed.
            ValueError: the stream is closed.
        """
        if self._closed:
            raise ValueError(f"read from a closed {type(self).__name__}")
        want = None if n is None or n < 0 else n
        pieces, have = [], 0
        while want is None or have < want:
            if not self._part and not self._next_part():
                break
            take = len(self._part) if want is None else min(want - have, len(self._part))
            pieces.append(self._part[:take])
            self._part = self._part[take:]
            self._consumed(take)
            have += take
        return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        """Drop the part held; idempotent."""
        self._closed = True
        self._part = memoryview(b"")

    def __enter__(self) -> PartReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Storage(Protocol):
    """What the data path needs from a storage back end.

    Implementations must be picklable (DataLoader workers receive a copy) and open any
    connection lazily, once per process.
    """

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key under ``prefix`` in lexicographic order.

        Raises:
            PrefixNotFound: nothing is under the prefix (or the implementation yields nothing).
            StorageError: the listing fails, also part-way (the message names the prefix and cause).
        """
        ...

    def size(self, key: str) -> int:
        """Size of the object in bytes. Raises :class:`StorageError` when missing."""
        ...

    def read(self, key: str) -> bytes:
        """Read a whole object. Raises :class:`StorageError` when missing or unreadable."""
        ...

    def fetch(self, key: str) -> tuple[bytes, CallStats]:
        """Read a whole object with that read's :class:`CallStats`; errors as :meth:`read`."""
        ...

    def open(self, key: str) -> MeteredStream:
        """Open an object to stream front to back in bounded memory (figures: its ``stats()``)."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes from byte offset ``start`` (fewer at the end of the object)."""
        ...

    def fetch_range(self, key: str, start: int, length: int) -> tuple[bytes, CallStats]:
        """:meth:`read_range` with the figures of that read."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""
        ...

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """``{key: (size in bytes, version)}`` for those of ``keys`` that exist (others left out).

        The version is a token that changes when the object is rewritten (filesystem: modification
        time in ns; S3: the ETag).

        Raises:
            StorageError: the storage cannot be read.
        """
        ...

    def write(self, key: str, data: bytes) -> None:
        """Write an object atomically: readers see the old object, or the whole new one."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object at ``key``; a missing one is not an error."""
        ...

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Store a local file at ``key`` atomically (the local file may be moved)."""
        ...

    def describe(self, key: str = "") -> str:
        """Where ``key`` lives, for messages: a path or URI. Never contains credentials."""
        ...

    def connect(self) -> None:
        """Set up this process's client now (S3: create it; no request is sent).

        The first read's timing then measures the request, not the set-up; reads connect anyway.
        """
        ...


def client_error(
    exc: Exception, where: str, action: str, missing: Sequence[str], *, request: bool = True
) -> StorageError:
    """A one-line :class:`StorageError` for a client library's failed call (CRT, s3dlio).

    Args:
        exc: what the library raised; its first line is kept.
        where: the object, as the storage describes it (never credentials).
        action: what was being done (``read``, ``list``...).
        missing: lower-case texts by which the library says that an object or bucket is missing
            (:class:`ObjectNotFound` then).
        request: whether a request was sent (counted in the error's ``stats``).
    """
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    is_missing = any(m in text.lower() for m in missing)
    kind = "NoSuchKey" if is_missing else type(exc).__name__
    hint = (
        "check the key and the prefix"
        if is_missing
        else "check the endpoint, the bucket and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
    error = ObjectNotFound if is_missing else StorageError
    failed = error(f"{where}: cannot {action}: {text}; {hint}")
    failed.stats = CallStats(requests=int(request), errors=((kind, 1),))
    return failed


def worker_context(storage: Storage) -> str | None:
    """The start method for DataLoader workers reading ``storage``.

    ``forkserver`` for a storage whose client does not survive ``fork`` (``fork_safe = False``:
    s3dlio), None (the platform's default) for the others.
    """
    return None if getattr(storage, "fork_safe", True) else "forkserver"


def relative_keys(storage: Storage, prefix: str) -> Iterator[str]:
    """Yield the keys under ``prefix`` relative to it (``a/b.jpg`` for ``<prefix>/a/b.jpg``).

    Keys come in listing order, fetched as the caller iterates. A prefix with nothing under it
    (a missing folder, an S3 prefix without objects) yields nothing, so that the dataset readers
    report what they did not find; a listing that fails, also after some keys, raises, since a
    dataset read from part of a listing would be silently smaller.

    Raises:
        pipelines.storage.base.StorageError: the listing failed (the message names the storage,
            the prefix and the cause: endpoint and bucket for S3).
    """
    base = prefix.strip("/")
    skip = len(base) + 1 if base else 0
    try:
        for key in storage.list(base):
            yield key[skip:]
    except PrefixNotFound:
        return


class CountingReader:
    """Wrap a binary stream and count the bytes read through it, and their CRC-32.

    ``nbytes`` only grows; callers take differences to attribute reads to samples. With
    ``checksum``, ``crc32`` is ``zlib.crc32`` of every byte read so far, so a whole stream can be
    checked against a recorded checksum without a second read; without, it stays None.
    """

    def __init__(self, stream: BinaryIO, *, checksum: bool = False):
        self.stream = stream
        self.nbytes = 0
        self.crc32 = 0 if checksum else None

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all when ``n < 0``) from the wrapped stream."""
        data = self.stream.read(n)
        self.nbytes += len(data)
        if self.crc32 is not None:
            self.crc32 = zlib.crc32(data, self.crc32)
        return data

    def close(self) -> None:
        """Close the wrapped stream."""
        self.stream.close()


def join_key(root: str, key: str) -> str:
    """``root/key``, or ``key`` when the dataset sits at the storage root (``root=""``)."""
    return f"{root.strip('/')}/{key}" if root.strip("/") else key
