"""Both access patterns read every image of the split exactly once per epoch."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

import pytest

from bench.page_cache import evict_page_cache
from pipelines.access import shard_stream as sequential
from pipelines.access.loaders import LoaderSettings, build_loader
from pipelines.access.shard_stream import ShardStream
from pipelines.formats.voc import load_voc_split, read_split_ids
from pipelines.samples import detection_transform
from pipelines.shards.writer import ensure_shards
from pipelines.storage.base import RequestStats
from pipelines.storage.filesystem import FileSystemStorage
from tests.helpers import resident_fraction

CLASSES = {"RBC": 1, "WBC": 2, "Platelets": 3}


def epoch_ids(voc_root, access, *, workers, epoch=1, shuffle=True):
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")
    shards = None
    if access == "shards":
        shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=60_000)
        assert len(shards) >= 3
    loader = build_loader(
        storage,
        records,
        access=access,
        transform=detection_transform(True, 64),
        class_to_index=CLASSES,
        settings=LoaderSettings(batch_size=3, num_workers=workers),
        shuffle=shuffle,
        seed=0,
        shards=shards,
        shuffle_buffer=4,
    )
    loader.set_epoch(epoch)
    ids, nbytes = [], 0
    requests = RequestStats()
    for batch in loader:
        ids.extend(batch.ids)
        nbytes += batch.nbytes
        requests.merge(batch.requests)
        assert not batch.errors
    epoch_ids.requests = requests  # the last call's storage requests
    return ids, nbytes, loader.num_samples


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_covers_exactly_the_split(voc_root, access, workers):
    ids, nbytes, num_samples = epoch_ids(voc_root, access, workers=workers)
    split = read_split_ids(FileSystemStorage(voc_root), "train")
    assert Counter(ids) == Counter(split)  # each id once: none skipped, none twice
    assert num_samples == len(split)
    assert nbytes > 0


def test_both_access_modes_read_the_same_samples(voc_root):
    random_ids, random_bytes, _ = epoch_ids(voc_root, "random", workers=2)
    random_requests = epoch_ids.requests
    sequential_ids, sequential_bytes, _ = epoch_ids(voc_root, "shards", workers=2)
    sequential_requests = epoch_ids.requests
    assert sorted(random_ids) == sorted(sequential_ids)
    split = read_split_ids(FileSystemStorage(voc_root), "train")
    jpeg_bytes = sum((voc_root / "JPEGImages" / f"{i}.jpg").stat().st_size for i in split)
    assert random_bytes == jpeg_bytes  # one read per image, nothing else
    shard_bytes = sum(p.stat().st_size for p in (voc_root / "shards" / "train").glob("*.tar"))
    assert sequential_bytes == shard_bytes  # whole shards, front to back
    shard_count = len(list((voc_root / "shards" / "train").glob("*.tar")))
    assert random_requests.requests == len(split)  # one read request per sample
    assert sequential_requests.requests == shard_count  # one streaming read per shard
    assert len(random_requests.ttfb_s) == len(split) and not random_requests.errors
    object_ids, object_bytes, _ = epoch_ids(voc_root, "objects", workers=2)
    assert sorted(object_ids) == sorted(random_ids)
    assert object_bytes == jpeg_bytes and epoch_ids.requests.requests == len(split)


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
def test_shuffle_changes_with_the_epoch_and_repeats_with_the_seed(voc_root, access):
    first, _, _ = epoch_ids(voc_root, access, workers=0, epoch=1)
    again, _, _ = epoch_ids(voc_root, access, workers=0, epoch=1)
    second, _, _ = epoch_ids(voc_root, access, workers=0, epoch=2)
    assert first == again
    assert first != second


def test_without_shuffle_objects_are_read_in_listing_order(voc_root):
    ids, _, _ = epoch_ids(voc_root, "objects", workers=0, shuffle=False)
    assert ids == sorted(read_split_ids(FileSystemStorage(voc_root), "train"))


def test_without_shuffle_sequential_reads_in_written_order(voc_root):
    ids, _, _ = epoch_ids(voc_root, "shards", workers=0, shuffle=False)
    assert ids == read_split_ids(FileSystemStorage(voc_root), "train")


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
def test_persistent_workers_see_each_new_epoch(voc_root, access):
    """With ``loader.persistent_workers`` the workers outlive the epoch: they must still take
    each epoch's shuffle, and still read every image once per epoch."""
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")
    shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=60_000)
    loader = build_loader(
        storage, records, access=access, transform=None, class_to_index=CLASSES,
        settings=LoaderSettings(batch_size=3, num_workers=2, persistent_workers=True),
        shuffle=True, seed=0, shards=shards, shuffle_buffer=4,
    )  # fmt: skip
    orders = []
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        orders.append([i for batch in loader for i in batch.ids])
    assert all(sorted(order) == sorted(r.id for r in records) for order in orders)
    assert len({tuple(order) for order in orders}) == 3  # a new shuffle every epoch


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
def test_repeat_reads_consecutive_epochs_in_one_iteration(voc_root, access):
    """``repeat=3`` reads epochs e, e+1, e+2 back to back: each image three times, each epoch's
    share reshuffled like a separate epoch would be."""
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")
    shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=60_000)
    loader = build_loader(
        storage, records, access=access, transform=None, class_to_index=CLASSES,
        settings=LoaderSettings(batch_size=3, num_workers=2), shuffle=True, seed=0,
        shards=shards, shuffle_buffer=4, repeat=3,
    )  # fmt: skip
    loader.set_epoch(5)
    ids = [i for batch in loader for i in batch.ids]
    assert loader.num_samples == 3 * len(records)
    assert Counter(ids) == Counter({r.id: 3 for r in records})
    with pytest.raises(ValueError, match="repeat"):
        build_loader(
            storage, records, access=access, transform=None, class_to_index=CLASSES,
            settings=LoaderSettings(batch_size=3, num_workers=0), shuffle=True, seed=0,
            shards=shards, repeat=0,
        )  # fmt: skip


