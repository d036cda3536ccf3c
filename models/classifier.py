"""Image classifiers, built the same way for training and for serving.

- ``convnet``: the original DSS benchmark's small ConvNet, the LeNet-5 layout of PyTorch's "Training
  a classifier" tutorial (CIFAR-10): conv 5x5 (6) → max-pool 2 → conv 5x5 (16) → max-pool 2 → linear
  400→120 → 120→84 → 84→classes, on 32x32 inputs; the original read grayscale images
  (``grayscale=True``).
- ``resnet18``: torchvision's ResNet-18 (He et al., "Deep Residual Learning for Image Recognition",
  CVPR 2016), its last layer sized to the classes.

:class:`Classifier` wraps every model: it takes RGB float images in [0, 1] already resized to
``image_size`` x ``image_size`` and does grayscale conversion and normalisation itself, so the
serving handler only decodes and resizes. This file is also the archive's ``--model-file``, so it
imports only torch and torchvision.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

log = logging.getLogger(__name__)

#: Architectures this project trains.
ARCHITECTURES = ("convnet", "resnet18")
#: Input side in pixels that an architecture requires (the others take any size >= 32).
FIXED_INPUT_SIZE = {"convnet": 32}
#: ImageNet channel statistics (torchvision's classification weights expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ITU-R BT.601 luma weights, as ``torchvision.transforms.v2.functional.rgb_to_grayscale``.
LUMA = (0.299, 0.587, 0.114)


class SmallConvNet(nn.Module):
    """The LeNet-5-style ConvNet of the original DSS benchmark (see the module doc).

    Input float32 ``[B, C, 32, 32]``; output logits float32 ``[B, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of ``[B, C, 32, 32]`` images."""
        return self.classifier(self.features(x))


class Classifier(nn.Module):
    """A classification network with its input preparation.

    ``forward`` takes float32 ``[B, 3, H, W]`` RGB images in [0, 1] (``H = W = image_size``) and
    returns logits float32 ``[B, num_classes]`` (``softmax(dim=1)`` for probabilities). With
    ``grayscale`` the images become one luma channel first; then they are normalised with the
    ImageNet mean and std (their luma-weighted means for grayscale).

    Args:
        network: the network proper (input ``[B, 1 or 3, H, W]`` normalised).
        grayscale: convert RGB to one channel before the network.
    """

    def __init__(self, network: nn.Module, *, grayscale: bool = False):
        super().__init__()
        self.network = network
        self.grayscale = grayscale
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if grayscale:
            luma = torch.tensor(LUMA)
            mean, std = (luma * mean).sum().reshape(1), (luma * std).sum().reshape(1)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits float32 ``[B, num_classes]`` of float32 ``[B, 3, H, W]`` images in [0, 1]."""
        if self.grayscale:
            images = (images * self.luma).sum(dim=1, keepdim=True)
        return self.network((images - self.mean) / self.std)


def build_classifier(
    arch: str, num_classes: int, *, grayscale: bool = False, image_size: int | None = None
) -> Classifier:
    """Build an untrained classifier; never downloads anything.

    Args:
        arch: one of :data:`ARCHITECTURES`.
        num_classes: number of classes (at least 2).
        grayscale: read one luma channel instead of RGB (the original ConvNet did).
        image_size: the input side the model will get; checked against
            :data:`FIXED_INPUT_SIZE` when given.

    Raises:
        ValueError: unknown ``arch``, ``num_classes < 2``, or an ``image_size`` the
            architecture cannot take (the ConvNet's linear layers expect 32x32 inputs).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown classifier arch {arch!r}; choose one of {ARCHITECTURES}")
    if num_classes < 2:
        raise ValueError(f"{num_classes=}: a classifier needs at least two classes")
    fixed = FIXED_INPUT_SIZE.get(arch)
    if fixed is not None and image_size is not None and image_size != fixed:
        raise ValueError(f"{arch} takes {fixed}x{fixed} inputs; got image_size {image_size}")
    channels = 1 if grayscale else 3
    if arch == "convnet":
        network: nn.Module = SmallConvNet(channels, num_classes)
    else:
        network = resnet18(weights=None, num_classes=num_classes)
        if grayscale:
            network.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return Classifier(network, grayscale=grayscale)


def build_pretrained_classifier(
    arch: str, num_classes: int, *, grayscale: bool = False
) -> tuple[Classifier, bool]:
    """Build a ResNet-18 from torchvision's ImageNet weights when cached or downloadable.

    The last layer is replaced by a fresh one for ``num_classes``. An untrained model is returned
    for the ConvNet (no published weights) or ``grayscale`` (ImageNet's are RGB), and, with a
    one-line warning, when the weights cannot be had (no network, no cache).

    Returns:
        ``(model, pretrained)``; ``pretrained`` says whether ImageNet weights were loaded.
    """
    if arch != "resnet18" or grayscale:
        return build_classifier(arch, num_classes, grayscale=grayscale), False
    weights = ResNet18_Weights.DEFAULT
    try:
        network = resnet18(weights=weights)
    except Exception as exc:  # noqa: BLE001 - any download failure means: train from scratch
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning(
            "ImageNet weights for %s are not cached (%s) and could not be downloaded (%s): "
            "training from scratch",
            arch,
            cached,
            first_line,
        )
        return build_classifier(arch, num_classes), False
    network.fc = nn.Linear(network.fc.in_features, num_classes)
    return Classifier(network), True


def load_trained_classifier(out_dir: str | os.PathLike) -> tuple[Classifier, dict[str, str]]:
    """Rebuild a trained classifier from a training output dir, in eval mode, on the CPU.

    Reads ``model.json`` (``{"task": "classification", "arch", "num_classes", "grayscale",
    "image_size"}``), ``model.pt`` (a state_dict, loaded with ``weights_only=True``) and
    ``index_to_name.json`` (``{"0": "Platelets", ...}``, 0-based); never downloads anything.

    Returns:
        ``(model, index_to_name)``.

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
    model = build_classifier(
        spec["arch"], int(spec["num_classes"]), grayscale=bool(spec.get("grayscale"))
    )
    model.load_state_dict(torch.load(paths["model.pt"], map_location="cpu", weights_only=True))
    return model.eval(), index_to_name
