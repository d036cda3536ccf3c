"""Synthetic detection datasets: real JPEG images of a chosen size distribution, random boxes.

Like DLIO's data generator (the one MLPerf Storage uses), this writes a dataset whose *sizes*
match a real workload, so storage can be measured at any scale without downloading one. Unlike
DLIO's random bytes, every image is a real, decodable JPEG with boxes drawn where the annotation
says, in Pascal VOC layout, so the VOC reader (:func:`pipelines.formats.voc.load_voc_split`),
the shard writer and every access pattern use it unchanged::

    JPEGImages/<id>.jpg       the images
    Annotations/<id>.xml      one VOC annotation per image: size, 1..K boxes with class names
    ImageSets/Main/train.txt  image ids of the training split, one per line (written last)
    ImageSets/Main/test.txt   image ids of the test split (when ``test_fraction > 0``)

Units: sizes are in bytes; KB means 10^3 bytes. Ids are ``synth_000000``, ``synth_000001``...

Image sizes. Each image gets a target size drawn from the size distribution (lognormal by
default, or normal clipped to at least :data:`MIN_TARGET_BYTES`), by quasi-random (golden-ratio
low-discrepancy) sampling of the distribution's quantiles, so the mean of the first N targets is
close to the distribution's mean for any N, not only on average. The target is reached by
choosing the image's pixel count (content whose compressed size per pixel is about constant:
smooth colour fields, texture, cell-like ellipses and sensor-like grain, which compresses like a
photo) and then the JPEG quality (a short search around :data:`BASE_QUALITY`), to within a few
percent for sizes from about 5 KB to a few MB. A target above :data:`LARGEST_JPEG_BYTES`
(about 12 MB: MLPerf's unet3d volumes are 146.6 MB) is a 1 MB JPEG followed by random bytes up
to the target, which JPEG decoders ignore.

Determinism: every image depends only on ``(seed, index)`` and the size/box settings, so the same
arguments (and the same Pillow/libjpeg and NumPy) give the same bytes, whether generated in one
process or several. Nothing is held beyond a bounded window of images: 100,000 images need no
more memory than 10.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from multiprocessing import get_context
from statistics import NormalDist
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from pipelines.storage.base import PrefixNotFound, Storage

KB = 1000  # bytes: KB means 10^3 bytes throughout

SPLIT_DIR = "ImageSets/Main"
DATASET_DIRS = ("ImageSets/Main", "Annotations", "JPEGImages")
DEFAULT_CLASSES = ("cell_a", "cell_b", "cell_c")

MIN_TARGET_BYTES = 2 * KB  # normal draws are clipped to at least this (bytes)
MIN_SIDE = 32  # pixels: the smallest image side
MAX_PIXELS = 40_000_000  # pixels: the largest image (about 6300 x 6300)
BASE_QUALITY = 90  # JPEG quality tried first; the search stays within [MIN_Q, MAX_Q]
MIN_Q, MAX_Q = 20, 98
SIZE_TOLERANCE = 0.05  # an image within 5 % of its target size is accepted as it is
BYTES_PER_PIXEL = 0.31  # measured: compressed bytes per pixel of this content at BASE_QUALITY
HEADER_BYTES = 620  # measured: JPEG headers and tables at BASE_QUALITY (bytes)
#: The largest sample drawn as a JPEG alone (bytes): about MAX_PIXELS' worth. A larger target
#: (MLPerf's unet3d volumes: 146.6 MB) is a JPEG of PADDED_JPEG_BYTES followed by random bytes
#: up to the target, which JPEG decoders ignore (they stop at the image's end marker): the
#: storage delivers the profile's bytes, a decoder sees a real image.
LARGEST_JPEG_BYTES = round(MAX_PIXELS * BYTES_PER_PIXEL)
PADDED_JPEG_BYTES = 1_000_000
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)  # width / height, common photo shapes
GOLDEN = (math.sqrt(5) - 1) / 2

# Streams of random numbers derived from the seed: per image, the split, the size sequence.
_IMAGE_STREAM, _SPLIT_STREAM, _SIZE_STREAM = 0, 1, 2


class SynthError(Exception):
    """The target cannot take the dataset (one already there, or not a directory)."""


@dataclass(frozen=True)
class SizePreset:
    """A size distribution of a known dataset.

    Attributes:
        mean_bytes: mean image size in bytes.
        std_bytes: standard deviation in bytes (0: every image targets the mean).
        source: where the figure comes from.
    """

    mean_bytes: int
    std_bytes: int
    source: str


PRESETS: dict[str, SizePreset] = {
    "flowers": SizePreset(
        62 * KB,
        31 * KB,
        "the TensorFlow flowers dataset (tf_flowers: 3,670 JPEG photos) used by Samsung's DSS "
        "AI benchmark tool: ~62 KB mean; the spread (std = mean / 2) is an assumption",
    ),
    "openimages": SizePreset(
        315 * KB,
        157 * KB,
        "Open Images (Google) JPEGs as used for detection training: ~315 KB mean; the spread "
        "(std = mean / 2) is an assumption",
    ),
    "mlperf": SizePreset(
        150 * KB,
        0,
        "MLPerf Storage's ResNet-50 workload in DLIO (configs/workload/resnet50_*.yaml): "
        "record_length_bytes_resize 150,528 bytes (224 x 224 x 3) per sample, no spread "
        "(record_length_stdev 0); its record_length_bytes, the mean ImageNet JPEG, is 114,660",
    ),
}
DEFAULT_PRESET = "flowers"


@dataclass(frozen=True)
class SynthSpec:
    """What every image of a synthetic dataset is drawn from.

    Attributes:
        mean_bytes: mean target image size in bytes (KB = 10^3 bytes).
        std_bytes: standard deviation of the target size in bytes (0: all the same).
        distribution: ``"lognormal"`` (sizes > 0, right-skewed like real photo collections) or
            ``"normal"`` (clipped to at least :data:`MIN_TARGET_BYTES`, which raises the mean
            when ``std_bytes`` is a large part of it).
        classes: class names, drawn uniformly per box.
        max_boxes: each image gets 1..``max_boxes`` boxes (uniform).
        seed: the seed of every random choice.

    Raises:
        ValueError: a size not positive, an unknown distribution, no classes, an empty or
            duplicate class name, or ``max_boxes < 1``.
    """

    mean_bytes: int = PRESETS[DEFAULT_PRESET].mean_bytes
    std_bytes: int = PRESETS[DEFAULT_PRESET].std_bytes
    distribution: str = "lognormal"
    classes: tuple[str, ...] = DEFAULT_CLASSES
    max_boxes: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.mean_bytes <= 0:
            raise ValueError(f"mean size {self.mean_bytes} bytes must be positive")
        if self.std_bytes < 0:
            raise ValueError(f"size std {self.std_bytes} bytes must not be negative")
        if self.distribution not in ("lognormal", "normal"):
            raise ValueError(f"distribution {self.distribution!r} is not lognormal or normal")
        names = [c.strip() for c in self.classes]
        if not names or any(not c for c in names):
            raise ValueError(f"class names {','.join(self.classes)!r}: empty name")
        if len(set(names)) != len(names):
            raise ValueError(f"class names {','.join(self.classes)!r}: a name is repeated")
        if self.max_boxes < 1:
            raise ValueError(f"max boxes {self.max_boxes} must be at least 1")
        if self.seed < 0:
            raise ValueError(f"seed {self.seed} must not be negative")
        object.__setattr__(self, "classes", tuple(names))


@dataclass(frozen=True)
class Sample:
    """One generated image and its annotation.

    Attributes:
        image_id: e.g. ``synth_000042``.
        jpeg: the JPEG file's bytes.
        xml: the VOC annotation's bytes (UTF-8).
        target_bytes: the size this image aimed at (bytes).
        width: image width in pixels.
        height: image height in pixels.
        boxes: number of boxes.
        quality: the JPEG quality used.
        padding: random bytes after the JPEG's end marker, part of ``jpeg`` (0 unless the
            target is above :data:`LARGEST_JPEG_BYTES`).
    """

    image_id: str
    jpeg: bytes
    xml: bytes
    target_bytes: int
    width: int
    height: int
    boxes: int
    quality: int
    padding: int = 0


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


def spec_from_preset(
    preset: str = DEFAULT_PRESET,
    *,
    mean_kb: float | None = None,
    std_kb: float | None = None,
    **fields,
) -> SynthSpec:
    """A :class:`SynthSpec` from a preset, with the mean and/or std overridden (KB = 10^3 B).

    With ``mean_kb`` and no ``std_kb``, the preset's std/mean ratio is kept.

    Raises:
        ValueError: an unknown preset, or as :class:`SynthSpec`.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown size preset {preset!r}: choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset]
    mean = base.mean_bytes if mean_kb is None else round(mean_kb * KB)
    if std_kb is not None:
        std = round(std_kb * KB)
    else:
        std = round(mean * base.std_bytes / base.mean_bytes)
    return SynthSpec(mean_bytes=mean, std_bytes=std, **fields)


