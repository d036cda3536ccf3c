"""Raw baselines (cat-style file reads, boto3 GET pool) and peer libraries (ImageFolder-style,
s3torchconnector map/iterable) read exactly the objects they are given, and report consistent
rates."""

from __future__ import annotations

import itertools
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from bench.loading.baselines import BaselineResult, fs_read_baseline, s3_get_baseline
from bench.loading.peers import (
    DetectionWork,
    decode,
    imagefolder_peer,
    s3torchconnector_peer,
    s3torchconnector_reason,
    webdataset_peer,
)
from bench.page_cache import EvictBeforeRead, evict_page_cache
from datagen.upload import upload_tree
from pipelines.formats.voc import load_voc_split
from pipelines.shards.writer import write_shards
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from tests.helpers import resident_fraction

_numbers = itertools.count()


def assert_consistent(result: BaselineResult, objects: int, nbytes: int) -> None:
    assert (result.objects, result.bytes) == (objects, nbytes)
    assert result.seconds > 0
    assert result.mbps == pytest.approx(nbytes / result.seconds / 1e6)
    assert result.objects_per_s == pytest.approx(objects / result.seconds)
    assert result.cpu.seconds == result.seconds  # CPU charged over the timed window
    assert result.cpu.client_s >= 0 and result.cpu.host_s >= 0


def write_files(tmp_path: Path) -> list[Path]:
    sizes = [0, 1, 70_000, 3 * 1024 * 1024 + 17]  # empty, tiny, one JPEG, several chunks
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def test_fs_baseline_reads_every_byte_warm_and_cold(tmp_path):
    paths = write_files(tmp_path)
    total = sum(p.stat().st_size for p in paths)

    warm = fs_read_baseline(paths, chunk_bytes=64 * 1024)
    assert_consistent(warm, len(paths), total)
    assert (warm.name, warm.threads, warm.evicted) == ("fs-read", 1, False)

    cold = fs_read_baseline(paths, cold=True)
    assert_consistent(cold, len(paths), total)
    assert (cold.name, cold.evicted) == ("fs-read-cold", True)

    twice = fs_read_baseline(paths * 2, cold=True)  # a file listed twice is read twice
    assert_consistent(twice, 2 * len(paths), 2 * total)

    threads = fs_read_baseline(paths * 2, threads=3, cold=True)  # one thread per rank
    assert_consistent(threads, 2 * len(paths), 2 * total)
    assert (threads.threads, threads.evicted) == (3, True)

    with pytest.raises(ValueError, match="no files"):
        fs_read_baseline([])
    with pytest.raises(FileNotFoundError):
        fs_read_baseline([tmp_path / "missing"])


class ResidencyAtOpen(FileSystemStorage):
    """A filesystem that records the share of each file in the page cache when asked to open
    it."""

    def __init__(self, root):
        super().__init__(root)
        self.resident: list[float] = []

    def open(self, key):
        self.resident.append(resident_fraction(self.root / key))
        return super().open(key)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore(2) and fadvise: Linux")
def test_eviction_drops_the_pages_and_evict_before_read_reads_cold(tmp_path):
    paths = write_files(tmp_path)
    big = paths[-1]  # 3 MiB, just written: its pages are cached (dirty, then clean)
    assert evict_page_cache(paths) is True
    if resident_fraction(big) > 0.1:
        pytest.skip("this filesystem keeps evicted pages (tmpfs, a network mount)")
    big.read_bytes()
    assert resident_fraction(big) > 0.9
    inner = ResidencyAtOpen(tmp_path)
    storage = EvictBeforeRead(inner, tmp_path)
    with storage.open(big.name) as f:
        assert inner.resident[0] < 0.1  # evicted before the storage was asked to open it
        assert f.read() == big.read_bytes()
    assert storage.read(big.name) == big.read_bytes()
    clone = pickle.loads(pickle.dumps(storage))  # DataLoader workers get a copy
    assert clone.read_range(big.name, 5, 10) == big.read_bytes()[5:15]
    assert [*clone.list("")] == [p.name for p in paths] and clone.size(big.name) > 3 * 2**20
    with pytest.raises(FileNotFoundError):
        evict_page_cache([tmp_path / "missing"])


