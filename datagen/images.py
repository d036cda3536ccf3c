"""Synthetic samples: real JPEGs of a chosen size distribution, random boxes, VOC annotations.

Like DLIO's data generator (MLPerf Storage's), the dataset's *sizes* match a real workload; unlike
its random bytes, every image is a decodable JPEG with boxes where the annotation says, in Pascal
VOC layout (:mod:`datagen.synthetic` writes it), read unchanged by every access pattern::

    JPEGImages/<id>.jpg       the images
    Annotations/<id>.xml      one VOC annotation per image: size, 1..K boxes with class names
    ImageSets/Main/train.txt  image ids of the training split, one per line (written last)
    ImageSets/Main/test.txt   image ids of the test split (when ``test_fraction > 0``)

Units: bytes; KB = 10^3 bytes. Ids are ``synth_000000``, ``synth_000001``... Each image's target
size is drawn from the distribution (lognormal, or normal clipped to at least
:data:`MIN_TARGET_BYTES`) by golden-ratio low-discrepancy sampling of its quantiles, so the mean
of the first N targets is close to the distribution's for any N. It is reached by the pixel count
(content with about constant compressed bytes per pixel) and then the JPEG quality (a short
search around :data:`BASE_QUALITY`), within a few percent from about 5 KB to a few MB; a target
above :data:`LARGEST_JPEG_BYTES` is a 1 MB JPEG followed by random bytes, which decoders ignore.
Every image depends only on ``(seed, index)`` and the size/box settings (same arguments and same
Pillow/libjpeg/NumPy: same bytes, in one process or several); memory is bounded by a window of
images, whatever the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from statistics import NormalDist
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageChops, ImageDraw

KB = 1000  # bytes: KB means 10^3 bytes throughout


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
IMAGE_STREAM, SPLIT_STREAM, SIZE_STREAM = 0, 1, 2


class SynthError(Exception):
    """The target cannot take the dataset (one is already there, or it is not a directory)."""


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


def spec_from_preset(
    preset: str = DEFAULT_PRESET,
    *,
    mean_kb: float | None = None,
    std_kb: float | None = None,
    **fields,
) -> SynthSpec:
    """A :class:`SynthSpec` from a preset, its mean and/or std overridden (KB = 10^3 bytes).

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

    The ``index``-th point of a golden-ratio sequence (offset by the seed) through the
    distribution's quantile function: consecutive indices cover the distribution evenly, so the mean
    of N targets is within a few percent of ``spec.mean_bytes`` from N of a few dozen.
    """
    if spec.std_bytes == 0:
        return spec.mean_bytes
    offset = np.random.default_rng([spec.seed, SIZE_STREAM]).random()
    u = (offset + index * GOLDEN) % 1.0
    z = NormalDist().inv_cdf(min(max(u, 1e-6), 1 - 1e-6))
    if spec.distribution == "normal":
        return max(MIN_TARGET_BYTES, round(spec.mean_bytes + z * spec.std_bytes))
    sigma2 = math.log1p((spec.std_bytes / spec.mean_bytes) ** 2)
    mu = math.log(spec.mean_bytes) - sigma2 / 2
    return round(math.exp(mu + math.sqrt(sigma2) * z))


def generate_sample(spec: SynthSpec, index: int, count: int) -> Sample:
    """Generate image ``index`` of a dataset of ``count`` images (pure: same input, same bytes).

    The target size gives the pixel count (a common photo aspect ratio); 1..``max_boxes`` boxes of
    5-40 % of each side lie inside the image (integer pixels, ``0 <= xmin < xmax <= width``), one
    ellipse per box in its class's colour over a textured background; the JPEG quality is the one
    closest to the target. A target above :data:`LARGEST_JPEG_BYTES` gets a JPEG of about
    :data:`PADDED_JPEG_BYTES` and random bytes after it, up to the target.
    """
    rng = np.random.default_rng([spec.seed, IMAGE_STREAM, index])
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
    """An RGB image that compresses like a photo: colour field, texture, an ellipse per box, grain.

    Each ellipse is filled in its class's colour, with a darker rim and a nucleus.
    """
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
    """Encode near ``target`` bytes: :data:`BASE_QUALITY` first, then secant steps on log(size).

    Steps only when more than :data:`SIZE_TOLERANCE` off, at most ``tries`` more encodes within
    [MIN_Q, MAX_Q]; the encoding closest to the target is kept.
    """
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
