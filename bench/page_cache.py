"""Cold reads on a local machine: drop files from the OS page cache before they are read.

A pass is "cold" when every byte it reads comes from the device. :class:`EvictBeforeRead` makes
every read cold, so a cold pass can last as many epochs as a warm one; the raw baselines evict the
same way (:func:`bench.loading.baselines.fs_read_baseline`), so both sides pay the same system call
per file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from pipelines.storage.base import CallStats, MeteredStream, Storage


def evict_page_cache(paths: Sequence[str | os.PathLike], *, flush: bool = True) -> bool:
    """Drop the files' pages from the OS page cache, so that the next read comes from the device.

    Uses ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` on each file (no root needed, unlike
    ``echo 3 > /proc/sys/vm/drop_caches``). Limits: dirty pages are *not* evicted, hence the
    ``fdatasync`` first by default; tmpfs / ramfs keep their pages, and network filesystems may keep
    a cache this does not reach; it is advice: the kernel may keep pages that are mapped or in use.

    Args:
        paths: files to evict.
        flush: ``fdatasync`` each file before evicting (default); False leaves recently written
            pages cached.

    Returns:
        True when the advice was given for every file; False on a platform without
        ``posix_fadvise`` (macOS, Windows), where nothing is evicted.

    Raises:
        OSError: a file cannot be opened (e.g. FileNotFoundError).
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            if flush:
                os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


class _EvictOnClose:
    """A binary stream that calls ``evict`` once, when it is closed."""

    def __init__(self, stream: BinaryIO, evict):
        self._stream = stream
        self._evict = evict
        self._closed = False

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    def readinto(self, buffer) -> int:
        return self._stream.readinto(buffer)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._stream.close()
            finally:
                self._evict()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EvictBeforeRead:
    """A :class:`pipelines.storage.base.Storage` that evicts each file right before reading it.

    Wraps the storage the loaders read (the filesystem, or a local S3 server whose files live under
    ``local_dir``): ``read``, ``open`` and ``read_range`` of ``key`` first evict ``local_dir / key``
    with :func:`evict_page_cache` (no flush: the files were flushed when the pass began), and evict
    it again once read (a stream: when closed), so the next reader finds none of its pages;
    everything else is passed through. Limits: as :func:`evict_page_cache`; a reader evicting a file
    another is still reading makes that one read it from the device again (its bytes counted once);
    two readers opening a file at nearly the same moment share one device read (the sweep's
    ``cache_share`` shows how much).

    Args:
        storage: the storage to wrap.
        local_dir: the folder the keys are relative to on this machine.
    """

    def __init__(self, storage: Storage, local_dir: str | os.PathLike):
        self.storage = storage
        self.local_dir = Path(local_dir)

    @property
    def fork_safe(self) -> bool:
        """Whether the wrapped storage's client survives ``fork`` (s3dlio's does not)."""
        return getattr(self.storage, "fork_safe", True)

    def _evict(self, key: str) -> None:
        evict_page_cache([self.local_dir / key], flush=False)

    def read(self, key: str) -> bytes:
        """:meth:`fetch`'s bytes."""
        return self.fetch(key)[0]

    def fetch(self, key: str) -> tuple[bytes, CallStats]:
        """Evict, read the whole object, evict again."""
        self._evict(key)
        try:
            return self.storage.fetch(key)
        finally:
            self._evict(key)

    def open(self, key: str) -> MeteredStream:
        """Evict, then open the object for streaming; closing the stream evicts again."""
        self._evict(key)
        stream = self.storage.open(key)
        stream.raw = _EvictOnClose(stream.raw, lambda: self._evict(key))
        return stream

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """:meth:`fetch_range`'s bytes."""
        return self.fetch_range(key, start, length)[0]

    def fetch_range(self, key: str, start: int, length: int) -> tuple[bytes, CallStats]:
        """Evict, read ``length`` bytes from offset ``start``, evict again."""
        self._evict(key)
        try:
            return self.storage.fetch_range(key, start, length)
        finally:
            self._evict(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        """As the wrapped storage."""
        return self.storage.list(prefix)

    def size(self, key: str) -> int:
        """As the wrapped storage."""
        return self.storage.size(key)

    def exists(self, key: str) -> bool:
        """As the wrapped storage."""
        return self.storage.exists(key)

    def versions(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """As the wrapped storage."""
        return self.storage.versions(keys)

    def write(self, key: str, data: bytes) -> None:
        """As the wrapped storage."""
        self.storage.write(key, data)

    def delete(self, key: str) -> None:
        """As the wrapped storage."""
        self.storage.delete(key)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """As the wrapped storage."""
        self.storage.put_file(key, path)

    def describe(self, key: str = "") -> str:
        """As the wrapped storage."""
        return self.storage.describe(key)

    def connect(self) -> None:
        """As the wrapped storage."""
        self.storage.connect()
