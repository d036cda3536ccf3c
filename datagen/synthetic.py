"""Synthetic detection datasets in Pascal VOC layout (``make synth``).

The samples of :mod:`datagen.images`, split into train and test, generated in parallel and written
to a filesystem or S3, a bounded window of images in memory at a time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

from datagen.images import (
    KB,
    SPLIT_STREAM,
    Sample,
    SynthError,
    SynthSpec,
    generate_sample,
    image_id,
)
from pipelines.storage.base import PrefixNotFound, Storage

SPLIT_DIR = "ImageSets/Main"


DATASET_DIRS = ("ImageSets/Main", "Annotations", "JPEGImages")


@dataclass
class SynthReport:
    """What :func:`generate_dataset` wrote.

    Attributes:
        images: images written (one JPEG + one annotation each).
        objects: objects (files) written: images, annotations and split files.
        image_bytes: total JPEG bytes.
        other_bytes: total bytes of annotations and split files.
        target_mean_bytes: the distribution's mean image size (bytes).
        boxes: total boxes.
        train: ids in ``train.txt``.
        test: ids in ``test.txt`` (0: no test split written).
        elapsed_s: seconds from the first image to the last split file.
    """

    images: int = 0
    objects: int = 0
    image_bytes: int = 0
    other_bytes: int = 0
    target_mean_bytes: int = 0
    boxes: int = 0
    train: int = 0
    test: int = 0
    elapsed_s: float = 0.0

    @property
    def mean_image_bytes(self) -> float:
        """Mean JPEG size in bytes (0 when nothing was written)."""
        return self.image_bytes / self.images if self.images else 0.0

    @property
    def objects_per_s(self) -> float:
        """Objects written per second."""
        return self.objects / self.elapsed_s if self.elapsed_s > 0 else 0.0


def split_mask(count: int, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the images in the test split, chosen by ``seed``.

    ``round(count * test_fraction)`` of them, at least 1 when the fraction is positive, at most
    ``count - 1``.

    Raises:
        ValueError: ``test_fraction`` outside [0, 1).
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction {test_fraction} must be in [0, 1)")
    n_test = round(count * test_fraction)
    if test_fraction > 0:
        n_test = max(1, n_test)
    n_test = min(n_test, count - 1)
    mask = np.zeros(count, dtype=bool)
    if n_test > 0:
        rng = np.random.default_rng([seed, SPLIT_STREAM])
        mask[rng.choice(count, n_test, replace=False)] = True
    return mask


def existing_dataset_key(storage: Storage) -> str | None:
    """A key under ``ImageSets/Main``, ``Annotations`` or ``JPEGImages``, or None (no dataset).

    Raises:
        pipelines.storage.base.StorageError: the target cannot be listed (missing bucket,
            credentials refused, endpoint unreachable).
    """
    for prefix in DATASET_DIRS:
        key = _first_key(storage, prefix)
        if key is not None:
            return key
    return None


def _first_key(storage: Storage, prefix: str) -> str | None:
    """The first key under ``prefix``, or None when nothing is there.

    Raises:
        StorageError: the listing failed (only a missing prefix means "nothing there").
    """
    keys = storage.list(prefix)
    try:
        return next(iter(keys), None)
    except PrefixNotFound:
        return None
    finally:
        close = getattr(keys, "close", None)
        if close is not None:
            close()


class _BoundedWriter:
    """Write objects in ``threads`` threads, at most ``max_pending`` waiting (bounded memory).

    The first failure is raised by the next :meth:`write` or by :meth:`close`.
    """

    def __init__(self, storage: Storage, threads: int, max_pending: int):
        self._storage = storage
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="synth-write")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._error: BaseException | None = None

    def write(self, key: str, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        try:
            future = self._pool.submit(self._storage.write, key, data)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        self._slots.release()
        if not future.cancelled() and future.exception() is not None and self._error is None:
            self._error = future.exception()

    def close(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        if self._error is not None and not cancel:
            raise self._error


def _generate_task(spec: SynthSpec, index: int, count: int) -> Sample:
    return generate_sample(spec, index, count)


def _samples(spec: SynthSpec, count: int, workers: int):
    """Samples 0..count-1 in order; with ``workers > 1`` from processes, ``2 * workers`` ahead."""
    if workers <= 1:
        for index in range(count):
            yield generate_sample(spec, index, count)
        return
    window: deque[Future] = deque()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        try:
            next_index = 0
            while next_index < count or window:
                while next_index < count and len(window) < 2 * workers:
                    window.append(pool.submit(_generate_task, spec, next_index, count))
                    next_index += 1
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def generate_dataset(
    storage: Storage,
    spec: SynthSpec,
    count: int,
    *,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    workers: int = 1,
    write_threads: int = 8,
    progress: bool = True,
    on_sample: Callable[[Sample], None] | None = None,
) -> SynthReport:
    """Write a synthetic VOC dataset of ``count`` images to ``storage``, one image at a time.

    Images and annotations are written as they are generated (``write_threads`` writes in
    flight, each atomic); the split files ``train.txt`` / ``test.txt`` are written last from a
    mask of ``count`` booleans, so an interrupted run leaves no split file (and no readable
    dataset). Memory stays bounded by a few images whatever ``count`` is.

    Args:
        storage: where the VOC tree goes (its root).
        spec: sizes, classes, boxes and seed of the images.
        count: number of images (>= 2).
        test_fraction: share of images in ``test.txt``, in [0, 1); 0 writes no test split.
        overwrite: write over an existing dataset (its keys are replaced, others are kept).
        workers: processes generating images (1: in this process).
        write_threads: threads writing objects.
        progress: show a tqdm progress bar (stderr).
        on_sample: called with each sample once it is queued for writing.

    Returns:
        What was written (:class:`SynthReport`).

    Raises:
        SynthError: the target already holds a dataset and not ``overwrite``.
        ValueError: ``count < 2``, ``test_fraction`` outside [0, 1), ``workers`` or
            ``write_threads`` below 1.
        pipelines.storage.base.StorageError: a write or the initial listing failed (the first
            failure; the remaining writes stop).
    """
    _check_generate_args(count, workers, write_threads)
    in_test = split_mask(count, test_fraction, spec.seed)
    if not overwrite:
        _refuse_existing_dataset(storage)
    from tqdm import tqdm

    report = SynthReport(target_mean_bytes=spec.mean_bytes)
    start = time.perf_counter()
    writer = _BoundedWriter(storage, write_threads, 2 * write_threads)
    ok = False
    try:
        with tqdm(total=count, unit="img", disable=not progress, desc="synth") as bar:
            for sample in _samples(spec, count, workers):
                _write_sample(writer, sample, report)
                if on_sample is not None:
                    on_sample(sample)
                bar.update(1)
                if report.images % 50 == 0 or report.images == count:
                    bar.set_postfix_str(
                        f"{report.image_bytes / 1e6:.1f} MB, "
                        f"mean {report.mean_image_bytes / KB:.1f} KB",
                        refresh=False,
                    )
        writer.close()
        ok = True
    finally:
        if not ok:
            writer.close(cancel=True)
    _write_split_files(storage, in_test, count, report)
    report.elapsed_s = time.perf_counter() - start
    return report


def _check_generate_args(count: int, workers: int, write_threads: int) -> None:
    """Refuse fewer than 2 images, or fewer than 1 worker or write thread.

    Raises:
        ValueError: names the argument and its value.
    """
    if count < 2:
        raise ValueError(f"count {count} must be at least 2 (a train and a test split)")
    for name, value in (("workers", workers), ("write threads", write_threads)):
        if value < 1:
            raise ValueError(f"{name} {value} must be at least 1")


def _refuse_existing_dataset(storage: Storage) -> None:
    """Refuse a target that already holds a dataset.

    Raises:
        SynthError: names a key of the dataset found.
        pipelines.storage.base.StorageError: the target cannot be listed.
    """
    found = existing_dataset_key(storage)
    if found is not None:
        raise SynthError(
            f"{storage.describe()} already holds a dataset (found {found}): choose "
            "another target or pass --overwrite"
        )


def _write_sample(writer: _BoundedWriter, sample: Sample, report: SynthReport) -> None:
    """Queue one sample's JPEG and annotation for writing; count them and its boxes in ``report``.

    Raises:
        pipelines.storage.base.StorageError: an earlier write failed.
    """
    writer.write(f"JPEGImages/{sample.image_id}.jpg", sample.jpeg)
    writer.write(f"Annotations/{sample.image_id}.xml", sample.xml)
    report.images += 1
    report.objects += 2
    report.image_bytes += len(sample.jpeg)
    report.other_bytes += len(sample.xml)
    report.boxes += sample.boxes


def _write_split_files(
    storage: Storage, in_test: np.ndarray, count: int, report: SynthReport
) -> None:
    """Write ``train.txt`` and ``test.txt`` (outside and inside the ``in_test`` mask); count them.

    An empty split gets no file.
    """
    for split, mask in (("train", ~in_test), ("test", in_test)):
        indices = np.flatnonzero(mask)
        if len(indices) == 0:
            continue
        text = "".join(f"{image_id(int(i), count)}\n" for i in indices).encode("ascii")
        storage.write(f"{SPLIT_DIR}/{split}.txt", text)
        report.objects += 1
        report.other_bytes += len(text)
        setattr(report, split, len(indices))
