"""What ran out at a sweep point: the storage, the client's CPU, the client's memory, or the cap.

A point whose client ran out (its cores busy, its memory gone) is never the storage's limit: MLPerf
Storage's users most often misread such runs (mlcommons/storage issues #490, #464, #337). This
module reads the client's figures a sweep point carries (:func:`bench.loading.case.combine`:
``client_cpu_busy``, ``memory_available_share``, ``cache_share``).
"""

from __future__ import annotations

import math

#: A client node whose cores were busy (user, nice, system, irq, softirq) or stolen by the
#: hypervisor for at least this share of a point's window could not issue reads any faster:
#: at 90 % the ten-percent headroom is the scheduling noise of a loaded machine (reader
#: processes, the training loop and a local S3 server all runnable at once), so the reads
#: wait for a core rather than for the storage.
CPU_BUSY_LIMIT = 0.90
#: A client node whose available memory (``MemAvailable``: free memory plus the page cache
#: the kernel can drop) fell below this share of its memory was reclaiming the page cache
#: its reads go through and was close to swapping or to the OOM killer.
MEMORY_AVAILABLE_LIMIT = 0.05
#: A point whose bytes came from the page cache for more than this share (bytes delivered
#: beyond those read from the block device) measured memory, not the storage: a tenth is the
#: most that the kernel's read-ahead and metadata (which are counted as device reads or
#: served from memory either way) make of a cold pass.
CACHE_SHARE_LIMIT = 0.10

STORAGE = "storage"
CLIENT_CPU = "client CPU"
CLIENT_MEMORY = "client memory"
CAP = "cap"


def client_limit(row: dict) -> str | None:
    """What the client ran out of at the point of ``row`` (a ``sweep.csv`` row), or None.

    :data:`CLIENT_MEMORY` is checked first (a node short of memory also burns CPU reclaiming it),
    then :data:`CLIENT_CPU`; None when it had headroom or its figures are unknown.
    """
    memory = row.get("memory_available_share", math.nan)
    if memory == memory and memory < MEMORY_AVAILABLE_LIMIT:
        return CLIENT_MEMORY
    cpu = row.get("client_cpu_busy", math.nan)
    if cpu == cpu and cpu >= CPU_BUSY_LIMIT:
        return CLIENT_CPU
    return None


def point_limit(row: dict, passed: bool) -> str | None:
    """The client's limit if it ran out, else :data:`STORAGE` for a failed point, else None."""
    ran_out = client_limit(row)
    return ran_out or (None if passed else STORAGE)


def cache_served(row: dict) -> bool:
    """Whether the page cache served over :data:`CACHE_SHARE_LIMIT` of the bytes; unknown: False."""
    share = row.get("cache_share", math.nan)
    return share == share and share > CACHE_SHARE_LIMIT


def limit_sentence(kind: str, count: int, nodes: int, *, reason: str = "") -> str:
    """One sentence saying what ``kind`` of limit was met at ``count`` accelerators, and what to do.

    ``nodes`` is the client nodes; ``reason`` says why the client's memory or the cap ended it where
    a point's figures do not (the node's sizing, the counts asked).
    """
    if kind == STORAGE:
        return (
            f"Limit: the storage (at {count} accelerator(s) the AU fell while the client had "
            f"headroom: CPU below {CPU_BUSY_LIMIT:.0%} busy, memory above "
            f"{MEMORY_AVAILABLE_LIMIT:.0%} available)."
        )
    if kind == CLIENT_CPU:
        return (
            f"Limit: the client's CPU (cores at least {CPU_BUSY_LIMIT:.0%} busy at {count} "
            "accelerator(s)), not the storage: add client nodes "
            f"(NNODES={nodes + 1} or more) to load the storage further."
        )
    if kind == CLIENT_MEMORY:
        why = reason or (f"below {MEMORY_AVAILABLE_LIMIT:.0%} available at {count} accelerator(s)")
        return (
            f"Limit: the client's memory ({why}), not the storage: add client nodes "
            f"(NNODES={nodes + 1} or more) to load the storage further."
        )
    why = reason or "the most this launch runs: sweep.max_accelerators or NPROC x NNODES"
    return f"Limit: the cap ({count} accelerator(s), {why}); the storage may keep more busy."
