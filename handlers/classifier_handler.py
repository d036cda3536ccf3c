"""TorchServe handler for the project's image classifiers (``models/classifier.py``).

The archive (``scripts/archive.py``) holds, flat in the model dir TorchServe extracts:
``classifier.py`` (the model file), ``model.pt`` (a state_dict of the ``Classifier``),
``model.json`` (``{"task": "classification", "arch": "resnet18" | "convnet", "num_classes": N,
"image_size": S, "grayscale": bool}``), ``index_to_name.json`` (``{"0": "Platelets", "1": "RBC",
"2": "WBC"}``, 0-based, no background), ``base_handler.py`` and this file.

Request: the body of ``POST /predictions/NAME`` is one JPEG or PNG image of one object, e.g. a cell
crop (raw bytes, or base64 text when sent with a ``text/*`` content type), resized to ``S`` x ``S``
pixels (aspect ratio not kept, antialiased) as the training crops were. Response, per request: a
JSON object of the ``k = min(topk, N)`` most probable classes, highest first, ``{"<label>":
probability}`` (softmax, rounded to 1e-4), e.g. ``{"WBC": 0.9412, "Platelets": 0.0391, "RBC":
0.0197}``: the convention of TorchServe's built-in ``image_classifier``, whose fixed top-5 fails
with fewer than 5 classes. A request whose body is missing, empty, too large or not a decodable
JPEG/PNG gets HTTP 400 and ``{"error": "..."}`` on its own; the other requests of the batch are
answered normally.

Built on ``BaseHandler`` only (through ``ImageHandler``): the built-in vision handlers import
``captum``, which this project does not install. This module must define exactly one class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms.v2.functional import resize, to_dtype

if __package__:  # in the repository: handlers.classifier_handler
    from .base_handler import ImageHandler, positive_int
else:  # in the extracted archive: base_handler.py lies next to this file
    from base_handler import ImageHandler, positive_int


class ClassifierHandler(ImageHandler):
    """Serve a ``build_classifier`` model: one image in, the most probable classes out.

    The knobs are class attributes, overridden by the ``handler:`` section of the archive's
    model-config YAML (``context.model_yaml_config["handler"]``).

    Attributes:
        topk: answer at most this many classes (never more than the model has); int >= 1.
        max_image_pixels: refuse (HTTP 400) images with more pixels (:class:`ImageHandler`).
        image_size: side in pixels the images are resized to; from ``model.json``.
    """

    task = "classification"
    required_spec_keys = ("arch", "num_classes", "image_size")
    default_model_file = "classifier.py"
    builder = "build_classifier"
    topk: int = 5

    def __init__(self) -> None:
        super().__init__()
        self.image_size = 0

    def build_model(
        self, build: Callable[..., torch.nn.Module], spec: dict[str, Any]
    ) -> torch.nn.Module:
        """Build the ``model.json`` classifier once ``index_to_name.json`` names every class.

        ``build_classifier(arch, num_classes, grayscale=..., image_size=...)``; a model of the
        user's: ``function(num_classes, image_size, False)``.

        Raises:
            ValueError: ``image_size`` is not a positive integer, the labels do not match
                ``num_classes`` or repeat a name, or ``build_classifier`` refuses the spec (unknown
                arch, an image_size the arch cannot take).
        """
        num_classes = int(spec["num_classes"])
        self.image_size = positive_int("model.json image_size", spec["image_size"])
        expected = {str(i) for i in range(num_classes)}
        if set(self.index_to_name) != expected:
            raise ValueError(
                f"index_to_name.json has label ids {sorted(self.index_to_name, key=str)}; "
                f"model.json's num_classes={num_classes} needs exactly 0..{num_classes - 1}"
            )
        names = list(self.index_to_name.values())
        if len(set(names)) != len(names):
            raise ValueError(f"index_to_name.json names a class twice: {self.index_to_name}")
        if "function" in spec:  # the user's: function(num_classes, image_size, pretrained)
            return build(num_classes, self.image_size, False)
        return build(
            spec["arch"],
            num_classes,
            grayscale=bool(spec.get("grayscale", False)),
            image_size=self.image_size,
        )

    def set_knob(self, key: str, value: Any) -> bool:
        """``topk`` (int >= 1) and the shared knobs.

        Raises:
            ValueError: invalid value.
        """
        if key == "topk":
            self.topk = positive_int(f"handler.{key}", value)
            return True
        return super().set_knob(key, value)

    def knobs(self) -> dict[str, Any]:
        """Current knob values, for the log."""
        return {**super().knobs(), "topk": self.topk, "image_size": self.image_size}

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """float32 ``[3, S, S]`` in [0, 1]: scaled to float, then resized (antialiased)."""
        image = to_dtype(image, torch.float32, scale=True)
        image = resize(image, [self.image_size, self.image_size], antialias=True)
        return image.clamp_(0.0, 1.0)

    def inference(self, images: list[torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Class probabilities of a batch.

        Args:
            images: float32 ``[3, S, S]`` tensors in [0, 1]; stacked and moved to the model's
                device.

        Returns:
            float32 ``[B, num_classes]``, each row a softmax (sums to 1).
        """
        with torch.inference_mode():
            logits = self.model(torch.stack(images).to(self.device), *args, **kwargs)
            return torch.softmax(logits.float(), dim=1)

    def postprocess(self, probabilities: torch.Tensor) -> list[dict[str, float]]:
        """Turn probabilities into the image-classifier JSON convention.

        Args:
            probabilities: float32 ``[B, num_classes]``.

        Returns:
            Per image, ``{"<label>": probability}`` of the ``min(topk, num_classes)`` most
            probable classes, highest first, probabilities rounded to 1e-4.
        """
        k = min(self.topk, probabilities.shape[1])
        values, indices = torch.topk(probabilities.cpu(), k, dim=1)
        return [
            {
                self.index_to_name[str(index)]: round(value, 4)
                for value, index in zip(row_values, row_indices, strict=True)
            }
            for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True)
        ]
