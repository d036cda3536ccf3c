"""TorchServe handler for the project's Faster R-CNN detectors.

The archive (see ``scripts/archive.py``) holds, flat in the model dir that TorchServe extracts:
``detector.py`` (the model file, ``models/detector.py``), ``model.pt`` (a state_dict),
``model.json`` (``{"task": "detection", "arch": ..., "num_classes": ..., "frozen_bn": ...}``),
``index_to_name.json`` (``{"0": "__background__", "1": "Platelets", ...}``) and this file.

Request: the body of ``POST /predictions/NAME`` is one JPEG or PNG image (raw bytes, or base64
text when sent with a ``text/*`` content type). Response, per request: a JSON list, best score
first, of ``{"<label>": [x1, y1, x2, y2], "score": s}`` with the box in pixel coordinates of the
image as sent (EXIF orientation is not applied) and only detections with ``score >=
score_threshold``. This is the convention of TorchServe's built-in ``object_detector``.

A request whose body is missing, empty, too large or not a decodable JPEG/PNG gets HTTP 400 and
``{"error": "..."}`` on its own; the other requests of the same batch are answered normally.

Built on :class:`ts.torch_handler.base_handler.BaseHandler` only: the built-in vision handlers
import ``captum`` at load time, which this project does not install. TorchServe requires that
this module define exactly one class.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import io
import json
import logging
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype
from ts.torch_handler.base_handler import BaseHandler

log = logging.getLogger(__name__)

#: Image formats accepted in a request body, as PIL names them.
ACCEPTED_FORMATS = ("JPEG", "PNG")
#: Source location torchvision's decoders put in front of their error messages.
_DECODER_LOCATION = re.compile(r"^[\w()]+, \S+:\d+, ")
#: How to send an image, for error messages.
_CURL_HINT = "e.g. curl -T image.jpg URL"


class DetectorHandler(BaseHandler):
    """Serve a ``build_detector`` model: images in, labelled boxes out.

    Knobs are class attributes; the model-config YAML of the archive overrides them in its
    ``handler:`` section (``context.model_yaml_config["handler"]``):

    Attributes:
        score_threshold: keep detections with ``score >= score_threshold``; float in [0, 1].
        max_image_pixels: refuse (HTTP 400) images with more than this many pixels (width *
            height), read from the image header before decoding, so that a small compressed
            body cannot make the worker allocate gigabytes.
    """

    score_threshold: float = 0.5
    max_image_pixels: int = 40_000_000

    def __init__(self) -> None:
        super().__init__()
        self.index_to_name: dict[str, str] = {}
        self.model_spec: dict[str, Any] = {}

    # ------------------------------------------------------------------ loading

    def initialize(self, context: Any) -> None:
        """Load the model from the extracted archive; called once per worker.

        Args:
            context: ``ts.context.Context``. Used: ``system_properties["model_dir"]`` and
                ``["gpu_id"]``, ``manifest["model"]["modelFile"/"serializedFile"]`` (defaults
                ``detector.py`` / ``model.pt``) and ``model_yaml_config["handler"]``.

        Raises:
            FileNotFoundError: a file the archive must contain is missing.
            ValueError: ``model.json`` is not a detection spec, or a ``handler:`` knob is invalid.
            RuntimeError: the state_dict does not fit the model ``model.json`` describes.
        """
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.manifest = context.manifest or {}
        manifest_model = self.manifest.get("model", {})
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        self._apply_knobs(self.model_yaml_config.get("handler") or {})

        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")

        self.model_spec = _read_model_spec(model_dir / "model.json")
        self.index_to_name = _read_json(model_dir / "index_to_name.json")
        self.mapping = self.index_to_name

        module = _import_model_file(model_dir / manifest_model.get("modelFile", "detector.py"))
        model = module.build_detector(
            self.model_spec["arch"],
            int(self.model_spec["num_classes"]),
            frozen_bn=bool(self.model_spec.get("frozen_bn", False)),
        )
        self.model_pt_path = str(model_dir / manifest_model.get("serializedFile", "model.pt"))
        state_dict = torch.load(self.model_pt_path, map_location=self.device, weights_only=True)
        model.load_state_dict(state_dict)
        self.model = model.to(self.device).eval()
        self.initialized = True
        log.info(
            "loaded %s (%d classes) on %s; score_threshold=%s",
            self.model_spec["arch"],
            self.model_spec["num_classes"],
            self.device,
            self.score_threshold,
        )

    def _apply_knobs(self, section: dict[str, Any]) -> None:
        """Override the class-attribute knobs from the YAML ``handler:`` section (validated)."""
        for key, value in section.items():
            if key == "score_threshold":
                threshold = float(value)
                if not 0.0 <= threshold <= 1.0:
                    raise ValueError(f"handler.score_threshold={value!r} must be in [0, 1]")
                self.score_threshold = threshold
            elif key == "max_image_pixels":
                pixels = int(value)
                if pixels < 1:
                    raise ValueError(f"handler.max_image_pixels={value!r} must be positive")
                self.max_image_pixels = pixels
            else:
                log.warning("ignoring unknown handler option %r in the model-config YAML", key)

    # ------------------------------------------------------------------ serving

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Answer one batch of requests; one entry per request, in order.

        Args:
            data: one dict per request, the body under ``"data"`` or ``"body"`` (bytes, or str
                for ``text/*`` bodies, or the parsed JSON for ``application/json``).
            context: ``ts.context.Context``; per-request status and content type are set on it.

        Returns:
            Per request: a list of detections ``{"<label>": [x1, y1, x2, y2], "score": s}``
            (HTTP 200), or ``{"error": "..."}`` with HTTP 400 set for that request.

        Raises:
            RuntimeError: the model itself failed; TorchServe then answers the whole batch
                with an error (5xx) and the worker keeps running.
        """
        start = time.perf_counter()
        self.context = context
        images, errors = self.preprocess(data)
        valid = [i for i, image in enumerate(images) if image is not None]
        outputs = self.inference([images[i] for i in valid]) if valid else []
        detections = self.postprocess(outputs)

        responses: list[Any] = [None] * len(data)
        for i, dets in zip(valid, detections, strict=True):
            responses[i] = dets
        for i, message in errors.items():
            log.info("request %d of the batch refused: %s", i, message)
            responses[i] = {"error": message}
            context.set_response_status(400, "Bad Request", i)
        for i in range(len(data)):
            context.set_response_content_type(i, "application/json")

        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            elapsed_ms = round((time.perf_counter() - start) * 1000, 2)
            metrics.add_time("HandlerTime", elapsed_ms, None, "ms")
        return responses

    def preprocess(
        self, data: list[dict[str, Any]]
    ) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        """Decode each request body into a float image.

        Returns:
            ``(images, errors)``: ``images[i]`` is a float32 ``[3, H, W]`` tensor in [0, 1]
            (RGB, H and W of the image as sent) or None when request ``i`` is invalid, in which
            case ``errors[i]`` says why in one sentence meant for the client.
        """
        images: list[torch.Tensor | None] = []
        errors: dict[int, str] = {}
        for i, row in enumerate(data):
            try:
                body = request_body(row)
                image = decode_request_image(body, max_pixels=self.max_image_pixels)
            except ValueError as exc:
                errors[i] = str(exc)
                images.append(None)
            else:
                images.append(to_dtype(image, torch.float32, scale=True))
        return images, errors

    def inference(self, images: list[torch.Tensor], *args: Any, **kwargs: Any) -> list[dict]:
        """Run the detector on a list of images of any sizes.

        Args:
            images: float32 ``[3, H, W]`` tensors in [0, 1]; moved to the model's device here.

        Returns:
            One dict per image with ``boxes`` (float32 ``[N, 4]`` xyxy pixels of that image),
            ``labels`` (int64 ``[N]``) and ``scores`` (float32 ``[N]``), best score first.
        """
        with torch.inference_mode():
            return self.model([image.to(self.device) for image in images], *args, **kwargs)

    def postprocess(self, outputs: list[dict[str, torch.Tensor]]) -> list[list[dict[str, Any]]]:
        """Turn model outputs into the object-detector JSON convention.

        Returns:
            Per image, a list of ``{"<label>": [x1, y1, x2, y2], "score": s}``: boxes in pixels
            rounded to 0.1, scores rounded to 1e-4, only ``score >= score_threshold``. A label
            id missing from ``index_to_name.json`` is written as its number.
        """
        results = []
        for output in outputs:
            keep = output["scores"] >= self.score_threshold
            boxes = output["boxes"][keep].cpu().tolist()
            labels = output["labels"][keep].cpu().tolist()
            scores = output["scores"][keep].cpu().tolist()
            results.append(
                [
                    {
                        self.index_to_name.get(str(label), str(label)): [round(v, 1) for v in box],
                        "score": round(score, 4),
                    }
                    for box, label, score in zip(boxes, labels, scores, strict=True)
                ]
            )
        return results