CLASSES = {"RBC": 1, "WBC": 2, "Platelets": 3}


def jpegs(voc_root: Path) -> list[Path]:
    return sorted((voc_root / "JPEGImages").glob("*.jpg"))


def records_of(voc_root: Path, paths: list[Path]) -> list:
    """The records (boxes) of ``paths``, in their order, from both splits of the VOC tree."""
    storage = FileSystemStorage(voc_root)
    by_name = {
        Path(r.image_key).name: r
        for split in ("train", "test")
        for r in load_voc_split(storage, split)[0]
    }
    return [by_name[p.name] for p in paths]


def test_imagefolder_peer_counts_samples_and_bytes_and_builds_the_targets(voc_root):
    paths = jpegs(voc_root)  # 18 images
    records = records_of(voc_root, paths)
    total = sum(p.stat().st_size for p in paths)
    common = dict(image_size=64, class_to_index=CLASSES)
    everything = imagefolder_peer(
        paths, records, batch_size=4, num_workers=0, warmup_batches=0, **common
    )
    assert (everything.name, everything.samples, everything.batches) == ("imagefolder", 18, 5)
    assert everything.bytes == total
    assert everything.samples_per_s == pytest.approx(18 / everything.seconds)
    assert everything.mbps == pytest.approx(total / everything.seconds / 1e6)

    after_warmup = imagefolder_peer(paths, records, batch_size=4, num_workers=2, **common)
    assert (after_warmup.samples, after_warmup.batches) == (18 - 2 * 4, 3)
    assert (after_warmup.warmup_batches, after_warmup.seconds > 0) == (2, True)
    twice = imagefolder_peer(
        paths, records, batch_size=4, num_workers=0, warmup_batches=0, epochs=2, **common
    )
    assert (twice.samples, twice.bytes) == (36, 2 * total)  # two epochs, back to back

    limited = imagefolder_peer(
        paths, records, batch_size=4, num_workers=0, max_batches=1, warmup_batches=1, **common
    )
    assert (limited.samples, limited.batches) == (4, 1)

    with pytest.raises(ValueError, match="warm-up"):
        imagefolder_peer(paths, records, batch_size=8, num_workers=0, warmup_batches=3, **common)
    image, target = DetectionWork(64, CLASSES)(decode(paths[0].read_bytes()), records[0])
    assert image.dtype == torch.float32 and min(image.shape[-2:]) == 64  # our transform's work
    assert len(target["boxes"]) == len(target["labels"]) == len(records[0].boxes)


def test_webdataset_peer_reads_the_shards_each_worker_its_share_per_epoch(voc_root):
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")  # 12 images
    shards = write_shards(storage, records, "shards/train", target_bytes=60_000)
    files = [voc_root / s.key for s in shards]
    result = webdataset_peer(
        files, batch_size=4, num_workers=2, image_size=64, class_to_index=CLASSES,
        warmup_batches=0, epochs=2,
    )  # fmt: skip
    assert result.name == "webdataset" and result.samples == 24  # every sample, twice
    members = sum(len(storage.read(r.image_key)) for r in records)
    assert result.bytes > 2 * members  # images and their annotations


@pytest.fixture(scope="module")
def s3_jpegs(s3_server, tmp_path_factory):
    """The 18 BCCD JPEGs of a VOC tree in a new bucket under ``imgs/``: (storage, keys, sizes)."""
    from tests.helpers import make_voc_subset

    voc = make_voc_subset(tmp_path_factory.mktemp("voc") / "bccd", {"train": 12, "test": 6})
    bucket = f"bench-baselines-{os.getpid()}-{next(_numbers)}"
    storage = S3Storage(bucket, "imgs", endpoint_url=s3_server.endpoint, max_attempts=2)
    storage.client().create_bucket(Bucket=bucket)
    upload_tree(voc / "JPEGImages", storage, progress=False)
    paths = jpegs(voc)
    by_name.update(zip((p.name for p in paths), records_of(voc, paths), strict=True))
    return storage, [p.name for p in paths], sum(p.stat().st_size for p in paths)


