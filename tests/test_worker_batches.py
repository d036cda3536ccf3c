"""Batching inside DataLoader workers: the same batches as plain batching, several per transfer,
and large decoded batches still one per transfer."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset

from pipelines.access.loaders import TRANSFER_TENSOR_BYTES, EpochLoader, WorkerBatches
from pipelines.samples import Sample, collate
from pipelines.storage.base import CallStats


class Samples(IterableDataset):
    """``count`` samples; with ``image_bytes`` each carries a uint8 image of that many bytes."""

    def __init__(self, count: int, image_bytes: int = 0):
        self.count = count
        self.image_bytes = image_bytes

    def __iter__(self):
        for i in range(self.count):
            read = CallStats(nbytes=10 + i, seconds=0.001)
            sample = Sample(f"id{i}", read, read_at=100.0 + i)
            if self.image_bytes:
                sample.image = torch.zeros(self.image_bytes, dtype=torch.uint8)
                sample.target = i
            yield sample


def test_groups_hold_the_batches_plain_batching_makes():
    groups = list(WorkerBatches(Samples(23), batch_size=4, max_batches=3))
    assert [len(g) for g in groups] == [3, 3]  # 6 batches: 5 full + the last partial one
    batches = [b for g in groups for b in g]
    plain = list(DataLoader(Samples(23), batch_size=4, collate_fn=collate))
    assert [b.ids for b in batches] == [b.ids for b in plain]
    assert [b.nbytes for b in batches] == [b.nbytes for b in plain]
    assert [b.read_at for b in batches] == [100.0, 104.0, 108.0, 112.0, 116.0, 120.0]


def test_batches_of_large_images_travel_one_by_one():
    big = TRANSFER_TENSOR_BYTES // 2 + 1  # two images exceed a transfer's tensor budget
    groups = list(WorkerBatches(Samples(6, image_bytes=big), batch_size=2, max_batches=16))
    assert [len(g) for g in groups] == [1, 1, 1]
    small = list(WorkerBatches(Samples(6, image_bytes=1000), batch_size=2, max_batches=16))
    assert [len(g) for g in small] == [3]


def test_epoch_loader_takes_groups_apart_across_workers():
    dataset = WorkerBatches(Samples(40), batch_size=4, max_batches=4)
    loader = DataLoader(dataset, batch_size=None, collate_fn=lambda g: g, num_workers=2)
    epoch = EpochLoader(loader, num_samples=80)
    epoch.grouped = True
    ids = [i for batch in epoch for i in batch.ids]
    # each worker iterates its own copy of this (unsplit) dataset: every id twice, in batches
    assert sorted(ids) == sorted([f"id{i}" for i in range(40)] * 2)
