"""What the project's TorchServe handlers share: request decoding, archive reading, batching.

Both archives (``detector.mar``, ``classifier.mar``; ``serve/archive.py``) ship this file flat next
to the handler; the handlers import it as a sibling module (``from base_handler import ...``), since
TorchServe imports the handler module by name from that dir. In the repository it is
``handlers.base_handler`` (relative import). :class:`ImageHandler` loads the archive, applies the
model-config YAML's ``handler:`` knobs, decodes the bodies and answers each request of a batch on
its own: a missing, empty, too large or undecodable body gets HTTP 400 and ``{"error": "..."}``
while the others are answered normally. TorchServe requires the handler module to define exactly one
class and counts only classes defined there, so this imported base does not count.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import io
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from ts.torch_handler.base_handler import BaseHandler

log = logging.getLogger(__name__)

#: Image formats accepted in a request body, as PIL names them.
ACCEPTED_FORMATS = ("JPEG", "PNG")
#: Source location torchvision's decoders put in front of their error messages.
_DECODER_LOCATION = re.compile(r"^[\w()]+, \S+:\d+, ")
#: How to send an image, for error messages.
_CURL_HINT = "e.g. curl -T image.jpg URL"
#: ``model.json`` without a ``task`` key was written before classification existed.
DEFAULT_TASK = "detection"


class ImageHandler(BaseHandler):
    """Base of the project's handlers: one image per request, one JSON answer per request.

    Subclasses set the class attributes below and implement :meth:`build_model`,
    :meth:`prepare_image`, :meth:`inference` and :meth:`postprocess`; they may extend
    :meth:`set_knob` for their own ``handler:`` knobs.

    Attributes:
        task: the ``model.json`` task this handler serves (``"detection"``, ...).
        required_spec_keys: keys ``model.json`` must have.
        default_model_file: model file name when the manifest names none.
        builder: name of the function the model file must define; passed to :meth:`build_model`.
        max_image_pixels: refuse (HTTP 400) images of more pixels (width * height), read from the
            image header before decoding, so a small compressed body cannot make the worker allocate
            gigabytes. A ``handler:`` knob.
    """

    task: str = ""
    required_spec_keys: tuple[str, ...] = ("arch", "num_classes")
    default_model_file: str = ""
    builder: str = ""
    max_image_pixels: int = 40_000_000

    def __init__(self) -> None:
        super().__init__()
        self.index_to_name: dict[str, str] = {}
        self.model_spec: dict[str, Any] = {}

    # ------------------------------------------------------------------ to implement

    def build_model(self, build: Callable[..., torch.nn.Module], spec: dict[str, Any]):
        """Build the untrained model ``spec`` (``model.json``) describes with ``build``.

        ``build`` is the model file's :attr:`builder`; the state_dict is loaded into the model
        afterwards.

        Raises:
            ValueError: the spec does not describe a model this handler can build.
        """
        raise NotImplementedError

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """Turn one decoded image into the model's input for that image.

        ``image`` is RGB ``[3, H, W]``, uint8 (uint16 for 16-bit PNGs).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ loading

    def initialize(self, context: Any) -> None:
        """Load the model from the extracted archive; called once per worker.

        Args:
            context: ``ts.context.Context``. Used: ``system_properties["model_dir"]`` and
                ``["gpu_id"]``, ``manifest["model"]["modelFile"/"serializedFile"]`` (defaults
                :attr:`default_model_file` / ``model.pt``) and ``model_yaml_config["handler"]``.

        Raises:
            FileNotFoundError: a file the archive must contain is missing.
            ValueError: ``model.json`` is not a spec for :attr:`task`, or a ``handler:`` knob
                is invalid.
            RuntimeError: the state_dict does not fit the model ``model.json`` describes.
        """
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.manifest = context.manifest or {}
        manifest_model = self.manifest.get("model", {})
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.apply_knobs(self.model_yaml_config.get("handler") or {})

        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")

        self.model_spec = read_model_spec(
            model_dir / "model.json", self.task, self.required_spec_keys
        )
        self.index_to_name = read_json(model_dir / "index_to_name.json")
        self.mapping = self.index_to_name

        model_file = model_dir / manifest_model.get("modelFile", self.default_model_file)
        # a model of the user's (models/own_model.py) names its own function
        builder = self.model_spec.get("function") or self.builder
        module = import_model_file(model_file, builder)
        model = self.build_model(getattr(module, builder), self.model_spec)
        self.model_pt_path = str(model_dir / manifest_model.get("serializedFile", "model.pt"))
        state_dict = torch.load(self.model_pt_path, map_location=self.device, weights_only=True)
        model.load_state_dict(state_dict)
        self.model = model.to(self.device).eval()
        self.initialized = True
        log.info(
            "loaded %s %s (%d classes) on %s; knobs %s",
            self.task,
            self.model_spec["arch"],
            self.model_spec["num_classes"],
            self.device,
            self.knobs(),
        )

    def apply_knobs(self, section: dict[str, Any]) -> None:
        """Override the class-attribute knobs from the YAML ``handler:`` section.

        Unknown keys are logged and ignored.

        Raises:
            ValueError: a knob's value is invalid (the message names the knob).
        """
        for key, value in section.items():
            if not self.set_knob(key, value):
                log.warning("ignoring unknown handler option %r in the model-config YAML", key)

    def set_knob(self, key: str, value: Any) -> bool:
        """Set one knob after checking its value; returns False for an unknown key.

        Raises:
            ValueError: invalid value.
        """
        if key == "max_image_pixels":
            self.max_image_pixels = positive_int(f"handler.{key}", value)
            return True
        return False

    def knobs(self) -> dict[str, Any]:
        """Current knob values, for the log."""
        return {"max_image_pixels": self.max_image_pixels}

    # ------------------------------------------------------------------ serving

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Answer one batch of requests; one entry per request, in order.

        Args:
            data: one dict per request, the body under ``"data"`` or ``"body"`` (bytes, or str
                for ``text/*`` bodies, or the parsed JSON for ``application/json``).
            context: ``ts.context.Context``; per-request status and content type are set on it.

        Returns:
            Per request: the subclass's answer (:meth:`postprocess`, HTTP 200), or
            ``{"error": "..."}`` with HTTP 400 set for that request.

        Raises:
            RuntimeError: the model itself failed; TorchServe then answers the whole batch
                with an error (5xx) and the worker keeps running.
        """
        start = time.perf_counter()
        self.context = context
        inputs, errors = self.preprocess(data)
        valid = [i for i, item in enumerate(inputs) if item is not None]
        outputs = self.inference([inputs[i] for i in valid]) if valid else []
        answers = self.postprocess(outputs) if valid else []

        responses: list[Any] = [None] * len(data)
        for i, answer in zip(valid, answers, strict=True):
            responses[i] = answer
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
        """Decode each request body and prepare it for the model (:meth:`prepare_image`).

        Returns:
            ``(inputs, errors)``: ``inputs[i]`` is the prepared image of request ``i``, or None
            when request ``i`` is invalid, in which case ``errors[i]`` says why in one sentence
            meant for the client.
        """
        inputs: list[torch.Tensor | None] = []
        errors: dict[int, str] = {}
        for i, row in enumerate(data):
            try:
                body = request_body(row, request_content_type(self.context, i))
                image = decode_request_image(body, max_pixels=self.max_image_pixels)
            except ValueError as exc:
                errors[i] = str(exc)
                inputs.append(None)
            else:
                inputs.append(self.prepare_image(image))
        return inputs, errors


# ---------------------------------------------------------------------- request decoding


class NoImageError(ValueError):
    """The request carries no image bytes at all: no body, an empty one, or form fields only."""


#: The Content-Type of a form-encoded body, which curl's ``-d`` / ``--data-binary`` send unless
#: told otherwise; TorchServe parses such a body into form fields, so no image bytes remain.
FORM_ENCODED = "application/x-www-form-urlencoded"


def request_content_type(context: Any, index: int) -> str | None:
    """The Content-Type header of request ``index``, lower case; None when the context does not say.

    ``context`` is None outside TorchServe.
    """
    try:
        headers = context.get_all_request_header(index)
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    for name, value in (headers or {}).items():
        if str(name).lower() == "content-type":
            return str(value).lower()
    return None


def request_body(row: Any, content_type: str | None = None) -> bytes:
    """Extract the image bytes of one request.

    Args:
        row: TorchServe's dict for one request; the body is under ``"data"`` (multipart field
            ``data``) or ``"body"`` (raw body); a multipart upload with a single field of
            another name is accepted too. A str value (``text/*`` body) is read as base64.
        content_type: the request's Content-Type header, when known; a missing image in a
            form-encoded request (:data:`FORM_ENCODED`) is then explained as such.

    Returns:
        The raw image bytes.

    Raises:
        NoImageError: no body, an empty body, or form fields without an image (what ``curl
            --data-binary`` sends without a Content-Type).
        ValueError: a JSON body, or text that is not base64.
    """
    try:
        return _request_body(row)
    except NoImageError:
        if content_type is None or not content_type.startswith(FORM_ENCODED):
            raise
        raise NoImageError(
            f"the body was sent form-encoded (Content-Type: {FORM_ENCODED}, what curl -d and "
            "--data-binary send by default), which the server reads as form fields, not as "
            f"an image: send the image bytes ({_CURL_HINT}, or add -H 'Content-Type: "
            "image/jpeg')"
        ) from None


def _request_body(row: Any) -> bytes:
    """:func:`request_body` without the form-encoding explanation."""
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
            raise NoImageError(
                "no image in the request, only form fields: send the image bytes with a "
                f"Content-Type such as image/jpeg ({_CURL_HINT}) or as multipart field 'data'"
            )
    if body is None or (isinstance(body, bytes | bytearray | str) and len(body) == 0):
        raise NoImageError(
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


# ---------------------------------------------------------------------- archive contents


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from a file of the archive.

    Raises:
        FileNotFoundError: the file is missing (the message names it).
        ValueError: not valid JSON, or not a JSON object.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from the model archive ({path})")
    try:
        with path.open(encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name} in the model archive is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} in the model archive is not a JSON object: {value!r}")
    return value


def read_model_spec(path: Path, task: str, required: Sequence[str]) -> dict[str, Any]:
    """Read and check ``model.json``: a spec for ``task`` with the ``required`` keys.

    A spec without ``task`` counts as :data:`DEFAULT_TASK` (written before classification).

    Raises:
        FileNotFoundError: no ``model.json``.
        ValueError: another task, or missing keys (the message says which).
    """
    spec = read_json(path)
    found = spec.get("task", DEFAULT_TASK)
    if found != task:
        raise ValueError(f"model.json says task={found!r}; this handler serves {task}")
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"model.json lacks {', '.join(missing)}: {spec}")
    return spec


def import_model_file(path: Path, builder: str) -> ModuleType:
    """Import the archived model file (``detector.py``, ``classifier.py``) from its path.

    Importing by path works whether or not the model dir is on sys.path.

    Args:
        path: the model file.
        builder: name of the function it must define (``build_detector``, ...).

    Raises:
        FileNotFoundError: no such file in the archive.
        ValueError: the file does not define ``builder``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"model file {path.name} is missing from the model archive")
    name = f"archived_model_{path.stem}"  # never the name of a module already imported
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in a model file look their module up there
    spec.loader.exec_module(module)
    if not callable(getattr(module, builder, None)):
        raise ValueError(f"model file {path.name} does not define {builder}")
    return module


def positive_int(label: str, value: Any) -> int:
    """``int(value)`` for a setting that must be a positive integer.

    Args:
        label: how the error message names the setting, e.g. ``handler.topk``.
        value: the configured value (int, or a str of digits).

    Raises:
        ValueError: not an integer (2.5 is refused, not truncated), or < 1.
    """
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label}={value!r} must be a positive integer") from None
    if number < 1 or (number != value and not isinstance(value, str)):
        raise ValueError(f"{label}={value!r} must be a positive integer")
    return number