# ---------------------------------------------------------------------- helpers (functions only:
# TorchServe refuses a handler module that defines more than one class)


def request_body(row: Any) -> bytes:
    """Extract the image bytes of one request.

    Args:
        row: TorchServe's dict for one request; the body is under ``"data"`` (multipart field
            ``data``) or ``"body"`` (raw body); a multipart upload with a single field of
            another name is accepted too. A str value (``text/*`` body) is read as base64.

    Returns:
        The raw image bytes.

    Raises:
        ValueError: no body, an empty body, a JSON body, text that is not base64, or form
            fields without an image (what ``curl --data-binary`` sends without a Content-Type).
    """
    body = None
    if isinstance(row, bytes | bytearray | str):
        body = row
    elif isinstance(row, dict):
        body = row.get("data")
        if body is None:
            body = row.get("body")
        if body is None and len(row) == 1:
            (only,) = row.values()
            if isinstance(only, bytes | bytearray) and only:
                body = only
        if body is None and row:
            raise ValueError(
                "no image in the request, only form fields: send the image bytes with a "
                f"Content-Type such as image/jpeg ({_CURL_HINT}) or as multipart field 'data'"
            )
    if body is None or (isinstance(body, bytes | bytearray | str) and len(body) == 0):
        raise ValueError(
            f"empty request body: POST the bytes of a JPEG or PNG image ({_CURL_HINT})"
        )
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        try:
            return base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"text body is not base64: send the image bytes ({_CURL_HINT}) or base64 text"
            ) from None
    raise ValueError(f"JSON body is not an image: POST the bytes of a JPEG or PNG ({_CURL_HINT})")


