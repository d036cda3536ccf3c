"""Faster R-CNN detectors from torchvision, built the same way for training and for serving.

This file is also the ``--model-file`` of the TorchServe archive, so it imports only torch and
torchvision. Reference: Ren et al., "Faster R-CNN", NeurIPS 2015; torchvision's
``torchvision.models.detection`` builders.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_resnet50_fpn,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

log = logging.getLogger(__name__)

#: Detector architectures this project trains: builder and its COCO weights.
ARCHITECTURES = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        fasterrcnn_mobilenet_v3_large_320_fpn,
        FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.DEFAULT,
    ),
    "fasterrcnn_resnet50_fpn": (fasterrcnn_resnet50_fpn, FasterRCNN_ResNet50_FPN_Weights.DEFAULT),
}


def build_detector(arch: str, num_classes: int, *, frozen_bn: bool = False, **options) -> nn.Module:
    """Build an untrained Faster R-CNN; never downloads anything.

    Args:
        arch: a key of :data:`ARCHITECTURES`.
        num_classes: number of classes *including* the background class 0.
        frozen_bn: replace every ``BatchNorm2d`` by ``FrozenBatchNorm2d``, the layout torchvision
            uses when it starts from pretrained weights. A state_dict saved from such a model only
            loads into a model built with ``frozen_bn=True``.
        **options: keyword arguments of torchvision's ``FasterRCNN`` (e.g. the training-time
            sampling knobs ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``).

    Returns:
        The model. In eval mode it takes a list of float images ``[3, H, W]`` in [0, 1] and returns
        one dict per image with ``boxes`` (float32 ``[N, 4]``, pixel xyxy of the input image),
        ``labels`` (int64 ``[N]``) and ``scores`` (float32 ``[N]``).

    Raises:
        ValueError: unknown ``arch`` or ``num_classes < 2``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown detector arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"{num_classes=} must count the background and at least one class")
    builder, _ = ARCHITECTURES[arch]
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    if frozen_bn:
        _freeze_batchnorm(model)
    return model


def build_pretrained_detector(arch: str, num_classes: int, **options) -> tuple[nn.Module, bool]:
    """Build a detector from torchvision's COCO weights when they are cached or downloadable.

    The box predictor is replaced by a fresh one for ``num_classes``. When the weights cannot be
    had (no network, no cache) a one-line warning is logged and an untrained model is returned.

    Args:
        arch, num_classes, options: as for :func:`build_detector`.

    Returns:
        ``(model, pretrained)`` where ``pretrained`` says whether COCO weights were loaded; it is
        also the ``frozen_bn`` value to rebuild the same layout with :func:`build_detector`.
    """
    builder, weights = ARCHITECTURES[arch]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        model = builder(weights=weights, **options)
    except Exception as exc:  # noqa: BLE001 - any download failure means: train from scratch
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning(
            "pretrained weights for %s are not cached (%s) and could not be downloaded (%s): "
            "training from scratch",
            arch,
            cached,
            first_line,
        )
        return build_detector(arch, num_classes, **options), False
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model, True


def _freeze_batchnorm(module: nn.Module) -> None:
    """Swap every ``nn.BatchNorm2d`` for a ``FrozenBatchNorm2d`` with the same eps, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_batchnorm(child)


def load_trained_detector(out_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild a trained detector from a training output dir, in eval mode, on the CPU.

    Reads ``model.json`` (arch, num_classes, frozen_bn), ``model.pt`` (a state_dict, loaded with
    ``weights_only=True``) and ``index_to_name.json``; never downloads anything.

    Returns:
        ``(model, index_to_name)`` with label ids as strings (``"1" → "RBC"``).

    Raises:
        FileNotFoundError: one of the three files is missing (the message names it).
    """
    import json  # here: the archived model file keeps its imports to torch/torchvision

    paths = {
        name: os.path.join(out_dir, name)
        for name in ("model.json", "model.pt", "index_to_name.json")
    }
    for path in paths.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: train first (make train OUT={out_dir})")
    with open(paths["model.json"], encoding="utf-8") as f:
        spec = json.load(f)
    with open(paths["index_to_name.json"], encoding="utf-8") as f:
        index_to_name = json.load(f)
    model = build_detector(
        spec["arch"], int(spec["num_classes"]), frozen_bn=bool(spec.get("frozen_bn"))
    )
    model.load_state_dict(torch.load(paths["model.pt"], map_location="cpu", weights_only=True))
    return model.eval(), index_to_name
