"""The shards the tool writes when no size is named: at most 1 MB, and enough for the readers."""

from __future__ import annotations

from pipelines.formats.voc import load_voc_split
from pipelines.shards.sizing import DEFAULT_SHARD_BYTES, plan_shards
from pipelines.shards.writer import ensure_shards
from pipelines.storage.filesystem import FileSystemStorage
from tests.helpers import make_voc_subset


def test_a_small_split_gets_two_shards_per_reader_beside_the_default_ones(tmp_path):
    storage = FileSystemStorage(make_voc_subset(tmp_path / "bccd", {"train": 12, "test": 1}))
    records, _ = load_voc_split(storage, "train")  # 12 images of ~23 kB: one 1 MB shard
    alone = plan_shards(storage, records, "shards/train", readers=1, split="train")
    assert alone.prefix == "shards/train-for2" and alone.target_bytes < DEFAULT_SHARD_BYTES
    ensure_shards(storage, records, "shards/train", target_bytes=DEFAULT_SHARD_BYTES)
    plan = plan_shards(storage, records, "shards/train", readers=4, split="train")
    assert plan.prefix == "shards/train-for8"
    assert "would be 1 written, and 4 reader(s)" in plan.reason
    shards, _ = ensure_shards(storage, records, plan.prefix, target_bytes=plan.target_bytes)
    assert len(shards) >= 8 and sum(s.samples for s in shards) == 12
    assert (storage.root / "shards/train/manifest.json").exists()  # the old shards stay
    again = plan_shards(storage, records, plan.prefix, readers=4, split="train")
    assert (again.prefix, again.reason) == (plan.prefix, "")  # written: reused as they are


def test_a_split_large_enough_keeps_the_default_shards(tmp_path, monkeypatch):
    import pipelines.shards.sizing as sizing

    storage = FileSystemStorage(make_voc_subset(tmp_path / "bccd", {"train": 12, "test": 1}))
    records, _ = load_voc_split(storage, "train")  # ~280 kB of images
    monkeypatch.setattr(sizing, "DEFAULT_SHARD_BYTES", 50_000)  # 5 shards of up to 50 kB
    plan = plan_shards(storage, records, "shards/train", readers=2, split="train")
    assert (plan.prefix, plan.target_bytes, plan.reason) == ("shards/train", 50_000, "")
    assert plan_shards(storage, records, "shards/train", readers=3, split="train").reason