def decode_request_image(body: bytes, *, max_pixels: int) -> torch.Tensor:
    """Decode a JPEG or PNG into an RGB tensor, refusing oversized images before decoding.

    Args:
        body: the encoded image.
        max_pixels: largest accepted width * height; read from the header, so nothing big is
            allocated for a refused image.

    Returns:
        ``[3, H, W]`` tensor, uint8 (uint16 for 16-bit PNGs), RGB; grey or RGBA images are
        converted. EXIF orientation is not applied.

    Raises:
        ValueError: not a JPEG/PNG, too many pixels, or corrupt data.
    """
    try:
        with Image.open(io.BytesIO(body)) as header:
            fmt, (width, height) = header.format, header.size
    except Image.DecompressionBombError:
        raise ValueError(f"image has too many pixels (limit {max_pixels})") from None
    except Exception:  # noqa: BLE001 - PIL raises several types for garbage
        raise ValueError(
            f"body ({len(body)} bytes) is not a decodable image: POST a JPEG or PNG"
        ) from None
    if fmt not in ACCEPTED_FORMATS:
        raise ValueError(f"unsupported image format {fmt}: POST a JPEG or PNG")
    if width * height > max_pixels:
        raise ValueError(f"image is {width}x{height}, more than the limit of {max_pixels} pixels")
    try:
        return decode_image(
            torch.frombuffer(bytearray(body), dtype=torch.uint8), mode=ImageReadMode.RGB
        )
    except RuntimeError as exc:
        first_line = (str(exc).splitlines() or ["decoder error"])[0]
        reason = _DECODER_LOCATION.sub("", first_line)  # drop "decode_jpeg, /src/x.cpp:167, "
        raise ValueError(f"could not decode the {fmt} image: {reason}") from None


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from a file of the archive; FileNotFoundError names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from the model archive ({path})")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _read_model_spec(path: Path) -> dict[str, Any]:
    """Read and check ``model.json``: a detection spec with ``arch`` and ``num_classes``."""
    spec = _read_json(path)
    if spec.get("task", "detection") != "detection":
        raise ValueError(f"model.json says task={spec['task']!r}; this handler serves detection")
    missing = [key for key in ("arch", "num_classes") if key not in spec]
    if missing:
        raise ValueError(f"model.json lacks {', '.join(missing)}: {spec}")
    return spec


def _import_model_file(path: Path) -> ModuleType:
    """Import the archived model file (``detector.py``) from its path; it must define
    ``build_detector``. Importing by path works whether or not the model dir is on sys.path."""
    if not path.is_file():
        raise FileNotFoundError(f"model file {path.name} is missing from the model archive")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "build_detector"):
        raise ValueError(f"model file {path.name} does not define build_detector")
    return module
