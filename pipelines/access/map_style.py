"""Random access: a map-style dataset over the split's image objects, one read per sample.

The order comes from a sampler (``RandomSampler`` for training), so consecutive reads hit
unrelated objects. Annotations are parsed before the epoch; each ``__getitem__`` reads exactly
one object, the encoded image.
"""

from __future__ import annotations

import time

from torch.utils.data import Dataset
from torchvision.transforms import v2

from pipelines.formats.records import Record
from pipelines.samples import Sample, make_sample
from pipelines.storage.base import Storage


class MapStyleDataset(Dataset):
    """``dataset[i]`` reads record ``i``'s image from storage and returns a :class:`Sample`.

    Args:
        storage: where the images live.
        records: one per image, in split order.
        transform: see :func:`pipelines.samples.detection_transform` and
            :func:`pipelines.samples.classification_transform`.
        class_to_index: class name → label id (detection: 1-based, 0 is the background).

    Raises:
        pipelines.storage.base.StorageError: ``dataset[i]`` cannot read the image (the message
            names it).
    """

    def __init__(
        self,
        storage: Storage,
        records: list[Record],
        transform: v2.Compose,
        class_to_index: dict[str, int],
    ):
        self.storage = storage
        self.records = records
        self.transform = transform
        self.class_to_index = class_to_index

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        self.storage.connect()  # a worker's first read: keep the client set-up out of read_at
        start = time.perf_counter()
        data, read = self.storage.fetch(record.image_key)
        return make_sample(
            record,
            data,
            read=read,
            transform=self.transform,
            class_to_index=self.class_to_index,
            read_at=start,
        )
