"""Your own model: ``model.arch`` as ``path/to/file.py:function`` or ``package.module:function``.

The function is called as ``function(num_classes, image_size, pretrained)`` (int, int, bool)
and must return a ``torch.nn.Module`` that keeps this contract, checked on one dummy batch
before training (:func:`build`):

- classification: ``model(images)`` with ``images`` float32 ``[B, 3, S, S]`` in [0, 1]
  (``S = image_size``, RGB, not normalised) returns float logits ``[B, num_classes]``;
- detection: torchvision's detection interface (``torchvision.models.detection.FasterRCNN``'s):
  in train mode ``model(images, targets)`` with a list of float32 ``[3, H, W]`` images in [0, 1]
  and one ``{"boxes": float32 [N, 4] (x1, y1, x2, y2 pixels), "labels": int64 [N]}`` per image
  (labels from 1; 0 is the background, counted in ``num_classes``) returns a dict of scalar
  losses, summed for the step; in eval mode ``model(images)`` returns one ``{"boxes": [N, 4],
  "labels": [N], "scores": [N]}`` per image. Training feeds images already resized to
  ``image_size`` (shorter side), serving and ``make predict`` at their own size and expect
  boxes in their pixels: resize inside the model, as torchvision's ``GeneralizedRCNNTransform``
  does.

``model.grayscale`` is the built-in classifiers' option; a model of the user's gets RGB and does
what it wants with it.

The file must stand alone (it may import installed packages, not files beside it): training
copies it into the run's folder (:func:`copy_into`) and ``make archive`` packs that copy as the
archive's model file, from which the serving handler and ``make predict`` build the model again
(``pretrained`` False: the trained weights are loaded after, with ``weights_only=True``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from common.errors import ConfigError, error_line
from common.files import atomic_write_bytes
from common.reference import Reference, load_reference
from common.reference import resolve as find_function

#: File names already taken at the root of an archive (a model file may not be called so).
RESERVED_FILES = (
    "model.pt", "model.json", "index_to_name.json", "base_handler.py", "detector_handler.py",
    "classifier_handler.py", "MAR-INF",
)  # fmt: skip


def is_own_model(arch: str) -> bool:
    """Whether ``model.arch`` names a function of the user's rather than a built-in model."""
    return ":" in arch


def resolve(text: str) -> Reference:
    """The model function ``model.arch`` names (:func:`common.reference.resolve`); nothing imported.

    Raises:
        ConfigError: as :func:`common.reference.resolve`, or the file has a name the archive
            reserves.
    """
    entry = find_function(text, "model.arch")
    if entry.source.name in RESERVED_FILES:
        raise ConfigError(
            f"model.arch {text!r}: a model file may not be called {entry.source.name} (the "
            "archive holds a file of that name): rename it"
        )
    return entry


def spec(entry: Reference) -> dict:
    """The ``model.json`` keys that say how to build the model again."""
    return {"reference": entry.text, "model_file": entry.model_file, "function": entry.function}


def build(
    entry: Reference, task: str, num_classes: int, image_size: int, pretrained: bool
) -> nn.Module:
    """Call the user's function and check its model on one dummy batch (see the module doc).

    Args:
        task: ``classification`` or ``detection``.
        num_classes: classes the model predicts (detection: the background included).

    Raises:
        ConfigError: the function fails, returns something else than a module, or its module
            breaks the contract (the message names the model reference and what was wrong).
    """
    function = load_reference(entry)
    call = f"{entry.function}({num_classes}, {image_size}, {pretrained})"
    try:
        model = function(num_classes, image_size, pretrained)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"model.arch {entry.text!r}: {call} raised {error_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.arch {entry.text!r}: {call} returned {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    check = check_classifier if task == "classification" else check_detector
    try:  # on a copy: a train-mode pass would move BatchNorm statistics
        check(copy.deepcopy(model), num_classes, image_size)
    except Exception as exc:  # noqa: BLE001 - the contract, broken in any way: one line
        raise ConfigError(
            f"model.arch {entry.text!r} breaks the {task} contract: {error_line(exc)} (see "
            "models/own_model.py or the README's 'Your own model')"
        ) from None
    return model


