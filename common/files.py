"""Atomic file writes: a crash leaves the old file or the new one, never a partial file.

Every output of the tool goes through :func:`atomic_file`: a temporary file in the same directory,
then ``os.replace`` over the target (atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# The process's umask, read once (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` when the block succeeds (removed if it raises).

    Args:
        mode: permission bits of the new file (e.g. ``0o600`` for a file holding keys); None gives
            what a plain ``open`` would (0666 less the umask).

    Raises:
        OSError: the directory cannot be created or written; nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`; ``mode`` as there)."""
    with atomic_file(path, mode=mode) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` in UTF-8 to ``path`` atomically (:func:`atomic_file`)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as a PNG (100 dpi), atomically, then free it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