def image_id(index: int, count: int) -> str:
    """The id of image ``index`` of ``count``: ``synth_`` + the index, zero-padded to 6+ digits."""
    return f"synth_{index:0{max(6, len(str(max(count - 1, 0))))}d}"


def target_size(spec: SynthSpec, index: int) -> int:
    """The size in bytes that image ``index`` aims at.

    The ``index``-th point of a golden-ratio sequence (offset by the seed) is mapped through the
    distribution's quantile function: any run of consecutive indices covers the distribution
    evenly, so the mean of N targets is within a few percent of ``spec.mean_bytes`` already for
    N of a few dozen.
    """
    if spec.std_bytes == 0:
        return spec.mean_bytes
    offset = np.random.default_rng([spec.seed, _SIZE_STREAM]).random()
    u = (offset + index * GOLDEN) % 1.0
    z = NormalDist().inv_cdf(min(max(u, 1e-6), 1 - 1e-6))
    if spec.distribution == "normal":
        return max(MIN_TARGET_BYTES, round(spec.mean_bytes + z * spec.std_bytes))
    sigma2 = math.log1p((spec.std_bytes / spec.mean_bytes) ** 2)
    mu = math.log(spec.mean_bytes) - sigma2 / 2
    return round(math.exp(mu + math.sqrt(sigma2) * z))


