"""WebDataset shards: write then read back, determinism, atomicity, truncation."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib

import pytest

from pipelines.formats.voc import load_voc_split
from pipelines.shards.manifest import ShardError, ShardInfo, read_manifest
from pipelines.shards.reader import iter_shard
from pipelines.shards.writer import ensure_shards, write_shards
from pipelines.storage.filesystem import FileSystemStorage
from tests.helpers import CountingStorage


@pytest.fixture
def split(voc_root):
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")
    return storage, records


def test_round_trip_keeps_image_bytes_and_annotations(split):
    storage, records = split
    shards = write_shards(storage, records, "shards/train", target_bytes=100_000)
    assert len(shards) > 1
    assert [i for s in shards for i in s.ids] == [r.id for r in records]  # written in order
    by_id = {r.id: r for r in records}
    total = 0
    for shard in shards:
        assert storage.size(shard.key) == shard.bytes <= 100_000
        for sample, share in iter_shard(storage, shard):
            annotation = json.loads(sample["json"])
            record = by_id.pop(annotation["id"])
            assert sample["jpg"] == storage.read(record.image_key)  # image bytes unchanged
            assert annotation == record.to_json()
            total += share.nbytes
    assert not by_id
    assert total == sum(s.bytes for s in shards)  # every byte of every shard counted once


def test_a_write_that_fails_part_way_leaves_no_shard_behind(split, voc_root):
    from dataclasses import replace

    from pipelines.storage.base import StorageError

    storage, records = split
    gone = replace(records[-1], image_key="JPEGImages/not_there.jpg")  # fails after a few shards
    with pytest.raises(StorageError, match="not_there.jpg"):
        write_shards(storage, [*records[:-1], gone], "shards/train", target_bytes=100_000)
    left = sorted((voc_root / "shards").rglob("*")) if (voc_root / "shards").exists() else []
    assert [p for p in left if p.is_file()] == []  # the shards put before the failure went
    assert len(write_shards(storage, records, "shards/train", target_bytes=100_000)) > 1


def test_each_sample_is_charged_the_bytes_of_its_own_members(split):
    storage, records = split
    (shard,) = write_shards(storage, records, "shards/train", target_bytes=10**9)
    samples = list(iter_shard(storage, shard))  # one 1 MiB read covers several samples

    def span(sample):  # two members: a 512-byte header each, data padded to 512 bytes
        return sum(512 + -(-len(sample[k]) // 512) * 512 for k in ("jpg", "json"))

    assert [share.nbytes for _, share in samples[:-1]] == [span(s) for s, _ in samples[:-1]]
    last, share = samples[-1]
    assert share.nbytes == span(last) + shard.bytes - sum(span(s) for s, _ in samples)
    assert all(share.seconds >= 0 for _, share in samples)
    # the shard's one request (its open) on its first sample; the shares add up to the stream
    assert [share.requests for _, share in samples] == [1] + [0] * (len(samples) - 1)
    assert sum(share.nbytes for _, share in samples) == shard.bytes


def test_manifest_lists_the_shards(split):
    storage, records = split
    shards = write_shards(storage, records, "shards/train", target_bytes=100_000)
    manifest = read_manifest(storage, "shards/train")
    assert (manifest.shards, manifest.target_bytes) == (shards, 100_000)
    for shard in shards:  # size and CRC-32 of the bytes on disk, computed while writing
        data = storage.read(shard.key)
        assert (shard.bytes, shard.crc32) == (len(data), zlib.crc32(data))
    for record in records:  # what each sample was built from
        stamp = manifest.sources[record.id]
        image = storage.read(record.image_key)
        assert stamp.image_bytes == len(image)
        assert stamp.image_md5 == hashlib.md5(image).hexdigest()
        assert stamp.image_version == str(os.stat(storage.describe(record.image_key)).st_mtime_ns)


def test_output_is_deterministic_and_leaves_no_temporary_files(split, voc_root):
    storage, records = split
    first = write_shards(storage, records, "a/train", target_bytes=80_000)
    second = write_shards(storage, records, "b/train", target_bytes=80_000)
    for x, y in zip(first, second, strict=True):
        assert storage.read(x.key) == storage.read(y.key)
    assert sorted(p.name for p in (voc_root / "a" / "train").iterdir()) == sorted(
        [s.key.rsplit("/", 1)[1] for s in first] + ["manifest.json"]
    )


def test_shards_are_valid_tar_files_with_jpg_and_json_members(split, voc_root):
    storage, records = split
    shards = write_shards(storage, records, "shards/train", target_bytes=10**9)
    with tarfile.open(voc_root / shards[0].key) as tar:
        names = tar.getnames()
    assert names[:2] == ["000000000.jpg", "000000000.json"]
    assert len(names) == 2 * len(records)


def test_truncated_shard_is_reported_with_its_name(split, voc_root):
    storage, records = split
    shards = write_shards(storage, records, "shards/train", target_bytes=10**9)
    path = voc_root / shards[0].key
    path.write_bytes(path.read_bytes()[: shards[0].bytes // 2])
    with pytest.raises(ShardError, match=rf"shard {path} is truncated or corrupt after \d+ of 12"):
        list(iter_shard(storage, shards[0]))


def test_shard_cut_at_a_member_boundary_lacks_its_end_marker(split, voc_root):
    storage, records = split
    shards = write_shards(storage, records, "shards/train", target_bytes=10**9)
    path = voc_root / shards[0].key
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    cut = members[4].offset  # the start of the third sample's image header
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ShardError, match=rf"shard {path} is truncated or corrupt .*end-of-archive"):
        list(iter_shard(storage, shards[0]))


def test_a_complete_tar_with_fewer_samples_is_caught_by_the_manifest_count(split, voc_root):
    storage, records = split
    shards = write_shards(storage, records, "shards/train", target_bytes=10**9)
    path = voc_root / shards[0].key
    with tarfile.open(path) as tar:
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers()[:4]]
    with tarfile.open(path, "w") as tar:  # a well-formed tar of the first two samples
        for member, data in kept:
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(
        ShardError, match=rf"shard {path} is truncated: it holds 2 samples, its manifest says 12"
    ):
        list(iter_shard(storage, shards[0]))


def test_ensure_shards_writes_once_then_reuses(split):
    storage, records = split
    shards, written = ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    again, written_again = ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    assert written and not written_again and again == shards


def test_ensure_shards_refuses_shards_of_another_image_set(split):
    storage, records = split
    ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    with pytest.raises(ShardError, match="hold 12 images that are not the split's 11"):
        ensure_shards(storage, records[:11], "shards/train", target_bytes=100_000)


# -- damage after writing: named, with the folder to delete -----------------------------------


def rewrite_tar(path, members):
    """Write ``members`` ((TarInfo, bytes) pairs) as the tar at ``path``, as TarWriter does."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))


