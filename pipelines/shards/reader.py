"""Read one WebDataset tar shard back front to back, checked against its manifest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pipelines.shards.manifest import (
    IMAGE_EXTENSIONS,
    ShardError,
    ShardInfo,
    rewrite_advice,
)
from pipelines.shards.tar_stream import TarFormatError, iter_members
from pipelines.storage.base import CallStats, CountingReader, MeteredStream, Storage


def iter_shard(
    storage: Storage, shard: ShardInfo, stream: BinaryIO | None = None
) -> Iterator[tuple[dict, CallStats]]:
    """Stream one shard front to back and yield its samples, each with its share of the read.

    The tar is parsed by :func:`pipelines.shards.tar_stream.iter_members` from 1 MiB reads and
    its members grouped into samples by key as WebDataset does; memory is bounded by one read
    plus one tar member (one image), never the whole shard. When the manifest gives the shard's
    size and CRC-32, both are checked against the bytes streamed (no second read) before the
    last sample is yielded.

    Args:
        stream: the shard already opened with ``storage.open`` (by a read-ahead), or None to
            open it here; it is closed at the end either way. A stream without figures of its
            own (``stats()``: a plain file object) is counted from here on.

    Yields:
        ``(sample, share)``: ``sample`` maps ``"__key__"``, ``"__url__"`` (the shard), an
        image extension and ``"json"`` to bytes; ``share`` (a :class:`CallStats`) holds the
        bytes of the sample's tar members (headers, data, padding, counted at the storage
        stream), its share of the stream's seconds at the stream's rate so far, and the
        requests the stream sent since the previous sample (the first sample: the shard's GET).
        The last sample also carries the tar's end blocks and whatever remains, so a shard's
        shares add up to the stream's figures exactly, however large the reads.

    Raises:
        ShardError: the tar is truncated or corrupt (the message names the member), a
            sample lacks its image or annotation or holds a member twice, the shard holds
            fewer samples than its manifest says, or its size or CRC-32 differ from the
            manifest's (damaged or replaced after it was written). Every message names the
            shard and the folder to delete.
        pipelines.storage.base.StorageError: the shard cannot be opened.
    """
    where = storage.describe(shard.key)
    metered = stream if stream is not None else storage.open(shard.key)
    if not hasattr(metered, "stats"):
        metered = MeteredStream(metered, CallStats())
    counted = CountingReader(metered, checksum=shard.crc32 is not None)
    limit = shard.bytes or None
    count, given = 0, CallStats()
    pending = None
    try:
        for sample, end in _group_by_key(iter_members(counted, limit=limit), where):
            if "json" not in sample or sample.keys().isdisjoint(IMAGE_EXTENSIONS):
                raise ShardError(
                    f"shard {where}: sample {sample['__key__']!r} lacks its image or its .json "
                    "annotation; this is not a shard written by this tool; "
                    + rewrite_advice(storage, shard)
                )
            if pending is not None:
                yield pending
            count += 1
            now = metered.stats()
            nbytes = end - given.nbytes  # its members: headers, data, padding
            requests = now.since(given)
            share = CallStats(
                nbytes, now.seconds * nbytes / max(now.nbytes, 1),  # the read rate so far
                requests.requests, requests.retries, requests.ttfb_s, requests.errors,
            )  # fmt: skip
            pending, given = (sample, share), given + share
        while counted.read(1 << 20):  # the tar's end blocks and record padding are read too
            pass
    except TarFormatError as exc:
        raise ShardError(
            f"shard {where} is truncated or corrupt after {count} of {shard.samples} samples "
            f"({exc}); {rewrite_advice(storage, shard)}"
        ) from None
    finally:
        counted.close()
    if count != shard.samples:
        raise ShardError(
            f"shard {where} is truncated: it holds {count} samples, its manifest says "
            f"{shard.samples}; {rewrite_advice(storage, shard)}"
        )
    if shard.crc32 is not None and (counted.nbytes, counted.crc32) != (shard.bytes, shard.crc32):
        raise ShardError(
            f"shard {where} changed after it was written: {counted.nbytes} bytes with CRC-32 "
            f"{counted.crc32:08x}, its manifest says {shard.bytes} bytes with CRC-32 "
            f"{shard.crc32:08x} (damaged or replaced); {rewrite_advice(storage, shard)}"
        )
    if pending is not None:  # the last sample also carries the rest: totals are exact
        sample, share = pending
        yield sample, share + metered.stats().since(given)


def _group_by_key(
    members: Iterator[tuple[str, bytes, int]], url: str
) -> Iterator[tuple[dict, int]]:
    """Group consecutive members sharing a key into samples, as WebDataset does.

    The key is the name up to the first ``.`` of its last path component, the rest the field
    name (``000000007.jpg`` → key ``000000007``, field ``jpg``); a member without a field is
    skipped.

    Yields:
        ``(sample, end)``, ``end`` the stream offset just past the sample's last member.

    Raises:
        pipelines.shards.tar_stream.TarFormatError: a sample holds two members with the same
            name (the second would silently replace the first; WebDataset refuses them too).
    """
    sample: dict = {}
    last_end = 0
    for name, data, end in members:
        folder, _, base = name.rpartition("/")
        stem, dot, ext = base.partition(".")
        if not dot:
            continue  # no field name: not part of a sample
        key = f"{folder}/{stem}" if folder else stem
        if sample and sample["__key__"] != key:
            yield sample, last_end
            sample = {}
        if not sample:
            sample = {"__key__": key, "__url__": url}
        elif ext in sample:
            raise TarFormatError(f"member {name!r} appears twice in sample {key!r}")
        sample[ext] = data
        last_end = end
    if sample:
        yield sample, last_end