def generate_sample(spec: SynthSpec, index: int, count: int) -> Sample:
    """Generate image ``index`` of a dataset of ``count`` images (pure: same input, same bytes).

    Picks the target size, the image shape (pixel count from the target, a common photo aspect
    ratio), 1..``max_boxes`` boxes of 5-40 % of each side inside the image (integer pixel
    coordinates, ``0 <= xmin < xmax <= width``), draws one ellipse per box in its class's colour
    over a textured background, and encodes the JPEG at the quality that comes closest to the
    target. A target above :data:`LARGEST_JPEG_BYTES` gets a JPEG of about
    :data:`PADDED_JPEG_BYTES` and random bytes after it, up to the target.
    """
    rng = np.random.default_rng([spec.seed, _IMAGE_STREAM, index])
    target = target_size(spec, index)
    drawn = target if target <= LARGEST_JPEG_BYTES else PADDED_JPEG_BYTES
    pixels = min(MAX_PIXELS, max(MIN_SIDE * MIN_SIDE, (drawn - HEADER_BYTES) / BYTES_PER_PIXEL))
    aspect = ASPECTS[rng.integers(len(ASPECTS))] * float(rng.uniform(0.9, 1.1))
    width = max(MIN_SIDE, round(math.sqrt(pixels * aspect)))
    height = max(MIN_SIDE, round(pixels / width))
    boxes, labels = _random_boxes(rng, width, height, spec)
    image = _render(rng, width, height, boxes, labels, len(spec.classes))
    jpeg, quality = _encode_to_size(image, drawn)
    padding = max(0, target - len(jpeg)) if drawn < target else 0
    if padding:
        jpeg += rng.bytes(padding)
    name = image_id(index, count)
    xml = voc_annotation(name, width, height, boxes, [spec.classes[c] for c in labels])
    return Sample(name, jpeg, xml, target, width, height, len(boxes), quality, padding)


