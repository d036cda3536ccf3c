"""WebDataset tar shards: write a split into shards, read a shard back front to back.

Shard layout (the WebDataset convention, https://github.com/webdataset/webdataset): a POSIX tar
whose members are grouped into samples by basename. Each sample here is
``<n>.jpg`` (or ``.png``; the original image bytes, unchanged) and ``<n>.json`` (the annotation:
:meth:`to_json` of a :mod:`pipelines.records` record), where ``<n>`` is the sample's zero-padded
position in the split. A ``manifest.json`` beside the shards is written last, so a manifest
means a complete set. It lists each shard with its size in bytes, its CRC-32 (computed while
the shard was written), its sample count, its image ids and, per sample, what it was built
from (:class:`SourceStamp`: the image's size, storage version and MD5, and a digest of the
annotation), so that shards can be checked against the data they came from
(:func:`changed_sources`) and against damage (:func:`iter_shard` verifies size and CRC-32 from
the bytes it streamed). Shard names in the manifest are relative to it, so a shard folder can
be copied or uploaded under another prefix and still be read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from webdataset.writer import TarWriter

from pipelines.records import Record
from pipelines.storage import CountingReader, Storage
from pipelines.tar_stream import TarFormatError, iter_members

MANIFEST = "manifest.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


#: Manifest format: 2 adds each shard's CRC-32 and each sample's :class:`SourceStamp`.
MANIFEST_VERSION = 2


class ShardError(Exception):
    """A shard is truncated, corrupt or inconsistent with its manifest; the message names it."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest describes it.

    Attributes:
        key: storage key of the tar file.
        bytes: its size in bytes (0: not known).
        samples: number of samples in it.
        ids: the image ids of those samples, in tar order.
        crc32: CRC-32 (``zlib.crc32``) of the whole file, computed while it was written; None
            when not known (then :func:`iter_shard` does not verify it).
    """

    key: str
    bytes: int
    samples: int
    ids: tuple[str, ...]
    crc32: int | None = None


@dataclass(frozen=True)
class SourceStamp:
    """What one sample of a shard was built from, to tell whether the data changed since.

    Attributes:
        image_bytes: the image's size in bytes.
        image_version: the storage's version of the image, taken before it was read
            (:meth:`pipelines.storage.Storage.versions`: a filesystem's modification time in
            ns, an S3 ETag).
        image_md5: MD5 (hex) of the image bytes written; an S3 ETag of a single-part upload
            is this MD5, so shards written on a filesystem and uploaded with the images
            still match them.
        annotation_sha256: the first 16 hex digits of the SHA-256 of the annotation member
            (the record's JSON): a changed label or box changes it.
    """

    image_bytes: int
    image_version: str
    image_md5: str
    annotation_sha256: str


@dataclass(frozen=True)
class Manifest:
    """The manifest of a split's shards.

    Attributes:
        shards: the shards, in order.
        target_bytes: the shard size they were written for (bytes).
        sources: each sample's :class:`SourceStamp` by image id; None for a manifest written
            by an older version of this tool, which did not record them.
    """

    shards: list[ShardInfo]
    target_bytes: int
    sources: dict[str, SourceStamp] | None


def annotation_bytes(record: Record) -> bytes:
    """The annotation member of a record's sample: its JSON, keys sorted, UTF-8."""
    return json.dumps(record.to_json(), sort_keys=True).encode("utf-8")


def annotation_digest(annotation: bytes) -> str:
    """:attr:`SourceStamp.annotation_sha256` of an annotation member."""
    return hashlib.sha256(annotation).hexdigest()[:16]


def write_shards(
    storage: Storage,
    records: list[Record],
    prefix: str,
    *,
    target_bytes: int,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> list[ShardInfo]:
    """Write ``records`` (in order) into tar shards of about ``target_bytes`` each.

    Each shard is written to a local temporary file (its CRC-32 computed as it is written) and
    handed to ``storage.put_file`` only when complete, so a reader never sees a partial shard;
    the manifest, with each sample's :class:`SourceStamp`, is written last. The images'
    versions are taken before they are read, so an image replaced meanwhile shows as changed
    on the next check, never the other way round. A shard closes before the sample that would
    take it past ``target_bytes``; a sample larger than the target gets a shard of its own.
    The output is deterministic: same records, same bytes.

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
    versions = storage.versions([r.image_key for r in records])
    shards: list[ShardInfo] = []
    stamps: list[SourceStamp] = []
    tmpdir = tempfile.mkdtemp(prefix="shards-")
    writer, tmp_file, ids, size = None, None, [], 0

    def finish() -> None:
        writer.close()
        tmp_file.close()
        key = f"{prefix}/{os.path.basename(prefix)}-{len(shards):06d}.tar"
        info = ShardInfo(
            key=key,
            bytes=tmp_file.nbytes,
            samples=len(ids),
            ids=tuple(ids),
            crc32=tmp_file.crc32,
        )
        storage.put_file(key, tmp_file.path)
        shards.append(info)
        if on_shard is not None:
            on_shard(info)

    try:
        for position, record in enumerate(records):
            _, version = versions.get(record.image_key, (0, ""))
            image = storage.read(record.image_key)
            annotation = annotation_bytes(record)
            entry = _tar_entry_bytes(len(image)) + _tar_entry_bytes(len(annotation))
            if writer is not None and _tar_file_bytes(size + entry) > target_bytes:
                finish()
                writer = None
            if writer is None:
                tmp_file = _ChecksumFile(os.path.join(tmpdir, f"{len(shards):06d}.tar"))
                writer = TarWriter(tmp_file, encoder=False, mtime=0, user="", group="")
                ids, size = [], 1024  # a tar ends with two 512-byte zero blocks
            writer.write(
                {
                    "__key__": f"{position:09d}",
                    _extension(record.image_key): image,
                    "json": annotation,
                }
            )
            ids.append(record.id)
            stamps.append(
                SourceStamp(
                    image_bytes=len(image),
                    image_version=version,
                    image_md5=hashlib.md5(image, usedforsecurity=False).hexdigest(),
                    annotation_sha256=annotation_digest(annotation),
                )
            )
            size += entry
        finish()
        storage.write(f"{prefix}/{MANIFEST}", _manifest_json(shards, stamps, target_bytes))
    finally:
        if tmp_file is not None:
            tmp_file.close()
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)
    return shards


class _ChecksumFile:
    """A local file opened for writing that counts the bytes written and their CRC-32."""

    def __init__(self, path: str):
        self.path = path
        self.nbytes = 0
        self.crc32 = 0
        self._file = open(path, "wb")

    def write(self, data) -> int:
        """Write ``data`` and add it to the count and the checksum."""
        self.crc32 = zlib.crc32(data, self.crc32)
        self.nbytes += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        """Flush the file."""
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()


def _manifest_json(shards: list[ShardInfo], stamps: list[SourceStamp], target_bytes: int) -> bytes:
    """The manifest file: shards in order, each with its samples' source stamps."""
    entries, start = [], 0
    for shard in shards:
        mine = stamps[start : start + shard.samples]
        start += shard.samples
        entries.append(
            {
                "name": shard.key.rsplit("/", 1)[-1],
                "bytes": shard.bytes,
                "crc32": shard.crc32,
                "samples": shard.samples,
                "ids": shard.ids,
                "sources": [
                    [t.image_bytes, t.image_version, t.image_md5, t.annotation_sha256] for t in mine
                ],
            }
        )
    manifest = {"version": MANIFEST_VERSION, "target_bytes": target_bytes, "shards": entries}
    return json.dumps(manifest, indent=1).encode("utf-8")


def read_manifest(storage: Storage, prefix: str) -> Manifest | None:
    """The manifest ``<prefix>/manifest.json``: the shards, their target size, the sources.

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
        shards, sources = [], {}
        for entry in data["shards"]:
            ids = tuple(str(i) for i in entry["ids"])
            crc = entry.get("crc32")
            shards.append(
                ShardInfo(
                    key=f"{prefix}/{entry['name']}",
                    bytes=int(entry["bytes"]),
                    samples=int(entry["samples"]),
                    ids=ids,
                    crc32=None if crc is None else int(crc),
                )
            )
            stamps = entry.get("sources")
            if stamps is None:
                sources = None
            elif sources is not None:
                if len(stamps) != len(ids):
                    raise ValueError(f"{len(stamps)} sources for {len(ids)} ids")
                for image_id, (nbytes, version, md5, digest) in zip(ids, stamps, strict=True):
                    sources[image_id] = SourceStamp(
                        int(nbytes), str(version), str(md5), str(digest)
                    )
        return Manifest(shards, int(data["target_bytes"]), sources)
    except (ValueError, KeyError, TypeError) as exc:
        raise ShardError(
            f"{storage.describe(key)} is not a valid shard manifest ({exc}); delete "
            f"{storage.describe(prefix)} and the shards are written again on next use"
        ) from None


@dataclass
class SourceCheck:
    """What :func:`changed_sources` found.

    Attributes:
        changed: one line per sample whose data changed (``"<id>: annotation changed"``,
            ``"<id>: image changed (<where>)"``, ``"<id>: image missing (<where>)"``), or one
            line saying that the manifest records no sources (an older manifest).
        new_versions: image id → its new storage version, for images with a new version
            but the same bytes (a copy without modification times, a rewrite of the same
            file): the shards still hold them; the manifest can record the new versions.
    """

    changed: list[str]
    new_versions: dict[str, str]


def changed_sources(storage: Storage, records: list[Record], manifest: Manifest) -> SourceCheck:
    """What changed in the data since the shards of ``manifest`` were written from it.

    For each record (matched by image id): the annotation it would be written with now against
    the recorded digest, and its image's size and version (:meth:`Storage.versions`: one stat
    per file on a filesystem, listings of the image folders on S3) against the recorded ones.
    An image whose size is the same but whose version is not is compared by content: an S3
    ETag that is the recorded MD5 (a single-part upload of the same bytes, e.g. shards written
    on a filesystem and uploaded with the images) settles it without a read; otherwise the
    image is read and hashed (after a copy that did not keep modification times, once: the
    caller records the new versions).

    Raises:
        pipelines.storage.StorageError: the storage cannot be listed or an image read.
    """
    if manifest.sources is None:
        return SourceCheck(
            ["the manifest was written by an older version and records no sources"], {}
        )
    versions = storage.versions([r.image_key for r in records])
    check = SourceCheck([], {})
    for record in records:
        stamp = manifest.sources.get(record.id)
        where = storage.describe(record.image_key)
        if stamp is None:
            check.changed.append(f"{record.id}: not in the shards")
        elif annotation_digest(annotation_bytes(record)) != stamp.annotation_sha256:
            check.changed.append(f"{record.id}: annotation changed")
        elif record.image_key not in versions:
            check.changed.append(f"{record.id}: image missing ({where})")
        else:
            nbytes, version = versions[record.image_key]
            if nbytes != stamp.image_bytes:
                check.changed.append(f"{record.id}: image changed ({where})")
            elif version != stamp.image_version and version.strip('"') != stamp.image_md5:
                image = storage.read(record.image_key)
                if hashlib.md5(image, usedforsecurity=False).hexdigest() == stamp.image_md5:
                    check.new_versions[record.id] = version
                else:
                    check.changed.append(f"{record.id}: image changed ({where})")
    return check


def record_versions(storage: Storage, prefix: str, manifest: Manifest, versions: dict) -> None:
    """Write the manifest again with the images' new ``versions`` (image id → version), so
    that the next check does not read them again (see :class:`SourceCheck`).

    Raises:
        pipelines.storage.StorageError: the manifest cannot be written (read-only storage).
    """
    stamps = [
        dataclasses.replace(manifest.sources[i], image_version=versions[i])
        if i in versions
        else manifest.sources[i]
        for shard in manifest.shards
        for i in shard.ids
    ]
    data = _manifest_json(manifest.shards, stamps, manifest.target_bytes)
    storage.write(f"{prefix}/{MANIFEST}", data)


def iter_shard(
    storage: Storage, shard: ShardInfo, stream: BinaryIO | None = None
) -> Iterator[tuple[dict, int, float]]:
    """Stream one shard front to back and yield its samples.

    The tar is parsed by :func:`pipelines.tar_stream.iter_members` from 1 MiB reads, and its
    members grouped into samples by key as WebDataset does. Memory is bounded by one read plus
    one tar member (one image): the shard is never held whole. Bytes are counted at the storage
    stream, tar headers and padding included, so the ``nbytes`` of all samples of a shard add
    up to the bytes actually read from storage. When the manifest gives the shard's size and
    CRC-32, both are checked against the bytes streamed (no second read) before the last
    sample is yielded: a shard damaged or replaced after it was written is an error.

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
        ShardError: the tar is truncated or corrupt (the message names the member), a
            sample lacks its image or annotation or holds a member twice, the shard holds
            fewer samples than its manifest says, or its size or CRC-32 differ from the
            manifest's. Every message names the shard and the folder to delete.
        pipelines.storage.StorageError: the shard cannot be opened.
    """
    where = storage.describe(shard.key)
    stream = CountingReader(
        stream if stream is not None else storage.open(shard.key),
        checksum=shard.crc32 is not None,
    )
    limit = shard.bytes or None
    count, given_bytes, given_s = 0, 0, 0.0
    pending = None
    try:
        for sample, end in _group_by_key(iter_members(stream, limit=limit), where):
            if "json" not in sample or sample.keys().isdisjoint(IMAGE_EXTENSIONS):
                raise ShardError(
                    f"shard {where}: sample {sample['__key__']!r} lacks its image or its .json "
                    "annotation; this is not a shard written by this tool; "
                    + rewrite_advice(storage, shard)
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
            f"({exc}); {rewrite_advice(storage, shard)}"
        ) from None
    finally:
        stream.close()
    if count != shard.samples:
        raise ShardError(
            f"shard {where} is truncated: it holds {count} samples, its manifest says "
            f"{shard.samples}; {rewrite_advice(storage, shard)}"
        )
    if shard.crc32 is not None and (stream.nbytes, stream.crc32) != (shard.bytes, shard.crc32):
        raise ShardError(
            f"shard {where} changed after it was written: {stream.nbytes} bytes with CRC-32 "
            f"{stream.crc32:08x}, its manifest says {shard.bytes} bytes with CRC-32 "
            f"{shard.crc32:08x} (damaged or replaced); {rewrite_advice(storage, shard)}"
        )
    if pending is not None:  # the last sample also carries the end blocks: totals are exact
        sample, nbytes, read_s = pending
        yield sample, nbytes + stream.nbytes - given_bytes, read_s + stream.read_s - given_s


def rewrite_advice(storage: Storage, shard: ShardInfo) -> str:
    """The advice that ends every shard error: the folder of ``shard`` to delete."""
    folder = shard.key.rsplit("/", 1)[0] if "/" in shard.key else ""
    return f"delete {storage.describe(folder)} and the shards are written again on next use"


def _group_by_key(
    members: Iterator[tuple[str, bytes, int]], url: str
) -> Iterator[tuple[dict, int]]:
    """Group consecutive members sharing a key into samples, the WebDataset convention: the key
    is the name up to the first ``.`` of its last path component, the rest the field name
    (``000000007.jpg`` → key ``000000007``, field ``jpg``). Yields ``(sample, end)``, ``end``
    the stream offset just past the sample's last member.

    Raises:
        pipelines.tar_stream.TarFormatError: a sample holds two members with the same name
            (WebDataset's ``group_by_keys`` refuses them too: the second would silently
            replace the first).
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
