"""The memory benchmark's data on disk for the local S3 server: one big shard, many tiny keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.memory.measure import LIST_PREFIX, SHARD_PREFIX, SUBPREFIXES
from datagen.images import spec_from_preset
from datagen.synthetic import generate_dataset
from pipelines.formats.voc import load_voc_split
from pipelines.shards.manifest import ShardInfo
from pipelines.shards.writer import write_shards
from pipelines.storage.filesystem import FileSystemStorage


def build_shard(bucket_dir: Path, shard_bytes: int) -> ShardInfo:
    """Write one shard of about ``shard_bytes`` bytes under ``bucket_dir/shards/bench/``.

    32 synthetic ~150 KB images (``mlperf`` preset) are written to ``bucket_dir/voc`` and repeated
    under new ids through :func:`write_shards`, which streams the tar to a temporary file (nothing
    of the shard's size is held in memory).
    """
    storage = FileSystemStorage(bucket_dir)
    generate_dataset(
        FileSystemStorage(bucket_dir / "voc"),
        spec_from_preset("mlperf", seed=7),
        32,
        test_fraction=0,
        progress=False,
    )
    sources, _ = load_voc_split(storage, "train", root="voc")
    sizes = [storage.size(r.image_key) for r in sources]
    records, total, i = [], 1024, 0
    while total < shard_bytes:
        record = sources[i % len(sources)]
        records.append(dataclasses.replace(record, id=f"{record.id}_{i:07d}"))
        total += 512 + (sizes[i % len(sources)] + 511) // 512 * 512 + 1536  # image + json
        i += 1
    shards = write_shards(storage, records, SHARD_PREFIX, target_bytes=2 * total + 10**6)
    assert len(shards) == 1, shards
    return shards[0]


def make_keys(bucket_dir: Path, keys: int) -> None:
    """Create ``keys`` one-byte files under ``bucket_dir/list/p<j>/JPEGImages/`` (10 folders)."""
    per = -(-keys // SUBPREFIXES)
    made = 0
    for j in range(SUBPREFIXES):
        folder = bucket_dir / LIST_PREFIX / f"p{j}" / "JPEGImages"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(per, keys - made)):
            with open(folder / f"synth_{made + i:07d}.jpg", "wb") as f:
                f.write(b"x")
        made += min(per, keys - made)
