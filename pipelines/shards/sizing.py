"""How large the shards the tool writes are: at most a target, and enough for every reader."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.formats.records import Record
from pipelines.shards.manifest import read_manifest
from pipelines.storage.base import Storage

#: The largest shard written when the user names no size: 1 MB (10^6 bytes).
DEFAULT_SHARD_BYTES = 10**6

#: Shards per reader (rank x DataLoader worker) the automatic size aims for, so that the
#: readers' loads even out and none is left without a shard.
SHARDS_PER_READER = 2


@dataclass(frozen=True)
class ShardPlan:
    """Where a split's shards are and how large they are written.

    Attributes:
        prefix: key prefix of the shards.
        target_bytes: target size of a shard in bytes (a shard closes before it is passed).
        reason: why the shards are not the default ones (one line), or ``""``.
    """

    prefix: str
    target_bytes: int
    reason: str = ""


def plan_shards(
    storage: Storage, records: list[Record], prefix: str, *, readers: int, split: str
) -> ShardPlan:
    """Shards of at most :data:`DEFAULT_SHARD_BYTES`, at least ``SHARDS_PER_READER x readers``.

    The default shards under ``prefix`` are kept when there are enough of them (or would be,
    when not yet written); otherwise the split is written again, in smaller shards, beside them
    under ``<prefix>-for<N>`` (N: the shards needed). The size comes from the bytes of the
    split: those of the default shards when written, else the images' sizes (one listing).

    Args:
        storage: where the split and its shards live.
        records: the split's records (at least one).
        prefix: the default shards' prefix.
        readers: ranks x DataLoader workers (at least one each) that read the shards at once.
        split: the split's name, for the reason.

    Returns:
        The plan; its ``reason`` says why, when the shards are not the default ones.

    Raises:
        pipelines.storage.base.StorageError: the manifest or the images' sizes cannot be read.
    """
    needed = SHARDS_PER_READER * max(readers, 1)
    found = read_manifest(storage, prefix)
    if found is not None and len(found.shards) >= needed:
        return ShardPlan(prefix, DEFAULT_SHARD_BYTES)
    if found is not None:
        total = sum(s.bytes for s in found.shards)
    else:
        sizes = storage.versions([r.image_key for r in records])
        total = sum(size for size, _ in sizes.values())
        if total // DEFAULT_SHARD_BYTES >= needed:  # a shard closes before passing its target
            return ShardPlan(prefix, DEFAULT_SHARD_BYTES)
    target = max(1, min(DEFAULT_SHARD_BYTES, total // needed))
    have = f"{len(found.shards)} written" if found is not None else "fewer"
    reason = (
        f"split {split}: shards of up to {DEFAULT_SHARD_BYTES / 1e6:g} MB would be {have}, and "
        f"{readers} reader(s) (ranks x DataLoader workers) need {needed}: shards of "
        f"~{target / 1e6:.3g} MB under {prefix}-for{needed} (dataset.shard_size_mb sets a size)"
    )
    return ShardPlan(f"{prefix}-for{needed}", target, reason)
