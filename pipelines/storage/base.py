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


class StorageError(Exception):
    """A read or write failed for a reason the user can act on; the message names the key."""


class ObjectNotFound(StorageError):
    """The object (file) does not exist; other failures (credentials, network) are not this."""


class PrefixNotFound(ObjectNotFound):
    """Nothing is stored under a prefix (a missing directory, an S3 prefix without objects);
    a listing that fails or is refused is a plain :class:`StorageError`, never this."""


@dataclass
class RequestStats:
    """Storage requests made by one process since the last :meth:`Storage.take_stats`.

    Attributes:
        requests: read requests sent (S3: GET; filesystem: one ``open`` per read).
        retries: requests retried after a transient failure (throttling, connection errors).
        errors: failed requests by kind (e.g. ``{"NoSuchKey": 1, "timeout": 2}``).
        ttfb_s: time to first byte of each request in seconds (S3: until the response headers
            arrived; filesystem: until ``open`` returned).
    """

    requests: int = 0
    retries: int = 0
    errors: Counter = field(default_factory=Counter)
    ttfb_s: list[float] = field(default_factory=list)

    def merge(self, other: RequestStats) -> None:
        """Add ``other``'s counts into this one."""
        if not (other.requests or other.retries or other.errors or other.ttfb_s):
            return  # the usual case for a batch of shard samples: skip the Counter update
        self.requests += other.requests
        self.retries += other.retries
        self.errors.update(other.errors)
        self.ttfb_s.extend(other.ttfb_s)


class Storage(Protocol):
    """What the data path needs from a storage back end.

    Implementations must be picklable (DataLoader workers receive a copy) and open any
    connection lazily, once per process.
    """

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key under ``prefix`` in lexicographic order. A prefix with nothing
        under it raises :class:`PrefixNotFound` (or yields nothing); a listing that fails,
        also part-way, raises :class:`StorageError` naming the prefix and the cause."""
        ...

    def size(self, key: str) -> int:
        """Size of the object in bytes. Raises :class:`StorageError` when missing."""
        ...

    def read(self, key: str) -> bytes:
        """Read a whole object. Raises :class:`StorageError` when missing or unreadable."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open an object for streaming, front to back, with bounded memory."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes from byte offset ``start`` (fewer at the end of the object)."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""
        ...

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """``{key: (size in bytes, version)}`` for those of ``keys`` that exist; the version is
        a token that changes when the object is rewritten (filesystem: modification time in
        ns; S3: the ETag). Missing keys are left out. Raises :class:`StorageError` when the
        storage cannot be read."""
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

    def take_stats(self) -> RequestStats:
        """The requests this process made since the last call, and start counting afresh."""
        ...

    def connect(self) -> None:
        """Set up this process's client now (S3: create it; no request is sent), so that the
        timing of the first read measures the request, not the set-up. Reads connect anyway."""
        ...


def relative_keys(storage: Storage, prefix: str) -> Iterator[str]:
    """The keys under ``prefix``, relative to it (``a/b.jpg`` for ``<prefix>/a/b.jpg``), in
    listing order, fetched as the caller iterates.

    A prefix with nothing under it (a missing folder, an S3 prefix without objects) yields
    nothing: the dataset readers and format detection then report what they did not find.
    A listing that fails or is refused, also after some keys (a later page failing after the
    retries), raises: a dataset read from part of a listing would be silently smaller.

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
    """Wrap a binary stream and count the bytes and seconds spent in its ``read`` calls, and the
    CRC-32 of the bytes read.

    ``nbytes`` (bytes) and ``read_s`` (seconds, ``time.perf_counter``) only grow; callers take
    differences to attribute reads to samples. With ``checksum``, ``crc32`` is ``zlib.crc32``
    of every byte read so far (~0.4 ms of CPU per MB here), so a whole stream can be checked
    against a recorded checksum without a second read; without, it stays None.
    """

    def __init__(self, stream: BinaryIO, *, checksum: bool = False):
        self.stream = stream
        self.nbytes = 0
        self.read_s = 0.0
        self.crc32 = 0 if checksum else None

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all when ``n < 0``) from the wrapped stream."""
        start = time.perf_counter()
        data = self.stream.read(n)
        self.read_s += time.perf_counter() - start
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
