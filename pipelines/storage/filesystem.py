"""A directory (local disk or a network filesystem: NFS, Lustre...) as a :class:`Storage`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from common.files import atomic_write_bytes
from pipelines.storage.base import (
    CallStats,
    MeteredStream,
    ObjectNotFound,
    PrefixNotFound,
    StorageError,
)

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

    def __repr__(self) -> str:
        return f"FileSystemStorage({str(self.root)!r})"

    def _error(self, exc: OSError, what: str, key: str, error=StorageError) -> StorageError:
        """The ``error`` (a :class:`StorageError`) for ``exc``, naming the file.

        Its ``stats`` hold one failed request of the error's kind.
        """
        failed = error(f"cannot {what} {self._path(key)}: {exc.strerror}")
        failed.stats = CallStats(requests=1, errors=((type(exc).__name__, 1),))
        return failed

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
        return self.fetch(key)[0]

    def fetch(self, key: str) -> tuple[bytes, CallStats]:
        """Read the whole file (one ``open``, the TTFB, and one ``read``), with that read's figures.

        Raises:
            ObjectNotFound: no such file.
            StorageError: it cannot be opened or read (permissions, I/O error).
        """
        start = time.perf_counter()
        f, ttfb = self._open(key)
        with f:
            try:
                data = f.read()
            except OSError as exc:
                raise self._error(exc, "read", key) from exc
        return data, CallStats(len(data), time.perf_counter() - start, 1, 0, (ttfb,))

    def open(self, key: str) -> MeteredStream:
        """Open the file for a front-to-back read (one request), asking the kernel to read ahead.

        The hint is ``posix_fadvise(POSIX_FADV_WILLNEED)`` on its first :data:`READ_AHEAD_BYTES`:
        the kernel starts the device reads without waiting, so a shard opened while the previous one
        is parsed (:mod:`pipelines.access.shard_stream`) arrives meanwhile. Skipped where
        ``posix_fadvise`` does not exist (macOS, Windows) or the file refuses advice; it only ever
        changes when bytes are read, never which.

        Returns:
            The file as a stream that keeps its figures (``stats()``).

        Raises:
            ObjectNotFound: no such file.
            StorageError: it cannot be opened (permissions, not a file).
        """
        start = time.perf_counter()
        f, ttfb = self._open(key)
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(f.fileno(), 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # advice only (e.g. a filesystem that does not take it)
        opened = CallStats(0, time.perf_counter() - start, 1, 0, (ttfb,))
        return MeteredStream(_ReadErrors(f, self, key), opened)

    def _open(self, key: str) -> tuple[BinaryIO, float]:
        """Open the file for buffered reads: the file and the seconds ``open`` took."""
        start = time.perf_counter()
        try:
            f = open(self._path(key), "rb")
        except OSError as exc:
            error = ObjectNotFound if isinstance(exc, FileNotFoundError) else StorageError
            raise self._error(exc, "open", key, error) from exc
        return f, time.perf_counter() - start

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes at offset ``start``."""
        return self.fetch_range(key, start, length)[0]

    def fetch_range(self, key: str, start: int, length: int) -> tuple[bytes, CallStats]:
        """``length`` bytes at offset ``start`` (open, seek, read: one request), with their figures.

        Raises:
            ObjectNotFound: no such file.
            StorageError: it cannot be opened or read.
        """
        began = time.perf_counter()
        f, ttfb = self._open(key)
        with f:
            try:
                f.seek(start)
                data = f.read(length)
            except OSError as exc:
                raise self._error(exc, "read", key) from exc
        return data, CallStats(len(data), time.perf_counter() - began, 1, 0, (ttfb,))

    def exists(self, key: str) -> bool:
        """Whether a regular file exists at ``key``."""
        return self._path(key).is_file()

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Size and modification time (ns, as text) of each file that exists, one ``stat`` each.

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

    def connect(self) -> None:
        """Nothing to set up for a filesystem."""


class _ReadErrors:
    """A file whose read errors become :class:`StorageError` naming it."""

    def __init__(self, f: BinaryIO, storage: FileSystemStorage, key: str):
        self._f, self._storage, self._key = f, storage, key

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except OSError as exc:
            raise self._storage._error(exc, "read", self._key) from exc

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()