class TimedOpenStorage(FileSystemStorage):
    """A filesystem whose ``open`` takes ``delay_s`` more (a real sleep: 2 ms is what an S3
    GET's first byte takes) and records the thread that opened each shard."""

    def __init__(self, root, delay_s: float):
        super().__init__(root)
        self.delay_s = delay_s
        self.opened_by: list[str] = []

    def _open(self, key):
        time.sleep(self.delay_s)  # inside the storage's own call: its figures count it
        self.opened_by.append(threading.current_thread().name)
        return super()._open(key)


@pytest.mark.parametrize("threshold_s", [0.001, 1.0])
def test_slow_opens_are_done_ahead_and_quick_ones_in_line(voc_root, monkeypatch, threshold_s):
    """The next shard is opened in the background only when opening took ``OPEN_AHEAD_S`` or
    more (2 ms here: ahead with the default 1 ms, in line with 1 s); same samples either way;
    the samples' read time includes the opens (the stream's own figures, wherever it was
    opened); either way the next shard is opened before the first sample is yielded."""
    monkeypatch.setattr(sequential, "OPEN_AHEAD_S", threshold_s)
    storage = TimedOpenStorage(voc_root, 0.002)
    records, _ = load_voc_split(storage, "train")
    shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=60_000)
    storage.opened_by.clear()
    stream = ShardStream(storage, shards, None, CLASSES, shuffle=True, shuffle_buffer=4, seed=0)
    samples = list(stream)
    ids = [sample.id for sample in samples]
    assert sum(sample.read_s for sample in samples) >= 0.002 * len(shards)  # the opens
    assert ids == [sample.id for sample in ShardStream(
        FileSystemStorage(voc_root), shards, None, CLASSES, shuffle=True, shuffle_buffer=4, seed=0
    )]  # fmt: skip
    main = threading.current_thread().name
    assert storage.opened_by[0] == main  # the first one is needed at once
    expected = main if threshold_s > 0.002 else "shard-open"
    assert len(storage.opened_by) == len(shards) >= 3
    assert all(name.startswith(expected) for name in storage.opened_by[1:])

    storage.opened_by.clear()  # in line or not, the next shard is opened before any sample
    in_order = ShardStream(storage, shards, None, CLASSES, shuffle=False, shuffle_buffer=1, seed=0)
    first = next(iter(in_order))
    assert first.id == shards[0].ids[0] and len(storage.opened_by) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore(2) and fadvise: Linux")
def test_fs_open_asks_the_kernel_to_read_the_file_ahead(tmp_path):
    """A file opened for streaming comes into the page cache without a read (WILLNEED), so a
    shard opened ahead arrives while the previous one is parsed; whole-file reads work as
    before."""
    path = tmp_path / "shard.tar"
    data = os.urandom(3 * 2**20)
    path.write_bytes(data)
    evict_page_cache([path])
    if resident_fraction(path) > 0.1:
        pytest.skip("this filesystem keeps evicted pages (tmpfs, a network mount)")
    storage = FileSystemStorage(tmp_path)
    with storage.open("shard.tar") as stream:
        deadline = time.monotonic() + 10
        while resident_fraction(path) < 1.0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the device reads in the background; poll until they landed
        assert resident_fraction(path) == 1.0
        assert stream.read() == data
    again, read = storage.fetch("shard.tar")
    assert again == data and (read.requests, read.nbytes) == (1, len(data))
    assert stream.stats().requests == 1 and stream.stats().nbytes == len(data)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("access", ["random", "shards", "objects"])
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_steps_are_the_batches_the_loader_really_yields(voc_root, access, workers):
    """The learning-rate schedule is sized on ``loader.steps(epoch)``: each worker of an
    iterable loader ends with its own partial batch, so counting ``ceil(samples / batch)``
    made the schedule reach 0 before the last epoch ended."""
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")  # 12 images
    shards = None
    if access == "shards":
        shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=60_000)
    loader = build_loader(
        storage, records, access=access, transform=None, class_to_index=CLASSES,
        settings=LoaderSettings(batch_size=5, num_workers=workers, worker_batches=1),
        shuffle=True, seed=0, shards=shards, shuffle_buffer=4,
    )  # fmt: skip
    naive = -(-len(records) // 5)
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        assert sum(1 for _ in loader) == loader.steps(epoch), (access, workers, epoch)
    if access != "random" and workers == 2:  # 6 + 6 samples: 2 + 2 batches of 5, not 3
        assert max(loader.steps(e) for e in (1, 2, 3)) > naive


def test_objects_charge_each_request_to_the_batch_of_the_image_it_read(voc_root):
    # A shuffle buffer larger than the split: with the requests taken when a sample left the
    # buffer, the first batch carried every request of the epoch (and a bench's warm-up steps
    # swallowed them); each image's read is its own request.
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train", limit=12)
    loader = build_loader(
        storage,
        records,
        access="objects",
        transform=detection_transform(True, 64),
        class_to_index=CLASSES,
        settings=LoaderSettings(batch_size=3, num_workers=0),
        shuffle=True,
        seed=0,
        shuffle_buffer=64,
        concurrency=2,
    )
    loader.set_epoch(1)
    per_batch = [(len(batch.ids), batch.requests.requests) for batch in loader]
    assert sum(requests for _, requests in per_batch) == 12
    # each sample carries the figures its own read made: one request, exactly
    assert all(requests == samples for samples, requests in per_batch)