def check_classifier(model: nn.Module, num_classes: int, image_size: int) -> None:
    """Two random images of ``[3, S, S]`` in, float logits ``[2, num_classes]`` out.

    Raises:
        ValueError: the output is not that; any error the forward pass raises.
    """
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, image_size, image_size))
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ValueError(f"forward returned {_kind(out)}, not float logits")
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(
            f"2 images of 3x{image_size}x{image_size} gave logits of shape {tuple(out.shape)}, "
            f"not (2, {num_classes})"
        )


def check_detector(model: nn.Module, num_classes: int, image_size: int) -> None:
    """One training step's losses and one image's detections, on a random image.

    Raises:
        ValueError: a dict of scalar losses (train) or a list of ``{boxes, labels, scores}``
            (eval) did not come back; any error the forward passes raise.
    """
    image = torch.rand(3, image_size, image_size)
    side = float(image_size)
    target = {
        "boxes": torch.tensor([[side / 8, side / 8, side / 2, side / 2]]),
        "labels": torch.tensor([min(1, num_classes - 1)], dtype=torch.int64),
    }
    model.train()
    losses = model([image], [target])
    if not isinstance(losses, dict) or not losses:
        raise ValueError(f"train mode returned {_kind(losses)}, not a dict of losses")
    for name, value in losses.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"train mode's loss {name!r} is {_kind(value)}, not a scalar tensor")
    model.eval()
    with torch.no_grad():
        detections = model([image])
    if not isinstance(detections, list | tuple) or len(detections) != 1:
        raise ValueError(f"eval mode returned {_kind(detections)}, not one result per image")
    found = detections[0]
    keys = {"boxes", "labels", "scores"}
    if not isinstance(found, dict) or not keys <= set(found):
        raise ValueError(f"eval mode's result is {_kind(found)}, not a dict with {sorted(keys)}")
    n = len(found["scores"])
    if tuple(found["boxes"].shape) != (n, 4) or len(found["labels"]) != n:
        raise ValueError(
            f"eval mode gave boxes {tuple(found['boxes'].shape)}, labels "
            f"{tuple(found['labels'].shape)}, scores ({n},): expected (N, 4), (N,), (N,)"
        )


def copy_into(entry: Reference, out: Path) -> None:
    """Copy the model file into the run's folder (atomically): the run keeps what it trained."""
    atomic_write_bytes(out / entry.model_file, entry.source.read_bytes())


def load_trained(out: str | os.PathLike) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild a trained model of the user's from a training output dir, in eval mode, on the CPU.

    From ``model.json`` (``model_file``, ``function``, ``num_classes``, ``image_size``), the model
    file the run copied, ``model.pt`` (``weights_only=True``) and ``index_to_name.json``.

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ConfigError: the model file fails to import or build.
    """
    out = Path(out)
    spec = json.loads((out / "model.json").read_text(encoding="utf-8"))
    source = out / spec["model_file"]
    for path in (source, out / "model.pt", out / "index_to_name.json"):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: train first (make train OUT={out})")
    text = spec.get("reference", spec.get("entry_point", ""))  # "entry_point": earlier runs
    entry = Reference(text, source.resolve(), spec["function"])
    build = load_reference(entry)
    try:
        model = build(int(spec["num_classes"]), int(spec["image_size"]), False)
        model.load_state_dict(torch.load(out / "model.pt", map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - the user's code, or weights that do not fit
        raise ConfigError(f"cannot rebuild the model of {out}: {error_line(exc)}") from None
    index_to_name = json.loads((out / "index_to_name.json").read_text(encoding="utf-8"))
    return model.eval(), index_to_name


def _kind(value) -> str:
    """What a value is, for messages: a tensor's shape and dtype, else its type."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
