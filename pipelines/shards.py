"""WebDataset tar shards: write a split into shards, read a shard back front to back.

Shard layout (the WebDataset convention, https://github.com/webdataset/webdataset): a POSIX tar
whose members are grouped into samples by basename. Each sample here is
``<n>.jpg`` (or ``.png``; the original image bytes, unchanged) and ``<n>.json`` (the annotation:
:meth:`to_json` of a :mod:`pipelines.records` record), where ``<n>`` is the sample's zero-padded
position in the split. A ``manifest.json`` beside the shards lists each shard with its size in
bytes, its sample count and its image ids; it is written last, so a manifest means a complete set.
Shard names in the manifest are relative to it, so a shard folder can be copied or uploaded
under another prefix and still be read.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from webdataset.writer import TarWriter

from pipelines.records import Record
from pipelines.storage import CountingReader, Storage
from pipelines.tar_stream import TarFormatError, iter_members

MANIFEST = "manifest.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


class ShardError(Exception):
    """A shard is truncated, corrupt or inconsistent with its manifest; the message names it."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest describes it.

    Attributes:
        key: storage key of the tar file.
        bytes: its size in bytes.
        samples: number of samples in it.
        ids: the image ids of those samples, in tar order.
    """

    key: str
    bytes: int
    samples: int
    ids: tuple[str, ...]


def write_shards(
    storage: Storage,
    records: list[Record],
    prefix: str,
    *,
    target_bytes: int,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> list[ShardInfo]:
    """Write ``records`` (in order) into tar shards of about ``target_bytes`` each.

    Each shard is written to a local temporary file and handed to ``storage.put_file`` only when
    complete, so a reader never sees a partial shard; the manifest is written last. A shard
    closes before the sample that would take it past ``target_bytes``; a sample larger than the
    target gets a shard of its own. The output is deterministic: same records, same bytes.

    Args:
        storage: reads the images and receives the shards.
        records: the split's records; their images are read from ``storage``.
        prefix: key prefix of the shards, e.g. ``shards/train``.
        target_bytes: target shard size in bytes (10^6 bytes = 1 MB).
        on_shard: called with each shard once it is in place (progress reporting).

    Returns:
        The shards written, in order.

    Raises:
        pipelines.storage.StorageError: an image cannot be read (message names it).
        ValueError: ``target_bytes`` is not positive or ``records`` is empty.
    """
    if target_bytes <= 0:
        raise ValueError(f"{target_bytes=} must be positive")
    if not records:
        raise ValueError("no records to write")
    shards: list[ShardInfo] = []
    tmpdir = tempfile.mkdtemp(prefix="shards-")
    writer, tmp_path, ids, size = None, "", [], 0

    def finish() -> None:
        writer.close()
        key = f"{prefix}/{os.path.basename(prefix)}-{len(shards):06d}.tar"
        info = ShardInfo(key=key, bytes=os.path.getsize(tmp_path), samples=len(ids), ids=tuple(ids))
        storage.put_file(key, tmp_path)
        shards.append(info)
        if on_shard is not None:
            on_shard(info)

    try:
        for position, record in enumerate(records):
            image = storage.read(record.image_key)
            annotation = json.dumps(record.to_json(), sort_keys=True).encode("utf-8")
            entry = _tar_entry_bytes(len(image)) + _tar_entry_bytes(len(annotation))
            if writer is not None and _tar_file_bytes(size + entry) > target_bytes:
                finish()
                writer = None
            if writer is None:
                tmp_path = os.path.join(tmpdir, f"{len(shards):06d}.tar")
                writer = TarWriter(tmp_path, encoder=False, mtime=0, user="", group="")
                ids, size = [], 1024  # a tar ends with two 512-byte zero blocks
            writer.write(
                {
                    "__key__": f"{position:09d}",
                    _extension(record.image_key): image,
                    "json": annotation,
                }
            )
            ids.append(record.id)
            size += entry
        finish()
        manifest = {
            "shards": [
                {
                    "name": s.key.rsplit("/", 1)[-1],
                    "bytes": s.bytes,
                    "samples": s.samples,
                    "ids": s.ids,
                }
                for s in shards
            ],
            "target_bytes": target_bytes,
        }
        storage.write(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode("utf-8"))
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)
    return shards


def read_manifest(storage: Storage, prefix: str) -> tuple[list[ShardInfo], int] | None:
    """The shards listed in ``<prefix>/manifest.json`` and their target size in bytes.

    Returns:
        ``None`` when there is no manifest (the shards were never completely written).

    Raises:
        ShardError: the manifest exists but does not parse.
    """
    key = f"{prefix}/{MANIFEST}"
    if not storage.exists(key):
        return None
    try:
        data = json.loads(storage.read(key))
        shards = [
            ShardInfo(
                key=f"{prefix}/{s['name']}",
                bytes=int(s["bytes"]),
                samples=int(s["samples"]),
                ids=tuple(s["ids"]),
            )
            for s in data["shards"]
        ]
        return shards, int(data["target_bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ShardError(
            f"{storage.describe(key)} is not a valid shard manifest ({exc}); delete "
            f"{storage.describe(prefix)} and the shards are written again on next use"
        ) from None


def iter_shard(
    storage: Storage, shard: ShardInfo, stream: BinaryIO | None = None
) -> Iterator[tuple[dict, int, float]]:
    """Stream one shard front to back and yield its samples.

    The tar is parsed by :func:`pipelines.tar_stream.iter_members` from 1 MiB reads, and its
    members grouped into samples by key as WebDataset does. Memory is bounded by one read plus
    one tar member (one image): the shard is never held whole. Bytes are counted at the storage
    stream, tar headers and padding included, so the ``nbytes`` of all samples of a shard add
    up to the bytes actually read from storage.

    Args:
        stream: the shard already opened with ``storage.open`` (by a read-ahead), or None to
            open it here; it is closed at the end either way.

    Yields:
        ``(sample, nbytes, read_s)``: ``sample`` maps ``"__key__"``, ``"__url__"`` (the
        shard), an image extension and ``"json"`` to bytes; ``nbytes`` is the bytes of the
        sample's tar members (headers, data, padding) and ``read_s`` its share of the read
        time at the stream's rate so far (seconds); the last sample also carries the tar's end
        blocks and the remaining read time, so a shard's samples add up to its bytes and read
        time exactly, however large the reads.

    Raises:
        ShardError: the tar is truncated or corrupt, a sample lacks its image or annotation,
            or the shard holds fewer samples than its manifest says.
        pipelines.storage.StorageError: the shard cannot be opened.
    """
    where = storage.describe(shard.key)
    stream = CountingReader(stream if stream is not None else storage.open(shard.key))
    count, given_bytes, given_s = 0, 0, 0.0
    pending = None
    try:
        for sample, end in _group_by_key(iter_members(stream), where):
            if "json" not in sample or sample.keys().isdisjoint(IMAGE_EXTENSIONS):
                raise ShardError(
                    f"shard {where}: sample {sample['__key__']!r} lacks its image or its .json "
                    "annotation; this is not a shard written by this tool"
                )
            if pending is not None:
                yield pending
            count += 1
            nbytes = end - given_bytes  # its members: headers, data, padding
            read_s = stream.read_s * nbytes / stream.nbytes  # the read rate so far
            pending = (sample, nbytes, read_s)
            given_bytes, given_s = end, given_s + read_s
        while stream.read(1 << 20):  # the tar's end blocks and record padding are read too
            pass
    except TarFormatError as exc:
        raise ShardError(
            f"shard {where} is truncated or corrupt after {count} of {shard.samples} samples "
            f"({exc}); write it again (delete the shard folder, it is rebuilt on next use)"
        ) from None
    finally:
        stream.close()
    if count != shard.samples:
        raise ShardError(
            f"shard {where} is truncated: it holds {count} samples, its manifest says "
            f"{shard.samples}; delete the shard folder, it is rebuilt on next use"
        )
    if pending is not None:  # the last sample also carries the end blocks: totals are exact
        sample, nbytes, read_s = pending
        yield sample, nbytes + stream.nbytes - given_bytes, read_s + stream.read_s - given_s


def _group_by_key(
    members: Iterator[tuple[str, bytes, int]], url: str
) -> Iterator[tuple[dict, int]]:
    """Group consecutive members sharing a key into samples, the WebDataset convention: the key
    is the name up to the first ``.`` of its last path component, the rest the field name
    (``000000007.jpg`` → key ``000000007``, field ``jpg``). Yields ``(sample, end)``, ``end``
    the stream offset just past the sample's last member."""
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
        sample[ext] = data
        last_end = end
    if sample:
        yield sample, last_end


def _tar_entry_bytes(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a tar: a 512-byte header + data padded to 512."""
    return 512 + (size + 511) // 512 * 512


def _tar_file_bytes(content: int) -> int:
    """Size of a tar file whose headers, data and end blocks take ``content`` bytes: tarfile pads
    the file to a whole number of 10240-byte records (``tarfile.RECORDSIZE``)."""
    return (content + tarfile.RECORDSIZE - 1) // tarfile.RECORDSIZE * tarfile.RECORDSIZE


def _extension(key: str) -> str:
    """The image extension used as the member suffix (``jpg``, ``png``)."""
    ext = key.rsplit(".", 1)[-1].lower()
    return ext if ext in IMAGE_EXTENSIONS else "jpg"
