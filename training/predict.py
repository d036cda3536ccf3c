"""Run a trained detector on images from files or S3 and draw what it finds.

Used by ``scripts/predict.py`` (``make predict INPUT=...``). Inputs are local paths or
``s3://bucket/key`` URIs, or a ``.txt`` file listing either, one per line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import encode_jpeg
from torchvision.utils import draw_bounding_boxes

from pipelines.samples import decode
from pipelines.storage import StorageError, atomic_write_bytes
from training.outputs import write_json

log = logging.getLogger(__name__)

#: Box colours by label id (cycled).
COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]


@dataclass(frozen=True)
class Prediction:
    """The detections for one input.

    Attributes:
        input: the path or URI as given.
        detections: ``{"label", "box": [x1, y1, x2, y2] (pixels), "score"}`` best first.
        image_path: where the drawn image was written.
    """

    input: str
    detections: list[dict]
    image_path: str


def expand_inputs(spec: str, read_text) -> list[str]:
    """The inputs named by ``spec``: itself, or the lines of a ``.txt`` list (``#`` comments).

    Args:
        spec: a path or URI.
        read_text: reads a path or URI as text (to read a list stored in S3 too).

    Raises:
        ValueError: ``spec`` is empty, or the list names nothing.
    """
    if not spec.strip():
        raise ValueError("no input: make predict INPUT=<image path, s3:// URI, or .txt list>")
    if not spec.endswith(".txt"):
        return [spec]
    lines = [line.strip() for line in read_text(spec).splitlines()]
    inputs = [line for line in lines if line and not line.startswith("#")]
    if not inputs:
        raise ValueError(f"{spec} lists no images")
    return inputs


def detect(
    model, image: torch.Tensor, index_to_name: dict[str, str], threshold: float
) -> list[dict]:
    """Detections above ``threshold`` for one uint8 ``[3, H, W]`` image, in its pixels."""
    with torch.inference_mode():
        (output,) = model([image.float() / 255])
    keep = output["scores"] >= threshold
    return [
        {
            "label": index_to_name.get(str(label), str(label)),
            "box": [round(v, 1) for v in box],
            "score": round(score, 4),
        }
        for box, label, score in zip(
            output["boxes"][keep].tolist(),
            output["labels"][keep].tolist(),
            output["scores"][keep].tolist(),
            strict=True,
        )
    ]


def draw(image: torch.Tensor, detections: list[dict], label_ids: dict[str, int]) -> bytes:
    """JPEG bytes of ``image`` with each box drawn and labelled ``"<label> <score>"``."""
    if not detections:
        return encode_jpeg(image, quality=90).numpy().tobytes()
    boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32)
    labels = [f"{d['label']} {d['score']:.2f}" for d in detections]
    colors = [COLORS[label_ids.get(d["label"], 0) % len(COLORS)] for d in detections]
    drawn = draw_bounding_boxes(image, boxes, labels=labels, colors=colors, width=2)
    return encode_jpeg(drawn, quality=90).numpy().tobytes()


def predict_all(
    model,
    index_to_name: dict[str, str],
    inputs: list[str],
    read_bytes,
    out_dir: Path,
    threshold: float,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Detect, draw and save every input; bad inputs are reported, not fatal.

    Writes ``out_dir/<n>_<name>.jpg`` per input and ``out_dir/detections.json`` (atomically).

    Returns:
        ``(predictions, failures)`` with ``(input, reason)`` for each input that failed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    label_ids = {name: int(i) for i, name in index_to_name.items()}
    predictions, failures = [], []
    for n, spec in enumerate(inputs):
        try:
            image = decode(read_bytes(spec))
        except (StorageError, OSError, ValueError) as exc:
            failures.append((spec, str(exc).splitlines()[0]))
            log.warning("skipped %s: %s", spec, failures[-1][1])
            continue
        detections = detect(model, image.as_subclass(torch.Tensor), index_to_name, threshold)
        name = Path(spec.rsplit("/", 1)[-1]).stem
        path = out_dir / f"{n:04d}_{name}.jpg"
        atomic_write_bytes(path, draw(image.as_subclass(torch.Tensor), detections, label_ids))
        predictions.append(Prediction(spec, detections, str(path)))
    write_json(
        out_dir / "detections.json",
        {
            "threshold": threshold,
            "predictions": [vars(p) for p in predictions],
            "failures": [{"input": i, "error": e} for i, e in failures],
        },
    )
    return predictions, failures
