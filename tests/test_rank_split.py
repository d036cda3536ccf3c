"""The split among ranks (torchrun): every sample once, every rank the same number of steps.

Ranks are simulated here by building each rank's loader in this process (the split needs no
process group: every rank computes its share from the seed and the epoch alone); the real
torchrun runs are in ``test_distributed.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pipelines.access.loaders import LoaderSettings, build_loader
from pipelines.formats.voc import load_voc_split
from pipelines.shards.writer import ensure_shards
from pipelines.storage.filesystem import FileSystemStorage

CLASSES = {"RBC": 1, "WBC": 2, "Platelets": 3}


@pytest.fixture
def split(voc_root):
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train")  # 12 images
    shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=60_000)
    return storage, records, shards


def rank_epoch(split, access, rank, world, *, workers, equal_steps, epoch, repeat=1):
    storage, records, shards = split
    loader = build_loader(
        storage, records, access=access, transform=None, class_to_index=CLASSES,
        settings=LoaderSettings(batch_size=2, num_workers=workers, worker_batches=1),
        shuffle=equal_steps, seed=3, shards=shards if access == "shards" else None,
        shuffle_buffer=4, rank=rank, world_size=world, equal_steps=equal_steps, repeat=repeat,
    )  # fmt: skip
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == loader.steps(epoch) or not equal_steps
    return [i for b in batches for i in b.ids], len(batches), loader.rank_samples(epoch)


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
@pytest.mark.parametrize(("world", "workers"), [(2, 0), (3, 2)])
def test_training_ranks_read_each_sample_at_most_once_in_equal_steps(split, access, world, workers):
    _, records, _ = split
    for epoch in (1, 2):
        results = [
            rank_epoch(split, access, r, world, workers=workers, equal_steps=True, epoch=epoch)
            for r in range(world)
        ]
        ids = [i for got, _, _ in results for i in got]
        assert len(set(ids)) == len(ids), "a sample read twice in one epoch"
        assert set(ids) <= {r.id for r in records}
        assert len({steps for _, steps, _ in results}) == 1, "ranks ran different step counts"
        assert sum(share for _, _, share in results) == len(records)  # the shares cover it
        dropped = len(records) - len(ids)
        if access != "shards":
            assert dropped == len(records) % world  # the remainder, and nothing more
        assert 0 <= dropped < len(records) // 2


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
def test_dropped_samples_change_from_epoch_to_epoch(split, access):
    """The remainder dropped to give ranks equal steps is not always the same samples."""
    _, records, _ = split
    seen = Counter()
    for epoch in range(1, 9):
        for r in range(5):
            ids, _, _ = rank_epoch(split, access, r, 5, workers=0, equal_steps=True, epoch=epoch)
            seen.update(ids)
    assert set(seen) == {r.id for r in records}


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
@pytest.mark.parametrize("world", [2, 5])
def test_evaluation_ranks_read_every_sample_exactly_once(split, access, world):
    _, records, _ = split
    ids = [
        i
        for r in range(world)
        for i in rank_epoch(split, access, r, world, workers=0, equal_steps=False, epoch=1)[0]
    ]
    assert Counter(ids) == Counter(r.id for r in records)


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
def test_ranks_reading_several_epochs_at_once_read_each_epoch_as_alone(split, access):
    """The benchmark's warm passes read ``repeat`` epochs per iteration: with ranks, iteration
    ``e`` reads epochs ``e .. e+repeat-1`` as one epoch at a time would (random: in the same
    order; objects, whose shuffle buffer spans the iteration: the same samples; shards, whose
    equal-steps limit applies to the iteration as a whole: no sample more often than once an
    epoch), in the same number of steps on every rank."""
    steps = set()
    for rank in range(2):
        ids, n_steps, share = rank_epoch(
            split, access, rank, 2, workers=0, equal_steps=True, epoch=4, repeat=3
        )
        steps.add(n_steps)
        one_by_one = [
            rank_epoch(split, access, rank, 2, workers=0, equal_steps=True, epoch=e)
            for e in (4, 5, 6)
        ]
        assert share == sum(s for _, _, s in one_by_one)
        expected = [i for got, _, _ in one_by_one for i in got]
        if access == "shards":
            assert max(Counter(ids).values()) <= 3 and 0 < len(ids) <= share
        elif access == "objects":  # the shuffle buffer spans the iteration
            assert Counter(ids) == Counter(expected)
        else:
            assert ids == expected
    assert len(steps) == 1


def test_one_rank_is_the_single_process_loader(split):
    """world_size 1 reads what the loader read before ranks existed (same order)."""
    storage, records, shards = split
    for access in ("random", "shards", "objects"):
        orders = []
        for extra in ({}, {"rank": 0, "world_size": 1, "equal_steps": True}):
            loader = build_loader(
                storage, records, access=access, transform=None, class_to_index=CLASSES,
                settings=LoaderSettings(batch_size=2, num_workers=0), shuffle=True, seed=3,
                shards=shards if access == "shards" else None, shuffle_buffer=4, **extra,
            )  # fmt: skip
            loader.set_epoch(2)
            orders.append([i for b in loader for i in b.ids])
        assert orders[0] == orders[1] and len(orders[0]) == len(records)