def test_duplicate_member_in_a_sample_is_a_shard_error(split, voc_root):
    """Two ``.jpg`` members for one sample: the second would silently replace the first."""
    storage, records = split
    (shard,) = write_shards(storage, records, "shards/train", target_bytes=10**9)
    path = voc_root / shard.key
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    members.insert(1, members[0])  # 000000000.jpg, 000000000.jpg, 000000000.json, ...
    rewrite_tar(path, members)
    plain = ShardInfo(shard.key, 0, shard.samples, shard.ids)  # no size/CRC: the parser alone
    with pytest.raises(
        ShardError,
        match=rf"shard {path} is truncated or corrupt after 0 of 12 samples \(member "
        r"'000000000.jpg' appears twice in sample '000000000'.*\); delete .*shards/train and",
    ):
        list(iter_shard(storage, plain))


def test_malformed_size_names_shard_member_and_folder(split, voc_root):
    storage, records = split
    (shard,) = write_shards(storage, records, "shards/train", target_bytes=10**9)
    path = voc_root / shard.key
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        third = tar.getmembers()[2]  # 000000001.jpg
    header = data[third.offset : third.offset + 512]
    header[124:136] = b"-0000000001\0"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[third.offset : third.offset + 512] = header
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError) as caught:
        list(iter_shard(storage, shard))
    message = str(caught.value)
    assert f"shard {path}" in message and "member '000000001.jpg'" in message
    assert "member size -1 is negative" in message
    assert f"delete {voc_root / 'shards/train'} and the shards are written again" in message


def test_bytes_changed_after_writing_are_caught_by_the_checksum(split, voc_root):
    """A flipped byte inside an image leaves a well-formed tar: only the CRC-32 recorded while
    writing sees it, checked from the bytes streamed before the last sample is given."""
    storage, records = split
    (shard,) = write_shards(storage, records, "shards/train", target_bytes=10**9)
    path = voc_root / shard.key
    data = bytearray(path.read_bytes())
    data[512 + 1000] ^= 0x01  # inside the first image
    path.write_bytes(bytes(data))
    samples = iter_shard(storage, shard)
    given = []
    with pytest.raises(ShardError, match=rf"shard {path} changed after it was written") as caught:
        for sample in samples:
            given.append(sample)
    assert len(given) == shard.samples - 1  # the last sample is held back until the check
    assert f"delete {voc_root / 'shards/train'}" in str(caught.value)


def test_a_replaced_shard_of_the_same_sample_count_is_caught(split, voc_root):
    storage, records = split
    first, second = write_shards(storage, records, "shards/train", target_bytes=100_000)[:2]
    (voc_root / first.key).write_bytes((voc_root / second.key).read_bytes())
    assert first.samples == second.samples
    with pytest.raises(ShardError, match="changed after it was written"):
        list(iter_shard(storage, first))


