"""Run a trained model on images from files or S3 and draw what it finds.

Used by ``scripts/predict.py`` (``make predict INPUT=...``). Inputs are local paths or
``s3://bucket/key`` URIs, or a ``.txt`` file listing either, one per line. A detector's boxes
are drawn on the image; a classifier's best class is written on a frame around it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import encode_jpeg
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from common.files import atomic_write_bytes
from pipelines.samples import decode
from pipelines.storage.base import StorageError
from training.outputs import write_json

log = logging.getLogger(__name__)

#: Box colours by label id (cycled).
COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]


@dataclass(frozen=True)
class Prediction:
    """The detections (or classes) for one input.

    Attributes:
        input: the path or URI as given.
        detections: ``{"label", "box": [x1, y1, x2, y2] (pixels), "score"}`` best first; for
            a classifier the top-k ``{"label", "box": the whole image, "score": probability}``.
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


def classify(
    model, image: torch.Tensor, index_to_name: dict[str, str], image_size: int, k: int = 5
) -> list[dict]:
    """The ``min(k, classes)`` most probable classes of one uint8 ``[3, H, W]`` image.

    The image is resized to ``image_size`` x ``image_size`` as in training's evaluation. Each
    entry's ``box`` is the whole image, so the result has the shape of :func:`detect`'s.
    """
    height, width = image.shape[-2:]
    resized = TF.resize(image, [image_size, image_size], antialias=True)
    with torch.inference_mode():
        probabilities = model((resized.float() / 255)[None]).softmax(dim=1)[0]
    top = probabilities.topk(min(k, probabilities.numel()))
    return [
        {
            "label": index_to_name.get(str(index), str(index)),
            "box": [0.0, 0.0, float(width - 1), float(height - 1)],
            "score": round(p, 4),
        }
        for p, index in zip(top.values.tolist(), top.indices.tolist(), strict=True)
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
    *,
    spec: dict | None = None,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predict, draw and save every input; bad inputs are reported, not fatal.

    Writes ``out_dir/<n>_<name>.jpg`` per input and ``out_dir/detections.json`` (atomically).

    Args:
        spec: the run's ``model.json``; a ``"classification"`` task classifies (top-5, the best
            class drawn; ``threshold`` unused), anything else detects.

    Returns:
        ``(predictions, failures)`` with ``(input, reason)`` for each input that failed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    label_ids = {name: int(i) for i, name in index_to_name.items()}
    predictions, failures = [], []
    classifier = (spec or {}).get("task") == "classification"
    for n, source in enumerate(inputs):
        try:
            image = decode(read_bytes(source))
        except (StorageError, OSError, ValueError) as exc:
            failures.append((source, str(exc).splitlines()[0]))
            log.warning("skipped %s: %s", source, failures[-1][1])
            continue
        pixels = image.as_subclass(torch.Tensor)
        if classifier:
            detections = classify(model, pixels, index_to_name, int(spec["image_size"]))
            drawn = draw(pixels, detections[:1], label_ids)
        else:
            detections = detect(model, pixels, index_to_name, threshold)
            drawn = draw(pixels, detections, label_ids)
        name = Path(source.rsplit("/", 1)[-1]).stem
        path = out_dir / f"{n:04d}_{name}.jpg"
        atomic_write_bytes(path, drawn)
        predictions.append(Prediction(source, detections, str(path)))
    write_json(
        out_dir / "detections.json",
        {
            "threshold": threshold,
            "predictions": [vars(p) for p in predictions],
            "failures": [{"input": i, "error": e} for i, e in failures],
        },
    )
    return predictions, failures


def load_trained(out: Path):
    """Load the trained model of ``out`` (a run's folder or an extracted archive), either task.

    Returns:
        ``(model, index_to_name, model.json)``, a model of the user's included; in eval mode, on the
        CPU.

    Raises:
        FileNotFoundError: ``out`` holds no trained model (the message says to train first).
    """
    spec_path = out / "model.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} is missing: train first (make train OUT={out})")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    if "model_file" in spec:  # the user's model (models/own_model.py)
        from models.own_model import load_trained as load_own

        return (*load_own(out), spec)
    if spec.get("task") == "classification":
        from models.classifier import load_trained_classifier

        return (*load_trained_classifier(out), spec)
    from models.detector import load_trained_detector

    return (*load_trained_detector(out), spec)
