"""The data side of a run: read a split (format detected, or the user's reader), shards, classes.

The storage it reads from is :mod:`training.source`. Shared by ``scripts/train.py`` (through
:mod:`training.run`), ``scripts/write_shards.py`` and ``scripts/predict.py``, so that they all read
the dataset the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from common.errors import error_line
from common.settings import replace
from pipelines.formats.coco import ANNOTATIONS, load_coco_split
from pipelines.formats.coco import available_splits as coco_splits
from pipelines.formats.csv_boxes import ROBOFLOW_FILE, find_split_file, load_csv_split
from pipelines.formats.folders import IMAGE_SUFFIXES, load_folder_split
from pipelines.formats.hash_split import split_index, split_of
from pipelines.formats.oid import LABEL_DIR, LABEL_SUFFIX, load_oid_split
from pipelines.formats.records import (
    BoxCounts,
    ClassificationRecord,
    DatasetError,
    DetectionRecord,
    Record,
)
from pipelines.formats.voc import annotated_ids, load_voc_ids, load_voc_split
from pipelines.formats.voc import available_splits as voc_splits
from pipelines.shards.manifest import ShardInfo
from pipelines.shards.sizing import plan_shards
from pipelines.shards.writer import ensure_shards, shard_prefix
from pipelines.storage.base import Storage, StorageError, join_key, relative_keys
from training.config import TASK_FORMATS, Config, ConfigError
from training.source import DataSource, open_storage

log = logging.getLogger(__name__)

#: Reader of each ``dataset.format``: ``(storage, split, limit, root) -> (records, counts)``.
READERS: dict[str, Callable[..., tuple[list[Record], BoxCounts]]] = {
    "voc": load_voc_split,
    "coco": load_coco_split,
    "oid": load_oid_split,
    "csv": load_csv_split,
    "folder": load_folder_split,
}


def has_split(storage: Storage, root: str, split: str) -> bool:
    """Whether ``root`` has ``split``: a VOC split file, COCO or CSV annotations, or a folder."""
    return (
        storage.exists(join_key(root, f"ImageSets/Main/{split}.txt"))
        or storage.exists(join_key(root, f"{split}/{ANNOTATIONS}"))
        or find_split_file(storage, split, root) is not None
        or next(relative_keys(storage, join_key(root, split)), None) is not None
    )


def whole_dataset(
    storage: Storage, root: str, *, with_splits: bool = False
) -> tuple[str, Callable[[], tuple]] | None:
    """A dataset read whole, for a hash split: ``(format, reader)``, or None.

    A VOC tree's ``Annotations/`` (without ``ImageSets/Main`` split files, or whatever it has with
    ``with_splits``: an explicit ``dataset.split: hash``); a CSV export with one annotation file
    (``<name>_labels.csv`` or ``<name>/_annotations.csv``); a COCO export with one split folder. The
    reader returns ``(records, counts)`` of every image.
    """
    if with_splits or not voc_splits(storage, root):
        ids = annotated_ids(storage, root)
        if ids:
            return "voc", lambda: load_voc_ids(storage, ids, "the dataset", root)
    csv_files = [
        key
        for key in relative_keys(storage, root)
        if (key.endswith("_labels.csv") and "/" not in key)
        or (key.count("/") == 1 and key.endswith(f"/{ROBOFLOW_FILE}"))
    ]
    if len(csv_files) == 1:
        name = csv_files[0]
        split = name[: -len("_labels.csv")] if "/" not in name else name.split("/")[0]
        return "csv", lambda: load_csv_split(storage, split, None, root)
    coco = coco_splits(storage, root)
    if len(coco) == 1:
        return "coco", lambda: load_coco_split(storage, coco[0], None, root)
    return None


def resolve_split(cfg: Config, source: DataSource | None = None, *, announce: bool = True):
    """``cfg`` with ``dataset.split`` decided; the run saves the result in config.yaml.

    ``auto`` becomes ``files`` when every source has both splits or ``dataset.format`` is the user's
    reader (which makes its own splits), ``hash`` when no source has them and each reads whole in a
    format of the task (:func:`whole_dataset`). ``announce``: log a hash split. ``source``: the
    opened storage (None: open it).

    Raises:
        ConfigError: some sources have the splits and others do not; ``dataset.split: hash`` with a
            reader of the user's.
        pipelines.storage.base.StorageError: the storage cannot be read.
    """
    own_reader = ":" in cfg.dataset.format
    if cfg.dataset.split == "hash" and own_reader:
        raise ConfigError(
            "dataset.split hash splits the datasets this tool reads itself; your reader "
            f"({cfg.dataset.format}) makes its own splits: set dataset.split auto or files"
        )
    if cfg.dataset.split != "auto":
        return cfg
    if own_reader:
        return replace(cfg, dataset=replace(cfg.dataset, split="files"))
    source = source or open_storage(cfg)
    splits = (cfg.dataset.train_split, cfg.dataset.eval_split)
    lacking = [
        root for root in source.roots if not all(has_split(source.storage, root, s) for s in splits)
    ]
    whole = [whole_dataset(source.storage, root) for root in lacking]
    readable = [w for w in whole if w is not None and w[0] in TASK_FORMATS[cfg.task]]
    mode = "files"
    if lacking and len(readable) == len(lacking):
        if len(lacking) < len(source.roots):
            raise ConfigError(
                f"{', '.join(source.storage.describe(r) for r in lacking)} has no "
                f"{' / '.join(splits)} split files but the other sources do: give every source "
                "its split files, or set dataset.split hash to split them all by hash"
            )
        mode = "hash"
        if announce:
            ratios = "/".join(f"{r:g}" for r in cfg.dataset.split_ratios)
            log.info(
                "splits: %s has no %s split files: every image is split by a hash of its id "
                "(dataset.split hash, split_ratios %s; train, val, test)",
                ", ".join(source.storage.describe(r) for r in lacking),
                " / ".join(splits),
                ratios,
            )
    return replace(cfg, dataset=replace(cfg.dataset, split=mode))


def load_split(source: DataSource, cfg: Config, split: str) -> tuple[list[Record], BoxCounts]:
    """Records of one split from every root, limited to ``dataset.limit`` images in all.

    The reader is the one of ``dataset.format`` (:data:`READERS`) or, for ``auto``, of the format
    :func:`detect_format` finds in each root.

    Raises:
        DatasetError: as the format's reader (:data:`READERS`), a root whose format cannot be
            detected or does not suit ``task``, or an image id found in two roots.
    """
    cfg = resolve_split(cfg, source, announce=False)  # the run resolved it before (logged)
    records: list[Record] = []
    counts = BoxCounts()
    for root in source.roots:
        remaining = None if cfg.dataset.limit is None else cfg.dataset.limit - len(records)
        if remaining == 0:
            break
        if cfg.dataset.split == "hash":
            found, found_counts = hash_split(source.storage, root, cfg, split)
            records.extend(found[:remaining] if remaining is not None else found)
            counts.add(found_counts)
            continue
        fmt = cfg.dataset.format
        if ":" in fmt:  # the user's reader
            found, found_counts = read_own(fmt, source.storage, root, split, cfg.task)
            records.extend(found[:remaining] if remaining is not None else found)
            counts.add(found_counts)
            continue
        if fmt == "auto":
            fmt = detect_format(source.storage, root, split)
            if fmt not in TASK_FORMATS[cfg.task]:
                raise DatasetError(
                    f"{source.storage.describe(root or '')} holds a {fmt} dataset, which has no "
                    f"labels for task {cfg.task}; "
                    + (
                        "use TASK=classification"
                        if fmt == "folder"
                        else "use TASK=detection, or make crops with scripts/make_crops.py"
                    )
                )
        found, found_counts = READERS[fmt](source.storage, split, remaining, root)
        records.extend(found)
        counts.add(found_counts)
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise DatasetError(
                f"image id {record.id!r} is in two sources ({seen[record.id]} and "
                f"{record.image_key}): ids must be unique across storage.prefixes"
            )
        seen[record.id] = record.image_key
    return records, counts


def read_own(
    text: str, storage: Storage, root: str, split: str, task: str
) -> tuple[list[Record], BoxCounts]:
    """Records from the user's reader (``dataset.format: path/to/file.py:function``).

    ``function(storage, root, split)`` returns a list of :class:`DetectionRecord` (detection) or
    :class:`ClassificationRecord` (classification), image keys relative to ``storage`` (the reader
    joins ``root``), ids unique. Boxes are clipped or dropped and counted as for VOC.

    Raises:
        ConfigError: the reader cannot be found or imported.
        DatasetError: it raised, or returned something else than such records (the message names the
            reader and the first wrong record).
        pipelines.storage.base.StorageError: the storage failed under it.
    """
    from common.reference import load_reference, resolve

    key = "dataset.format"
    entry = resolve(text, key)
    read = load_reference(entry, key)
    call = f"{entry.function}(storage, {root!r}, {split!r})"
    try:
        found = read(storage, root, split)
    except (DatasetError, StorageError):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: one line
        raise DatasetError(f"{key} {text!r}: {call} raised {error_line(exc)}") from None
    kind = DetectionRecord if task == "detection" else ClassificationRecord
    if not isinstance(found, list | tuple):
        raise DatasetError(f"{key} {text!r}: {call} returned {type(found).__name__}, not a list")
    records, counts, ids = [], BoxCounts(), set()
    for index, record in enumerate(found):
        try:
            record = _checked_record(record, kind, counts)
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{key} {text!r}: record {index} of {call} is malformed: {exc}"
            ) from None
        if record.id in ids:
            raise DatasetError(f"{key} {text!r}: {call} returned id {record.id!r} twice")
        ids.add(record.id)
        records.append(record)
    return records, counts


def _checked_record(record, kind: type, counts: BoxCounts):
    """A reader's record, checked (types, sizes) and its boxes clipped or dropped.

    Raises:
        TypeError, ValueError: what is wrong with it.
    """
    if not isinstance(record, kind):
        raise TypeError(
            f"a {type(record).__name__}, not a pipelines.formats.records.{kind.__name__}"
        )
    if not isinstance(record.id, str) or not isinstance(record.image_key, str):
        raise TypeError("id and image_key must be strings")
    if kind is ClassificationRecord:
        if not isinstance(record.label, str) or not record.label:
            raise TypeError(f"label {record.label!r} must be a class name")
        return record
    if not (isinstance(record.width, int) and isinstance(record.height, int)):
        raise TypeError(f"width {record.width!r} and height {record.height!r} must be ints")
    if len(record.boxes) != len(record.labels):
        raise ValueError(f"{len(record.boxes)} boxes but {len(record.labels)} labels")
    boxes, labels = [], []
    for n, (box, label) in enumerate(zip(record.boxes, record.labels, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        clipped = counts.keep((x1, y1, x2, y2), record.width, record.height, f"{record.id} box {n}")
        if clipped is not None:
            boxes.append(clipped)
            labels.append(str(label))
    return dataclasses.replace(record, boxes=tuple(boxes), labels=tuple(labels))


def hash_split(
    storage: Storage, root: str, cfg: Config, split: str
) -> tuple[list[Record], BoxCounts]:
    """The records of ``split`` in a dataset read whole, chosen by a hash of their ids, in order.

    The hash is :mod:`pipelines.formats.hash_split`'s. The counts are the split's kept boxes and the
    whole dataset's clipped and dropped ones (the reader sees them all).

    Raises:
        DatasetError: nothing there reads whole in a format of the task, or a split name a hash
            split does not make.
    """
    index = split_index(split)
    whole = whole_dataset(storage, root, with_splits=True)
    if whole is None or whole[0] not in TASK_FORMATS[cfg.task]:
        raise DatasetError(
            f"dataset.split hash: {storage.describe(root or '')} holds no {cfg.task} dataset this "
            "tool can read whole (a VOC tree's Annotations/, one CSV file, or one COCO split "
            "folder)"
        )
    records, counts = whole[1]()
    ratios = cfg.dataset.split_ratios
    chosen = [r for r in records if split_of(r.id, ratios) == index]
    log.info(
        "split %s: %d images of the %d in %s, by a hash of the id",
        split, len(chosen), len(records), storage.describe(root or ""),
    )  # fmt: skip
    kept = sum(len(r.boxes) for r in chosen)  # detection records: checked above
    return chosen, BoxCounts(kept, counts.clipped, counts.dropped, counts.dropped_where)


def detect_format(storage: Storage, root: str, split: str) -> str:
    """The layout of the dataset under ``root``, found from a few existence checks.

    - ``voc``: ``ImageSets/Main/<split>.txt`` exists;
    - ``coco``: ``<split>/_annotations.coco.json`` exists;
    - ``csv``: ``<split>_labels.csv`` or ``<split>/_annotations.csv`` exists;
    - ``oid``: the first image ``<split>/<Class>/<id>.jpg`` has ``<split>/<Class>/Label/<id>.txt``;
    - ``folder``: it has not.

    Raises:
        DatasetError: ``root`` is missing or empty, or none of these layouts is there (the
            message says what was looked for).
        pipelines.storage.base.StorageError: the storage cannot be read.
    """
    if storage.exists(join_key(root, f"ImageSets/Main/{split}.txt")):
        return "voc"
    if storage.exists(join_key(root, f"{split}/{ANNOTATIONS}")):
        return "coco"
    if find_split_file(storage, split, root) is not None:
        return "csv"
    base = join_key(root, split)
    for key in relative_keys(storage, base):
        parts = key.split("/")
        if len(parts) == 2 and parts[1].lower().endswith(IMAGE_SUFFIXES):
            label = join_key(base, f"{parts[0]}/{LABEL_DIR}/{parts[1].rsplit('.', 1)[0]}")
            return "oid" if storage.exists(label + LABEL_SUFFIX) else "folder"
    if next(relative_keys(storage, root), None) is None:
        raise DatasetError(
            f"no dataset at {storage.describe(root or '')}: it is missing or empty; check DATA= "
            "(or storage.root / storage.prefixes, and for s3 the bucket)"
        )
    raise DatasetError(
        f"cannot tell the format of split {split!r} in {storage.describe(root or '')}: found "
        f"neither ImageSets/Main/{split}.txt (voc), {split}/{ANNOTATIONS} (coco), "
        f"{split}_labels.csv or {split}/_annotations.csv (csv) nor images in "
        f"{split}/<Class>/ (oid, folder); check the path and dataset.train_split / eval_split, "
        "or set dataset.format (FORMAT=...)"
    )


def split_shards(
    source: DataSource,
    cfg: Config,
    split: str,
    records: list[Record],
    on_shard: Callable[[ShardInfo], None] | None = None,
    *,
    readers: int = 1,
) -> tuple[str, list[ShardInfo], bool]:
    """The split's shards under the first root's ``dataset.shards_prefix``, written when missing.

    Of ``dataset.shard_size_mb`` when set; else of at most 1 MB and enough for ``readers``
    (ranks x DataLoader workers; :func:`pipelines.shards.sizing.plan_shards`, which logs why
    when it writes smaller ones).

    Returns:
        ``(prefix, shards, written)``; see :func:`pipelines.shards.writer.ensure_shards`.
    """
    base = join_key(source.roots[0], cfg.dataset.shards_prefix)
    name = split
    if resolve_split(cfg, source, announce=False).dataset.split == "hash":  # its own shards
        name = f"{split}-hash-{'_'.join(f'{r:g}' for r in cfg.dataset.split_ratios)}"
    prefix = shard_prefix(base, name, cfg.dataset.limit)
    reason = ""
    if cfg.dataset.shard_size_mb is not None:
        target_bytes = int(cfg.dataset.shard_size_mb * 1e6)
    else:
        plan = plan_shards(source.storage, records, prefix, readers=readers, split=split)
        prefix, target_bytes, reason = plan.prefix, plan.target_bytes, plan.reason
    shards, written = ensure_shards(
        source.storage, records, prefix, target_bytes=target_bytes, on_shard=on_shard
    )
    if written and reason:  # said once, by the process that wrote them
        log.info("%s", reason)
    return prefix, shards, written


def class_names(cfg: Config, records: list[Record]) -> list[str]:
    """Configured classes, or the sorted class names found in ``records``.

    Raises:
        DatasetError: no class configured and no box in ``records``, or fewer than two classes
            for classification.
    """
    if cfg.dataset.classes:
        return list(cfg.dataset.classes)
    names = sorted(
        {r.label for r in records if isinstance(r, ClassificationRecord)}
        | {name for r in records if not isinstance(r, ClassificationRecord) for name in r.labels}
    )
    if not names:
        raise DatasetError("the training split has no boxes: nothing to learn")
    if cfg.task == "classification" and len(names) < 2:
        raise DatasetError(
            f"the training split has one class folder ({names[0]}): a classifier needs at least "
            "two (with dataset.limit, raise it so that every class is read)"
        )
    return names