def test_corrupt_annotation_member_is_a_shard_error_in_the_stream(split, voc_root):
    """A sample whose .json member does not parse stops the stream with the shard named,
    not a bare JSONDecodeError from a DataLoader worker."""
    from pipelines.access.shard_stream import ShardStream
    from pipelines.samples import detection_transform

    storage, records = split
    (shard,) = write_shards(storage, records, "shards/train", target_bytes=10**9)
    path = voc_root / shard.key
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    member, annotation = members[1]
    members[1] = (member, b"{" + annotation[1:-1] + b"!")  # same size, broken JSON
    rewrite_tar(path, members)
    stream = ShardStream(
        storage, [ShardInfo(shard.key, 0, shard.samples, shard.ids)],
        detection_transform(False, 64), {"RBC": 1, "WBC": 2, "Platelets": 3},
        shuffle=False, shuffle_buffer=1, seed=0,
    )  # fmt: skip
    with pytest.raises(ShardError, match=r"member 000000000.json is not an annotation"):
        next(iter(stream))


# -- shards follow the data they were built from ------------------------------------------------


def shard_labels(storage, shards):
    return {
        json.loads(s["json"])["id"]: json.loads(s["json"])["labels"]
        for shard in shards
        for s, _ in iter_shard(storage, shard)
    }


def test_changed_label_rewrites_the_shards(split, voc_root, caplog):
    """The issue's case: a label fixed in an annotation file after the shards were written
    reached random access but not sequential access."""
    storage, records = split
    ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    xml = voc_root / "Annotations" / f"{records[4].id}.xml"
    xml.write_text(xml.read_text().replace("<name>RBC</name>", "<name>WBC</name>", 1))
    fixed, _ = load_voc_split(storage, "train")
    assert fixed[4].labels != records[4].labels
    shards, written = ensure_shards(storage, fixed, "shards/train", target_bytes=100_000)
    assert written
    assert f"{records[4].id}: annotation changed" in caplog.text
    assert shard_labels(storage, shards)[records[4].id] == list(fixed[4].labels)
    _, written_again = ensure_shards(storage, fixed, "shards/train", target_bytes=100_000)
    assert not written_again  # fresh now


def test_replaced_image_rewrites_the_shards(split, voc_root, caplog):
    storage, records = split
    ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    target = voc_root / records[2].image_key
    target.write_bytes((voc_root / records[3].image_key).read_bytes())  # another photo
    shards, written = ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    assert written and f"{records[2].id}: image changed" in caplog.text
    images = {
        json.loads(s["json"])["id"]: s["jpg"]
        for shard in shards
        for s, _ in iter_shard(storage, shard)
    }
    assert images[records[2].id] == target.read_bytes()


def test_rewrite_removes_shards_the_new_manifest_does_not_list(split, voc_root):
    storage, records = split
    old, _ = ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    xml = voc_root / "Annotations" / f"{records[0].id}.xml"
    xml.write_text(xml.read_text().replace("<name>RBC</name>", "<name>WBC</name>", 1))
    fixed, _ = load_voc_split(storage, "train")
    new, _ = ensure_shards(storage, fixed, "shards/train", target_bytes=10**9)
    assert len(new) == 1 < len(old)
    on_disk = sorted(p.name for p in (voc_root / "shards/train").iterdir())
    assert on_disk == ["manifest.json", "train-000000.tar"]


def test_manifest_without_sources_is_rewritten(split, voc_root, caplog):
    """Shards written by an earlier version of the tool record no sources: written again."""
    storage, records = split
    ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    path = voc_root / "shards/train/manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["shards"]:
        del entry["sources"], entry["crc32"]
    path.write_text(json.dumps(manifest))
    assert read_manifest(storage, "shards/train").sources is None
    _, written = ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    assert written and "records no sources" in caplog.text
    assert read_manifest(storage, "shards/train").sources is not None


def test_unchanged_data_reuses_the_shards_without_reading_images(split):
    storage, records = split
    ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    counted = CountingStorage(storage)
    _, written = ensure_shards(counted, records, "shards/train", target_bytes=100_000)
    assert not written
    assert counted.reads == 1  # the manifest; images are only stat'ed


def test_same_bytes_with_a_new_modification_time_keep_the_shards(split, voc_root, caplog):
    """A copy that did not keep modification times: the images are hashed once, the shards
    kept, and the manifest records the new versions, so the next check reads nothing."""
    caplog.set_level("INFO")
    storage, records = split
    shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    for record in records[:3]:
        os.utime(voc_root / record.image_key, ns=(10**18, 10**18))
    counted = CountingStorage(storage)
    again, written = ensure_shards(counted, records, "shards/train", target_bytes=100_000)
    assert not written and again == shards
    assert counted.reads == 1 + 3  # reads: the manifest, three images hashed
    assert "3 images in" in caplog.text and "new versions but the same bytes" in caplog.text
    sources = read_manifest(storage, "shards/train").sources
    assert sources[records[0].id].image_version == str(10**18)
    counted = CountingStorage(storage)
    _, written = ensure_shards(counted, records, "shards/train", target_bytes=100_000)
    assert not written and counted.reads == 1  # ... then only the manifest
