"""TorchServe handler for the project's Faster R-CNN detectors.

The archive (``scripts/archive.py``) holds, flat in the model dir TorchServe extracts:
``detector.py`` (the model file, ``models/detector.py``), ``model.pt`` (a state_dict),
``model.json`` (``{"task": "detection", "arch": ..., "num_classes": ..., "frozen_bn": ...}``),
``index_to_name.json`` (``{"0": "__background__", "1": "Platelets", ...}``), ``base_handler.py`` and
this file.

Request: the body of ``POST /predictions/NAME`` is one JPEG or PNG image (raw bytes, or base64 text
when sent with a ``text/*`` content type). Response, per request: a JSON list, best score first, of
``{"<label>": [x1, y1, x2, y2], "score": s}`` with the box in pixel coordinates of the image as sent
(EXIF orientation is not applied) and only detections with ``score >= score_threshold``: the
convention of TorchServe's built-in ``object_detector``. A request whose body is missing, empty, too
large or not a decodable JPEG/PNG gets HTTP 400 and ``{"error": "..."}`` on its own; the other
requests of the batch are answered normally.

Built on ``BaseHandler`` only (through ``ImageHandler``): the built-in vision handlers import
``captum``, which this project does not install. This module must define exactly one class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms.v2.functional import to_dtype

if __package__:  # in the repository: handlers.detector_handler
    from .base_handler import ImageHandler
else:  # in the extracted archive: base_handler.py lies next to this file
    from base_handler import ImageHandler


class DetectorHandler(ImageHandler):
    """Serve a ``build_detector`` model: images in, labelled boxes out.

    The knobs are class attributes, overridden by the ``handler:`` section of the archive's
    model-config YAML (``context.model_yaml_config["handler"]``).

    Attributes:
        score_threshold: keep detections with ``score >= score_threshold``; float in [0, 1].
        max_image_pixels: refuse (HTTP 400) images with more pixels (:class:`ImageHandler`).
    """

    task = "detection"
    required_spec_keys = ("arch", "num_classes")
    default_model_file = "detector.py"
    builder = "build_detector"
    score_threshold: float = 0.5

    def build_model(
        self, build: Callable[..., torch.nn.Module], spec: dict[str, Any]
    ) -> torch.nn.Module:
        """``build_detector(arch, num_classes, frozen_bn=...)`` as ``model.json`` says.

        A model of the user's: ``function(num_classes, image_size, False)``.
        """
        if "function" in spec:
            return build(int(spec["num_classes"]), int(spec["image_size"]), False)
        return build(
            spec["arch"], int(spec["num_classes"]), frozen_bn=bool(spec.get("frozen_bn", False))
        )

    def set_knob(self, key: str, value: Any) -> bool:
        """``score_threshold`` (float in [0, 1]) and the shared knobs.

        Raises:
            ValueError: invalid value.
        """
        if key == "score_threshold":
            threshold = float(value)
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"handler.score_threshold={value!r} must be in [0, 1]")
            self.score_threshold = threshold
            return True
        return super().set_knob(key, value)

    def knobs(self) -> dict[str, Any]:
        """Current knob values, for the log."""
        return {**super().knobs(), "score_threshold": self.score_threshold}

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """float32 ``[3, H, W]`` in [0, 1], H and W of the image as sent (the model resizes)."""
        return to_dtype(image, torch.float32, scale=True)

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
