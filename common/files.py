"""Atomic file writes: a crash leaves the old file or the new one, never a partial file.

The one copy every output of the tool goes through (metrics, reports, figures, configuration,
server state, credentials files). The write goes to a temporary file in the same directory,
then ``os.replace`` renames it over the target (atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

# The process's umask, read once (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    Args:
        mode: permission bits of the new file (e.g. ``0o600`` for a file holding keys);
            None keeps ``mkstemp``'s 0600 widened by the umask, like a plain ``open``.

    Raises:
        OSError: the directory cannot be created or written; nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as a PNG (100 dpi), atomically, then free it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
