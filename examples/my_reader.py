"""A dataset reader of your own, for `make train TASK=classification ARGS="--set
dataset.format=examples/my_reader.py:read_split"` (see the README's "Your own data").

The layout it reads: one tab-separated file per split, ``<root>/<split>.tsv``, a line per image:
``<image path relative to root>\\t<class name>``; lines starting with ``#`` are comments.

The contract (``training.data.read_own``): ``read_split(storage, root, split)`` returns a list
of ``pipelines.formats.records.ClassificationRecord`` (classification) or ``DetectionRecord``
(detection, boxes in pixels) whose ``image_key`` is a key of ``storage`` (join ``root``
yourself) and whose ids are unique. ``storage`` is the run's filesystem or S3 storage
(``pipelines.storage.base.Storage``: ``read``, ``list``, ``exists``...), so the same reader works on
both and with every access pattern, the shard writer and the benchmark.
"""

from __future__ import annotations

from pipelines.formats.records import ClassificationRecord, DatasetError
from pipelines.storage.base import ObjectNotFound, Storage


def read_split(storage: Storage, root: str, split: str) -> list[ClassificationRecord]:
    """The records of ``<root>/<split>.tsv``.

    Raises:
        DatasetError: no such file, or a line without a tab (file and line named).
    """
    key = f"{root}/{split}.tsv" if root else f"{split}.tsv"
    try:
        text = storage.read(key).decode("utf-8")
    except ObjectNotFound:
        raise DatasetError(f"no {storage.describe(key)} for split {split!r}") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        path, tab, label = line.partition("\t")
        if not tab or not path.strip() or not label.strip():
            raise DatasetError(f"{storage.describe(key)}:{number}: expected <path>\\t<class>")
        image_key = f"{root}/{path.strip()}" if root else path.strip()
        records.append(ClassificationRecord(path.strip(), image_key, label.strip()))
    return records
