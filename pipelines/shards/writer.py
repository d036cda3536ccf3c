"""Write a split into WebDataset tar shards, or reuse the shards already written for it."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tarfile
import tempfile
import zlib
from collections.abc import Callable

from webdataset.writer import TarWriter

from pipelines.formats.records import Record
from pipelines.shards.manifest import (
    IMAGE_EXTENSIONS,
    MANIFEST,
    Manifest,
    ShardError,
    ShardInfo,
    SourceStamp,
    _manifest_json,
    annotation_bytes,
    annotation_digest,
    changed_sources,
    read_manifest,
    record_versions,
)
from pipelines.storage.base import Storage, StorageError

log = logging.getLogger(__name__)


def write_shards(
    storage: Storage,
    records: list[Record],
    prefix: str,
    *,
    target_bytes: int,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> list[ShardInfo]:
    """Write ``records`` (in order) into tar shards of about ``target_bytes`` each.

    A shard closes before the sample that would take it past ``target_bytes``; a sample larger
    than the target gets a shard of its own. Each shard is written to a local temporary file (its
    CRC-32 computed as it is written) and handed to ``storage.put_file`` only when complete, so a
    reader never sees a partial shard; the manifest, with each sample's :class:`SourceStamp`, is
    written last. When writing fails or is interrupted, the shards already written are removed
    again. The images' versions are taken before they are read, so an image replaced meanwhile
    shows as changed on the next check, never the other way round. The output is deterministic:
    same records, same bytes.

    Args:
        storage: reads the images and receives the shards.
        records: the split's records; their images are read from ``storage``.
        prefix: key prefix of the shards, e.g. ``shards/train``.
        target_bytes: target shard size in bytes (10^6 bytes = 1 MB).
        on_shard: called with each shard once it is in place (progress reporting).

    Returns:
        The shards written, in order.

    Raises:
        pipelines.storage.base.StorageError: an image cannot be read (message names it).
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
        info = _put_shard(storage, prefix, len(shards), tmp_file, ids)
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
            writer.write(_tar_sample(position, record, image, annotation))
            ids.append(record.id)
            stamps.append(_source_stamp(image, version, annotation))
            size += entry
        finish()
        storage.write(f"{prefix}/{MANIFEST}", _manifest_json(shards, stamps, target_bytes))
    except BaseException:
        _remove(storage, [s.key for s in shards])  # no half-written set is left behind
        raise
    finally:
        _discard_local_shards(writer, tmp_file, tmpdir)
    return shards


def _put_shard(
    storage: Storage, prefix: str, index: int, tmp_file: _ChecksumFile, ids: list[str]
) -> ShardInfo:
    """Put a finished local shard under ``prefix`` as shard ``index``; its :class:`ShardInfo`."""
    key = f"{prefix}/{os.path.basename(prefix)}-{index:06d}.tar"
    info = ShardInfo(
        key=key,
        bytes=tmp_file.nbytes,
        samples=len(ids),
        ids=tuple(ids),
        crc32=tmp_file.crc32,
    )
    storage.put_file(key, tmp_file.path)
    return info


def _tar_sample(position: int, record: Record, image: bytes, annotation: bytes) -> dict:
    """A record's WebDataset sample: key ``position`` (9 digits), image by extension, ``json``."""
    return {
        "__key__": f"{position:09d}",
        _extension(record.image_key): image,
        "json": annotation,
    }


def _source_stamp(image: bytes, version: str, annotation: bytes) -> SourceStamp:
    """What a sample was written from: image size, version, MD5, and the annotation's SHA-256."""
    return SourceStamp(
        image_bytes=len(image),
        image_version=version,
        image_md5=hashlib.md5(image, usedforsecurity=False).hexdigest(),
        annotation_sha256=annotation_digest(annotation),
    )


def _discard_local_shards(
    writer: TarWriter | None, tmp_file: _ChecksumFile | None, tmpdir: str
) -> None:
    """Close the shard being written, if any; delete the local temporary folder and its files."""
    if writer is not None:
        with contextlib.suppress(Exception):  # closed already, or the error is raised
            writer.close()
    if tmp_file is not None:
        tmp_file.close()
    for name in os.listdir(tmpdir):
        os.unlink(os.path.join(tmpdir, name))
    os.rmdir(tmpdir)


def _remove(storage: Storage, keys: list[str]) -> None:
    """Delete ``keys`` as far as it goes; failures are logged (the caller's error is raised)."""
    for key in keys:
        try:
            storage.delete(key)
        except StorageError as exc:
            log.warning("could not remove the partial shard %s: %s", key, exc)


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