#: The records of the S3 test's objects, by object name (filled by ``s3_jpegs``).
by_name: dict = {}


@pytest.mark.integration
def test_s3_baseline_reads_every_byte(s3_jpegs):
    storage, keys, total = s3_jpegs
    result = s3_get_baseline(storage, keys, threads=4, chunk_bytes=16 * 1024)
    assert_consistent(result, len(keys), total)
    assert (result.name, result.threads, result.evicted) == ("s3-get", 4, False)

    with pytest.raises(ValueError, match="max_pool_connections"):
        s3_get_baseline(storage, keys, threads=storage.max_pool_connections + 1)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["map", "iterable"])
def test_s3torchconnector_peers_count_samples_and_bytes(s3_jpegs, s3_server, kind):
    assert s3torchconnector_reason() is None  # installed with the project
    storage, keys, total = s3_jpegs
    records = [by_name[k] for k in keys]
    result = s3torchconnector_peer(
        kind, storage.bucket, [storage._key(k) for k in keys], records,
        endpoint=s3_server.endpoint, region="us-east-1", batch_size=4, num_workers=2,
        image_size=64, class_to_index=CLASSES, warmup_batches=0,
    )  # fmt: skip
    assert result is not None
    # iterable: each of the 2 workers batches its own half (9 objects: 4 + 4 + 1)
    assert (result.name, result.samples, result.batches) == (
        f"s3torchconnector-{kind}",
        18,
        5 if kind == "map" else 6,
    )
    assert result.bytes == total  # every object read once, fully
    assert result.samples_per_s == pytest.approx(18 / result.seconds)


def test_a_baseline_too_short_to_time_reads_the_objects_over_until_it_is_not(voc_root):
    from bench.loading.config import BenchConfig
    from bench.loading.diagnosis import MIN_BASELINE_S
    from bench.loading.run import MAX_BASELINE_ROUNDS, measure_baseline
    from bench.storages import prepare_fs
    from training.config import load_config

    cfg = load_config(
        None,
        [f"storage.root={voc_root.parent}", f"storage.prefixes=[{voc_root.name}]",
         "dataset.limit=4", "dataset.classes=[RBC, WBC, Platelets]"], BenchConfig,
    )  # fmt: skip
    prepared = prepare_fs(cfg)
    one_round = sum(os.path.getsize(voc_root.parent / r.image_key) for r in prepared.records)
    base = measure_baseline(prepared, None, "fs", "random", cfg, repeat=1, evict_dir=None)
    rounds, rest = divmod(base.bytes, one_round)
    assert rest == 0 and base.objects == rounds * 4  # whole rounds over the same four images
    # 4 small images from the page cache take well under 0.1 s: read over until they do not
    assert base.seconds >= MIN_BASELINE_S or rounds == MAX_BASELINE_ROUNDS
    assert rounds > 1


@pytest.mark.integration
@pytest.mark.parametrize("workers", [0, 2])
def test_s3dlio_peer_reads_each_object_once_per_epoch(s3_jpegs, s3_server, workers):
    """s3dlio's ObjectStoreMapDataset, restricted to the given keys (the folder also holds
    another object), in the main process or in workers started by a fork server."""
    from bench.loading.s3dlio_peer import s3dlio_peer
    from pipelines.storage.s3dlio_storage import S3dlioStorage

    storage, keys, total = s3_jpegs
    storage.write("extra.bin", b"not a sample")  # beside them: listed by s3dlio, never read
    dlio = S3dlioStorage(storage.bucket, endpoint_url=s3_server.endpoint)
    result = s3dlio_peer(
        dlio, [storage._key(k) for k in keys], [by_name[k] for k in keys], batch_size=4,
        num_workers=workers, image_size=64, class_to_index=CLASSES, warmup_batches=0,
    )  # fmt: skip
    assert (result.name, result.samples, result.batches) == ("s3dlio-map", 18, 5)
    assert result.bytes == total  # every object read once, fully
