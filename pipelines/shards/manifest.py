"""WebDataset tar shards: the layout, and the manifest that describes a complete set.

Layout (the WebDataset convention, https://github.com/webdataset/webdataset): a POSIX tar whose
members are grouped into samples by basename; each sample here is ``<n>.jpg`` (or ``.png``; the
original image bytes, unchanged) and ``<n>.json`` (the annotation: :meth:`to_json` of a
:mod:`pipelines.formats.records` record), ``<n>`` its zero-padded position in the split. A
``manifest.json`` beside the shards, written last (so a manifest means a complete set), lists
each :class:`ShardInfo` and each sample's :class:`SourceStamp`; its shard names are relative
to it, so a shard folder can be copied or uploaded under another prefix and still be read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from common.errors import UserError
from pipelines.formats.records import Record
from pipelines.storage.base import Storage

MANIFEST = "manifest.json"


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


#: Manifest format: 2 adds each shard's CRC-32 and each sample's :class:`SourceStamp`.
MANIFEST_VERSION = 2


class ShardError(UserError):
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
            (:meth:`pipelines.storage.base.Storage.versions`: a filesystem's modification time in
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

    Each record (matched by image id) is checked: the annotation it would be written with now
    against the recorded digest, its image's size and version (:meth:`Storage.versions`: one
    stat per file on a filesystem, listings of the image folders on S3) against the recorded
    ones. An image of the same size but another version is compared by content: an S3 ETag that
    is the recorded MD5 (a single-part upload of the same bytes) settles it without a read;
    otherwise the image is read and hashed (once: the caller records the new versions).

    Raises:
        pipelines.storage.base.StorageError: the storage cannot be listed or an image read.
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
    """Write the manifest again with the images' new ``versions`` (image id → version).

    The next check then does not read them again (see :class:`SourceCheck`).

    Raises:
        pipelines.storage.base.StorageError: the manifest cannot be written (read-only storage).
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


def rewrite_advice(storage: Storage, shard: ShardInfo) -> str:
    """The advice that ends every shard error: the folder of ``shard`` to delete."""
    folder = shard.key.rsplit("/", 1)[0] if "/" in shard.key else ""
    return f"delete {storage.describe(folder)} and the shards are written again on next use"