def _tar_entry_bytes(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a tar: a 512-byte header + data padded to 512."""
    return 512 + (size + 511) // 512 * 512


def _tar_file_bytes(content: int) -> int:
    """Size of a tar file whose headers, data and end blocks take ``content`` bytes.

    tarfile pads the file to a whole number of 10240-byte records (``tarfile.RECORDSIZE``).
    """
    return (content + tarfile.RECORDSIZE - 1) // tarfile.RECORDSIZE * tarfile.RECORDSIZE


def _extension(key: str) -> str:
    """The image extension used as the member suffix (``jpg``, ``png``)."""
    ext = key.rsplit(".", 1)[-1].lower()
    return ext if ext in IMAGE_EXTENSIONS else "jpg"


def ensure_shards(
    storage: Storage,
    records: list[Record],
    prefix: str,
    *,
    target_bytes: int,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> tuple[list[ShardInfo], bool]:
    """Return the shards of ``records`` under ``prefix``, writing them first if missing or stale.

    Shards found are checked against the split (the same image ids) and the data
    (:func:`pipelines.shards.manifest.changed_sources`). When data changed they are written
    again: the manifest is deleted first (so a run stopped meanwhile writes them again), then
    the shards, the manifest last; shard files the new manifest no longer lists are removed.
    Images with new versions but the same bytes keep the shards, their new versions recorded in
    the manifest when it can be written (else a warning: they are hashed again next time).
    Shards written for another ``target_bytes`` are reused, with a warning.

    Returns:
        ``(shards, written)``: ``written`` is True when they were written by this call.

    Raises:
        ShardError: shards exist under ``prefix`` but hold another set of images (the dataset or
            the split changed; the message says which folder to delete), or the data changed
            and the shards cannot be written again there (read-only storage).
    """
    found = read_manifest(storage, prefix)
    if found is None:
        return write_shards(
            storage, records, prefix, target_bytes=target_bytes, on_shard=on_shard
        ), True
    _check_same_split(storage, records, prefix, found)
    check = changed_sources(storage, records, found)
    if check.changed:
        shards = _rewrite_shards(
            storage, records, prefix, found, check.changed, target_bytes=target_bytes,
            on_shard=on_shard,
        )  # fmt: skip
        return shards, True
    if check.new_versions:
        _record_new_versions(storage, prefix, found, check.new_versions)
    if found.target_bytes != target_bytes:
        log.warning(
            "reusing shards in %s written with a %d-byte target (config asks %d); delete the "
            "folder to write them again",
            storage.describe(prefix),
            found.target_bytes,
            target_bytes,
        )
    return found.shards, False


def _check_same_split(
    storage: Storage, records: list[Record], prefix: str, found: Manifest
) -> None:
    """Refuse shards under ``prefix`` that hold other image ids than ``records``.

    Raises:
        ShardError: the ids differ (the dataset or split changed); the message says which
            folder to delete.
    """
    have = [i for s in found.shards for i in s.ids]
    want = [r.id for r in records]
    if sorted(have) != sorted(want):
        raise ShardError(
            f"the shards in {storage.describe(prefix)} hold {len(have)} images that are not the "
            f"split's {len(want)}: the dataset or split changed since they were written; delete "
            f"{storage.describe(prefix)} and they are written again on next use"
        )


def _rewrite_shards(
    storage: Storage,
    records: list[Record],
    prefix: str,
    found: Manifest,
    changed: list[str],
    *,
    target_bytes: int,
    on_shard: Callable[[ShardInfo], None] | None,
) -> list[ShardInfo]:
    """Write the shards of ``records`` again over ``found``, whose data ``changed`` (a line each).

    The manifest is deleted first, then the shards are written, then the shard files the new
    manifest no longer lists are deleted.

    Raises:
        ShardError: the storage refused a delete or a write (read-only storage).
    """
    log.warning(
        "the data changed since the shards in %s were written (%d of %d samples: %s%s): "
        "writing them again",
        storage.describe(prefix),
        len(changed) if found.sources is not None else len(records),
        len(records),
        "; ".join(changed[:3]),
        "; ..." if len(changed) > 3 else "",
    )
    try:
        storage.delete(f"{prefix}/{MANIFEST}")
        shards = write_shards(
            storage, records, prefix, target_bytes=target_bytes, on_shard=on_shard
        )
        for stale in {s.key for s in found.shards} - {s.key for s in shards}:
            storage.delete(stale)
    except StorageError as exc:
        raise ShardError(
            f"the data changed since the shards in {storage.describe(prefix)} were written "
            f"({changed[0]}), and they cannot be written again there: {exc}; make the "
            "folder writable, or write the shards where they are read from"
        ) from None
    return shards


def _record_new_versions(
    storage: Storage, prefix: str, found: Manifest, new_versions: dict[str, str]
) -> None:
    """Record in the manifest the new versions of images whose bytes did not change.

    A warning, not an error, when the storage refuses the write.
    """
    try:
        record_versions(storage, prefix, found, new_versions)
        log.info(
            "%d images in %s have new versions but the same bytes: recorded",
            len(new_versions),
            storage.describe(prefix),
        )
    except StorageError as exc:
        log.warning(
            "%d images have new versions but the same bytes; the shards in %s are reused, "
            "but the new versions cannot be recorded (%s): each run will hash them again",
            len(new_versions),
            storage.describe(prefix),
            exc,
        )


def shard_prefix(base: str, split: str, limit: int | None) -> str:
    """Key prefix of a split's shards: ``<base>/<split>``, or ``<base>/<split>-first<N>``."""
    return f"{base}/{split}" if limit is None else f"{base}/{split}-first{limit}"
