"""A classifier of your own, for `make train TASK=classification ARGS="--set
model.arch=examples/my_models.py:build_net"` (see the README's "Your own model").

The contract (``models/own_model.py``): ``build_net(num_classes, image_size, pretrained)``
returns a ``torch.nn.Module`` whose ``forward`` takes float32 ``[B, 3, S, S]`` images in [0, 1]
(``S = image_size``) and returns logits ``[B, num_classes]``. This file stands alone (it
imports only torch): the run copies it, and ``make archive`` packs it for serving.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Two 3x3 convolutions, global average pooling, a linear layer: ~5,000 parameters.

    Args:
        num_classes: output logits.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of float32 ``[B, 3, S, S]`` images in [0, 1]."""
        return self.head(self.features(images - 0.5).flatten(1))


def build_net(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """The model (any ``image_size``: the pooling makes it size-free; no pretrained weights
    exist, so ``pretrained`` is ignored)."""
    return TinyNet(num_classes)
