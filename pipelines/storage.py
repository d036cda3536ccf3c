"""Storage: the one interface through which every byte of the dataset is read.

Datasets and pipelines only ever hold a :class:`Storage`; they do not know whether it is a
directory or an object store. Keys are ``/``-separated paths relative to the storage root
(a directory here; a bucket + prefix for S3).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


#: Bytes at the start of a file that :meth:`FileSystemStorage.open` asks the kernel to read
#: ahead: a whole shard at this tool's sizes (``dataset.shard_size_mb``, 1 MB by default), and
#: of a larger one (WebDataset suggests 100 MB-1 GB) enough to keep the device busy until the
#: kernel's sequential read-ahead takes over. Page cache, not process memory (RSS).
READ_AHEAD_BYTES = 16 * 2**20


class FileSystemStorage:
    """A directory on a local or network filesystem (NFS, Lustre, a mounted volume).

    Args:
        root: the directory that keys are relative to.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._stats = RequestStats()
        self._stats_lock = threading.Lock()  # the objects pattern reads from threads

    def __repr__(self) -> str:
        return f"FileSystemStorage({str(self.root)!r})"

    def __getstate__(self) -> dict:
        # a copy sent to a DataLoader worker starts counting its own requests from zero
        state = self.__dict__.copy()
        state.pop("_stats_lock")
        return {**state, "_stats": RequestStats()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._stats_lock = threading.Lock()

    def _count_error(self, exc: OSError) -> None:
        with self._stats_lock:
            self._stats.errors[type(exc).__name__] += 1

    def _path(self, key: str) -> Path:
        return self.root / key

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys of all regular files under ``prefix``, sorted.

        Raises:
            PrefixNotFound: the prefix is not a directory under the root.
            StorageError: a directory under it cannot be read (permissions, I/O error): a
                listing that skipped it would be a silently smaller dataset.
        """
        base = self._path(prefix)
        if not base.is_dir():
            raise PrefixNotFound(f"{base} is not a directory: check the dataset root in the config")

        def fail(exc: OSError) -> None:
            raise StorageError(f"cannot list {exc.filename}: {exc.strerror}") from exc

        for dirpath, dirnames, filenames in os.walk(base, onerror=fail):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                yield name if rel == "." else f"{rel}/{name}"

    def size(self, key: str) -> int:
        """Size of the file in bytes."""
        try:
            return self._path(key).stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot stat {self._path(key)}: {exc.strerror}") from exc

    def read(self, key: str) -> bytes:
        """Read the whole file: one ``open`` + ``read`` call."""
        with self._open(key) as f:
            try:
                return f.read()
            except OSError as exc:
                self._count_error(exc)
                raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from exc

    def open(self, key: str) -> BinaryIO:
        """Open the file for a front-to-back read (one request), and ask the kernel to read its
        first :data:`READ_AHEAD_BYTES` into the page cache now.

        The hint is ``posix_fadvise(POSIX_FADV_WILLNEED)``: the kernel starts the device reads
        and returns without waiting for them, so a shard opened while the previous one is
        still being parsed (:mod:`pipelines.sequential`) arrives meanwhile, instead of the
        first ``read`` waiting for the device. Past those bytes the kernel's own sequential
        read-ahead goes on. Skipped where ``posix_fadvise`` does not exist (macOS, Windows) or
        the file refuses advice; it only ever changes when bytes are read, never which.

        Raises:
            ObjectNotFound: no such file.
            StorageError: it cannot be opened (permissions, not a file).
        """
        f = self._open(key)
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(f.fileno(), 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # advice only (e.g. a filesystem that does not take it)
        return f

    def _open(self, key: str) -> BinaryIO:
        """Open the file for buffered reads (one request, counted with its time to open)."""
        start = time.perf_counter()
        try:
            f = open(self._path(key), "rb")
        except OSError as exc:
            self._count_error(exc)
            error = ObjectNotFound if isinstance(exc, FileNotFoundError) else StorageError
            raise error(f"cannot open {self._path(key)}: {exc.strerror}") from exc
        ttfb = time.perf_counter() - start
        with self._stats_lock:
            self._stats.requests += 1
            self._stats.ttfb_s.append(ttfb)
        return f

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes at offset ``start``."""
        with self._open(key) as f:
            try:
                f.seek(start)
                return f.read(length)
            except OSError as exc:
                self._count_error(exc)
                raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        """Whether a regular file exists at ``key``."""
        return self._path(key).is_file()

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Size and modification time (ns, as text) of each file, one ``stat`` each; files that
        do not exist are left out.

        Raises:
            StorageError: a file cannot be looked at for another reason (permissions).
        """
        found = {}
        for key in keys:
            try:
                st = self._path(key).stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot stat {self._path(key)}: {exc.strerror}") from exc
            found[key] = (st.st_size, str(st.st_mtime_ns))
        return found

    def write(self, key: str, data: bytes) -> None:
        """Write ``data`` to a temporary file beside the target, then rename it into place."""
        atomic_write_bytes(self._path(key), data)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Move a finished local file to ``key`` (rename; copy + rename across filesystems)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except OSError:
            with open(path, "rb") as f:
                atomic_write_bytes(target, f.read())
            os.unlink(path)

    def delete(self, key: str) -> None:
        """Remove the file (a missing one is fine).

        Raises:
            StorageError: it cannot be removed.
        """
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self._path(key)}: {exc.strerror}") from exc

    def describe(self, key: str = "") -> str:
        """The file's path."""
        return str(self._path(key))

    def take_stats(self) -> RequestStats:
        """Requests since the last call (see :class:`RequestStats`); exact while other threads
        read (the counters change under a lock)."""
        with self._stats_lock:
            stats, self._stats = self._stats, RequestStats()
        return stats

    def connect(self) -> None:
        """Nothing to set up for a filesystem."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty:
    what a one-line error message quotes of a cause."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (only the type when the message is empty)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def relative_keys(storage: Storage, prefix: str) -> Iterator[str]:
    """The keys under ``prefix``, relative to it (``a/b.jpg`` for ``<prefix>/a/b.jpg``), in
    listing order, fetched as the caller iterates.

    A prefix with nothing under it (a missing folder, an S3 prefix without objects) yields
    nothing: the dataset readers and format detection then report what they did not find.
    A listing that fails or is refused, also after some keys (a later page failing after the
    retries), raises: a dataset read from part of a listing would be silently smaller.

    Raises:
        pipelines.storage.StorageError: the listing failed (the message names the storage,
            the prefix and the cause: endpoint and bucket for S3).
    """
    base = prefix.strip("/")
    skip = len(base) + 1 if base else 0
    try:
        for key in storage.list(base):
            yield key[skip:]
    except PrefixNotFound:
        return


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    A crash leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
