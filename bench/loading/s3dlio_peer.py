"""s3dlio's own map-style dataset as the peer of the random pattern over S3 through s3dlio."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from torch.utils.data import DataLoader, Dataset

from bench.loading.peers import (
    ClassificationWork,
    DetectionWork,
    PeerResult,
    collate_images,
    decode,
    epochs_sampler,
    time_loader,
    work_for,
)
from pipelines.formats.records import Record
from pipelines.storage.base import worker_context
from pipelines.storage.s3dlio_storage import S3dlioStorage


class S3dlioMapDecode(Dataset):
    """s3dlio's ``ObjectStoreMapDataset`` over the folder of the split's images, one item per key.

    That dataset lists a whole prefix (s3dlio 0.10 takes no list of keys): it is built over the
    keys' folder, and item ``i`` is the listed object of ``keys[i]`` (found by the URI s3dlio
    lists for each item, its ``_uris``), read by the dataset's ``__getitem__``, decoded and given
    our per-sample work. Built in each process on first use: s3dlio's client does not survive a
    fork (workers start from a fork server).

    Args:
        storage: the s3dlio storage the compared pass reads (endpoint, keys, errors).
        keys: object keys in the bucket.
        records: their records, in the same order.
        work: the per-sample work (:func:`bench.loading.peers.work_for`).

    Raises:
        ValueError: no keys.
    """

    def __init__(
        self,
        storage: S3dlioStorage,
        keys: Sequence[str],
        records: Sequence[Record],
        work: DetectionWork | ClassificationWork,
    ):
        if not keys:
            raise ValueError("s3dlio peer: no objects")
        self.storage, self.keys, self.records, self.work = storage, list(keys), list(records), work
        self.folder = posixpath.commonpath([posixpath.dirname(k) for k in self.keys])
        self._dataset = None
        self._index: dict[str, int] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None, "_index": {}}

    def __len__(self) -> int:
        return len(self.keys)

    def _open(self) -> None:
        """List the folder with s3dlio's dataset; every key must be among its items."""
        from s3dlio.torch import ObjectStoreMapDataset

        root = f"s3://{self.storage.bucket}/"
        uri = f"{root}{self.folder}/" if self.folder else root
        dataset = self.storage._call_in_environment(
            self.folder, "list", lambda: ObjectStoreMapDataset(uri, return_type="bytes")
        )
        self._index = {u[len(root) :]: i for i, u in enumerate(dataset._uris)}
        missing = [k for k in self.keys if k not in self._index]
        if missing:
            raise ValueError(f"s3dlio's dataset over {uri} does not list {missing[0]}")
        self._dataset = dataset

    def __getitem__(self, i: int) -> tuple:
        if self._dataset is None:
            self._open()
        key = self.keys[i]
        data = self.storage._call(key, "read", self._dataset.__getitem__, self._index[key])
        image, target = self.work(decode(data), self.records[i])
        return image, target, len(data)


def s3dlio_peer(
    storage: S3dlioStorage,
    keys: Sequence[str],
    records: Sequence[Record],
    *,
    batch_size: int,
    num_workers: int,
    image_size: int,
    class_to_index: dict[str, int],
    task: str = "detection",
    epochs: int = 1,
    max_batches: int | None = None,
    warmup_batches: int = 2,
    seed: int = 0,
) -> PeerResult:
    """:class:`S3dlioMapDecode` in a shuffled ``DataLoader``, as :func:`imagefolder_peer` reads.

    Args: as :func:`bench.loading.peers.imagefolder_peer`, with ``storage`` (s3dlio, the
    compared pass's) and ``keys`` (object keys in its bucket) instead of paths.

    Returns:
        A :class:`PeerResult` named ``s3dlio-map``.

    Raises:
        ValueError: no keys, a key s3dlio does not list, or fewer than ``warmup_batches + 1``
            batches.
        pipelines.storage.base.StorageError: a read failed.
    """
    dataset = S3dlioMapDecode(storage, keys, records, work_for(task, image_size, class_to_index))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=epochs_sampler(len(keys), epochs, seed),
        num_workers=num_workers,
        collate_fn=collate_images,
        multiprocessing_context=worker_context(storage) if num_workers else None,
    )  # fmt: skip
    return time_loader("s3dlio-map", loader, warmup_batches=warmup_batches, max_batches=max_batches)
