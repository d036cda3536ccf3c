"""WebDataset shards: write then read back, determinism, atomicity, truncation."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from pipelines.loaders import ensure_shards
from pipelines.shards import ShardError, iter_shard, read_manifest, write_shards
from pipelines.storage import FileSystemStorage
from pipelines.voc import load_voc_split


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
        for sample, nbytes, _ in iter_shard(storage, shard):
            annotation = json.loads(sample["json"])
            record = by_id.pop(annotation["id"])
            assert sample["jpg"] == storage.read(record.image_key)  # image bytes unchanged
            assert annotation == record.to_json()
            total += nbytes
    assert not by_id
    assert total == sum(s.bytes for s in shards)  # every byte of every shard counted once


def test_each_sample_is_charged_the_bytes_of_its_own_members(split):
    storage, records = split
    (shard,) = write_shards(storage, records, "shards/train", target_bytes=10**9)
    samples = list(iter_shard(storage, shard))  # one 1 MiB read covers several samples

    def span(sample):  # two members: a 512-byte header each, data padded to 512 bytes
        return sum(512 + -(-len(sample[k]) // 512) * 512 for k in ("jpg", "json"))

    assert [nbytes for _, nbytes, _ in samples[:-1]] == [span(s) for s, _, _ in samples[:-1]]
    last, nbytes, _ = samples[-1]
    assert nbytes == span(last) + shard.bytes - sum(span(s) for s, _, _ in samples)
    assert all(read_s >= 0 for _, _, read_s in samples)


def test_manifest_lists_the_shards(split):
    storage, records = split
    shards = write_shards(storage, records, "shards/train", target_bytes=100_000)
    assert read_manifest(storage, "shards/train") == (shards, 100_000)


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
