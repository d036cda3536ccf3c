"""Your own training class: ``train.task: examples/my_task.py:LabelSmoothing``.

The class subclasses :class:`training.tasks.ClassificationTask` (``task: classification``) or
:class:`training.tasks.DetectionTask` (``task: detection``) and overrides what it changes; the
rest (data, model, evaluation, measurements, checkpoints and ``make resume``) is the built-in
task's. Here: cross-entropy with label smoothing (Szegedy et al. 2016, "Rethinking the Inception
Architecture", section 7) and SGD with Nesterov momentum.

    make train TASK=classification ARGS="--set train.task=examples/my_task.py:LabelSmoothing"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.tasks import ClassificationTask

#: The share of each target's probability spread evenly over the other classes.
SMOOTHING = 0.1


class LabelSmoothing(ClassificationTask):
    """Cross-entropy against smoothed targets, trained with SGD and Nesterov momentum."""

    def forward_loss(self, model, batch, device):
        """The loss of ``batch``: its images stacked to float32 ``[B, 3, S, S]`` on ``device``,
        its labels int64 ``[B]``; returns ``(loss, parts)`` as the built-in tasks do."""
        images = torch.stack(batch.images).to(device)
        labels = torch.stack(batch.targets).to(device)
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
        plain = F.cross_entropy(logits.detach(), labels)
        return loss, {"loss_plain": plain}

    def build_optimizer(self, params, cfg):
        """SGD at ``train.lr`` with Nesterov momentum ``train.momentum``."""
        return torch.optim.SGD(
            params, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True,
            weight_decay=cfg.train.weight_decay,
        )  # fmt: skip
