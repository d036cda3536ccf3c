"""What several test modules share: a storage that counts the reads it serves."""

from __future__ import annotations


class CountingStorage:
    """A storage that counts the reads it passes on to the one it wraps (``reads``: calls of
    ``read``, ``fetch``, ``read_range``, ``fetch_range`` and ``open``); everything else is the
    wrapped storage's. For tests that check how many objects a step reads (a manifest, no
    image), now that storages keep no shared counter."""

    def __init__(self, storage):
        self.storage = storage
        self.reads = 0

    def _counted(self, name: str):
        method = getattr(self.storage, name)

        def call(*args, **kwargs):
            self.reads += 1
            return method(*args, **kwargs)

        return call

    def __getattr__(self, name: str):
        if name in ("read", "fetch", "read_range", "fetch_range", "open"):
            return self._counted(name)
        return getattr(self.storage, name)