def _random_boxes(
    rng: np.random.Generator, width: int, height: int, spec: SynthSpec
) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """1..max_boxes integer xyxy boxes inside the image, each side 5-40 % of the image's."""
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, spec.max_boxes + 1))):
        bw = int(rng.integers(max(2, width // 20), max(3, width * 2 // 5) + 1))
        bh = int(rng.integers(max(2, height // 20), max(3, height * 2 // 5) + 1))
        x1 = int(rng.integers(0, width - bw + 1))
        y1 = int(rng.integers(0, height - bh + 1))
        boxes.append((x1, y1, x1 + bw, y1 + bh))
        labels.append(int(rng.integers(len(spec.classes))))
    return boxes, labels


_PALETTE = (
    (200, 60, 70),
    (70, 90, 200),
    (90, 180, 80),
    (220, 170, 50),
    (160, 80, 190),
    (60, 180, 190),
    (230, 120, 160),
    (120, 100, 60),
)
_TEXTURE = 24  # amplitude of the mid-frequency texture (grey levels)
_GRAIN = 10  # amplitude of the per-pixel grain (grey levels): sets the bytes per pixel
_TILE = 256  # pixels: side of the grain tile


def _render(
    rng: np.random.Generator,
    width: int,
    height: int,
    boxes: list[tuple[int, int, int, int]],
    labels: list[int],
    classes: int,
) -> Image.Image:
    """An RGB image that compresses like a photo: smooth colour field, texture, one ellipse per
    box (filled in its class's colour, with a darker rim and a nucleus), sensor-like grain."""
    cells = (max(2, height // 64 + 2), max(2, width // 64 + 2), 3)
    image = Image.fromarray(rng.integers(40, 216, cells, dtype=np.uint8), "RGB")
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    texture = (max(2, height // 4), max(2, width // 4), 3)
    texture = rng.integers(128 - _TEXTURE, 128 + _TEXTURE + 1, texture, dtype=np.uint8)
    texture = Image.fromarray(texture, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    image = ImageChops.add(image, texture, 1.0, -128)
    draw = ImageDraw.Draw(image)
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        base = _PALETTE[label % len(_PALETTE)]
        jitter = rng.integers(-25, 26, 3)
        fill = tuple(int(min(255, max(0, c + j))) for c, j in zip(base, jitter, strict=True))
        rim = tuple(c // 2 for c in fill)
        draw.ellipse(
            (x1, y1, x2 - 1, y2 - 1), fill=fill, outline=rim, width=max(1, (x2 - x1) // 16)
        )
        nx, ny = (x2 - x1) // 4, (y2 - y1) // 4
        if nx >= 2 and ny >= 2:
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            draw.ellipse((cx - nx // 2, cy - ny // 2, cx + nx // 2, cy + ny // 2), fill=rim)
    # grain: a random tile repeated from a random offset (4x faster than per-pixel draws, and the
    # same to JPEG, which codes 8x8 blocks independently)
    tile = rng.integers(128 - _GRAIN, 128 + _GRAIN + 1, (_TILE, _TILE, 3), dtype=np.uint8)
    dy, dx = (int(v) for v in rng.integers(0, _TILE, 2))
    reps = (-(-(height + dy) // _TILE), -(-(width + dx) // _TILE), 1)
    grain = np.ascontiguousarray(np.tile(tile, reps)[dy : dy + height, dx : dx + width])
    return ImageChops.add(image, Image.fromarray(grain, "RGB"), 1.0, -128)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = BytesIO()
    image.save(out, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return out.getvalue()


def _encode_to_size(image: Image.Image, target: int, tries: int = 4) -> tuple[bytes, int]:
    """Encode at :data:`BASE_QUALITY`; when more than :data:`SIZE_TOLERANCE` off the target,
    step the quality by secant steps on log(size) (at most ``tries`` more encodes, within
    [MIN_Q, MAX_Q]) and keep the encoding closest to the target."""
    quality = BASE_QUALITY
    best = _jpeg(image, quality)
    best_q, size = quality, len(best)
    tried = {quality: size}
    slope = 0.05  # d log(size) / d quality near 90, measured on this content
    for _ in range(tries):
        if abs(size / target - 1) <= SIZE_TOLERANCE:
            break
        step = math.log(target / size) / slope
        step = max(-30, min(8, round(step))) or (1 if target > size else -1)
        new_q = max(MIN_Q, min(MAX_Q, quality + step))
        if new_q in tried:
            break
        data = _jpeg(image, new_q)
        tried[new_q] = len(data)
        if new_q != quality and len(data) != size:
            slope = max(0.005, math.log(len(data) / size) / (new_q - quality))
        quality, size = new_q, len(data)
        if abs(size - target) < abs(len(best) - target):
            best, best_q = data, quality
    return best, best_q


def voc_annotation(
    name: str, width: int, height: int, boxes: list[tuple[int, int, int, int]], labels: list[str]
) -> bytes:
    """A Pascal VOC annotation (UTF-8 XML) for image ``name`` with pixel xyxy ``boxes``."""
    lines = [
        "<annotation>",
        "  <folder>JPEGImages</folder>",
        f"  <filename>{escape(name)}.jpg</filename>",
        "  <source><database>synthetic</database></source>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        lines += [
            "  <object>",
            f"    <name>{escape(label)}</name>",
            "    <pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>",
            f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def split_mask(count: int, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the images in the test split: ``round(count * test_fraction)`` of them
    (at least 1 when the fraction is positive, at most ``count - 1``), chosen by ``seed``.

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
        rng = np.random.default_rng([seed, _SPLIT_STREAM])
        mask[rng.choice(count, n_test, replace=False)] = True
    return mask


def existing_dataset_key(storage: Storage) -> str | None:
    """A key under ``ImageSets/Main``, ``Annotations`` or ``JPEGImages``, or None when the target
    holds none (no dataset there).

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
    """Writes objects in ``threads`` threads with at most ``max_pending`` waiting (bounded
    memory); the first failure is raised by the next :meth:`write` or by :meth:`close`."""

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
    """Samples 0..count-1 in order; with ``workers > 1`` from a process pool, at most
    ``2 * workers`` generated ahead of the consumer."""
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
    if count < 2:
        raise ValueError(f"count {count} must be at least 2 (a train and a test split)")
    for name, value in (("workers", workers), ("write threads", write_threads)):
        if value < 1:
            raise ValueError(f"{name} {value} must be at least 1")
    in_test = split_mask(count, test_fraction, spec.seed)
    if not overwrite:
        found = existing_dataset_key(storage)
        if found is not None:
            raise SynthError(
                f"{storage.describe()} already holds a dataset (found {found}): choose "
                "another target or pass --overwrite"
            )
    from tqdm import tqdm

    report = SynthReport(target_mean_bytes=spec.mean_bytes)
    start = time.perf_counter()
    writer = _BoundedWriter(storage, write_threads, 2 * write_threads)
    ok = False
    try:
        with tqdm(total=count, unit="img", disable=not progress, desc="synth") as bar:
            for sample in _samples(spec, count, workers):
                writer.write(f"JPEGImages/{sample.image_id}.jpg", sample.jpeg)
                writer.write(f"Annotations/{sample.image_id}.xml", sample.xml)
                report.images += 1
                report.objects += 2
                report.image_bytes += len(sample.jpeg)
                report.other_bytes += len(sample.xml)
                report.boxes += sample.boxes
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
    for split, mask in (("train", ~in_test), ("test", in_test)):
        indices = np.flatnonzero(mask)
        if len(indices) == 0:
            continue
        text = "".join(f"{image_id(int(i), count)}\n" for i in indices).encode("ascii")
        storage.write(f"{SPLIT_DIR}/{split}.txt", text)
        report.objects += 1
        report.other_bytes += len(text)
        setattr(report, split, len(indices))
    report.elapsed_s = time.perf_counter() - start
    return report
