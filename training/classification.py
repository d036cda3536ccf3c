"""The classification task: ConvNet or ResNet-18 trained with cross-entropy, evaluated by accuracy.

Top-1 / top-5 and per-class accuracy. One of the two task modules (see :mod:`training.tasks`); both
define the same names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from models import own_model
from models.classifier import build_classifier, build_pretrained_classifier
from pipelines.samples import Batch, classification_transform
from training import distributed
from training.config import Config
from training.engine import Precision, progress_bar

#: Label id of the first class (no background class).
LABEL_OFFSET = 0
#: Top-5 accuracy is reported when there are more classes than this (else it is always 1).
TOP5_MIN_CLASSES = 6


def transform(cfg: Config, train: bool) -> v2.Compose:
    """The sample transform (see :func:`pipelines.samples.classification_transform`)."""
    return classification_transform(train, cfg.model.image_size)


def index_to_name(classes: list[str]) -> dict[str, str]:
    """``index_to_name.json``: class index (as a string, from ``"0"``) → class name."""
    return {str(i + LABEL_OFFSET): name for i, name in enumerate(classes)}


def build_model(
    cfg: Config, classes: list[str], *, pretrained: bool
) -> tuple[torch.nn.Module, dict]:
    """The classifier for ``classes`` and its ``model.json`` spec.

    Args:
        pretrained: start ResNet-18 from torchvision's ImageNet weights when they can be had.

    Returns:
        ``(model, spec)``; ``spec`` is what :func:`models.classifier.load_trained_classifier`
        and the serving handler rebuild the model from, and says whether the ImageNet weights
        were really loaded (``pretrained``).
    """
    arch, grayscale = cfg.model.arch, cfg.model.grayscale
    if own_model.is_own_model(arch):
        entry = own_model.resolve(arch)
        size = cfg.model.image_size
        model = own_model.build(entry, "classification", len(classes), size, pretrained)
        spec = {"task": "classification", "arch": arch, "num_classes": len(classes),
                "image_size": size, "pretrained": pretrained,
                **own_model.spec(entry)}  # fmt: skip
        return model, spec
    loaded = False
    if pretrained:
        model, loaded = build_pretrained_classifier(arch, len(classes), grayscale=grayscale)
    else:
        model = build_classifier(
            arch, len(classes), grayscale=grayscale, image_size=cfg.model.image_size
        )
    spec = {
        "task": "classification",
        "arch": arch,
        "num_classes": len(classes),
        "image_size": cfg.model.image_size,
        "grayscale": grayscale,
        "pretrained": loaded,
    }
    return model, spec


def forward_loss(
    model: torch.nn.Module, batch: Batch, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss on ``batch``: ``(mean cross-entropy, {})``, with no separate parts.

    The logits of its images (stacked to float32 ``[B, 3, S, S]`` on ``device``) against its labels
    (int64 ``[B]``); the step around it is :func:`training.engine.step_fn`.
    """
    images = torch.stack(batch.images).to(device, non_blocking=True)
    targets = torch.stack(batch.targets).to(device, non_blocking=True)
    return F.cross_entropy(model(images), targets), {}


def quality_columns(classes: list[str]) -> list[str]:
    """The ``metrics.csv`` columns :func:`evaluate` fills (one ``acc_<class>`` per class)."""
    return [
        "top1",
        "top5",
        "balanced_acc",
        *(f"acc_{name}" for name in classes),
        "eval_loss",
        "eval_samples",
        "eval_skipped",
        "eval_s",
    ]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    *,
    num_samples: int,
    classes: list[str],
    precision: Precision | None = None,
) -> dict:
    """Accuracy of the model on a split, with torchmetrics' ``MulticlassAccuracy``.

    Args:
        num_samples: images in the split (for the progress bar only).
        precision: the forward passes run in it (:class:`training.engine.Precision`; fp32).
        classes: class names in index order.

    Returns:
        ``top1`` (share of images whose highest-scoring class is right), ``top5`` (right class
        among the five highest; NaN with fewer than :data:`TOP5_MIN_CLASSES` classes, where it
        is trivially 1), ``balanced_acc`` (mean of the per-class accuracies, which the majority
        class cannot dominate), ``acc_<class>`` (share of that class's images classified
        right: its recall; NaN when the split has none), ``eval_loss`` (mean cross-entropy),
        ``eval_samples``, ``eval_skipped`` (undecodable images) and ``eval_s`` (seconds).
    """
    model.eval()
    precision = precision or Precision("fp32", device)
    n = len(classes)
    started = time.perf_counter()
    logits, targets, skipped = _predict(model, loader, device, n, num_samples, precision)
    # several ranks: each evaluated its part; every rank gathers all parts (one object
    # collective, whatever their sizes) and computes the figures over the whole split
    parts = distributed.gather((logits, targets, skipped))
    logits = torch.cat([p[0] for p in parts])
    targets = torch.cat([p[1] for p in parts])
    skipped = sum(p[2] for p in parts)
    samples = len(targets)
    loss_sum = F.cross_entropy(logits, targets, reduction="sum").item() if samples else 0.0
    seen = torch.bincount(targets, minlength=n)
    top1, top5, per_class = _accuracy_metrics(n, logits, targets)
    result = {
        "top1": math.nan,
        "top5": math.nan,
        "balanced_acc": math.nan,
        **{f"acc_{name}": math.nan for name in classes},
        "eval_loss": loss_sum / samples if samples else math.nan,
        "eval_samples": samples,
        "eval_skipped": skipped,
        "eval_s": time.perf_counter() - started,
    }
    if samples:
        _fill_accuracies(result, classes, seen, top1, top5, per_class)
    return result


def _predict(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    num_classes: int,
    num_samples: int,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the model over this rank's part of a split, with a progress bar.

    Returns:
        ``(logits, targets, skipped)``: float32 logits ``[N, num_classes]`` and int64 labels
        ``[N]`` on the CPU for the N decoded images, and the number of undecodable images.
    """
    skipped = 0
    all_logits = [torch.zeros(0, num_classes)]
    all_targets = [torch.zeros(0, dtype=torch.int64)]
    bar = progress_bar(
        total=num_samples, desc="evaluate", unit="img", leave=False, dynamic_ncols=True
    )
    for batch in loader:
        bar.update(len(batch.images) + len(batch.errors))
        skipped += len(batch.errors)
        if not batch.images:
            continue
        with precision.autocast():
            all_logits.append(model(torch.stack(batch.images).to(device)).float().cpu())
        all_targets.append(torch.stack(batch.targets))
    bar.close()
    return torch.cat(all_logits), torch.cat(all_targets), skipped


def _accuracy_metrics(
    num_classes: int, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[MulticlassAccuracy, MulticlassAccuracy | None, MulticlassAccuracy]:
    """Top-1, top-5 (None below :data:`TOP5_MIN_CLASSES` classes) and per-class accuracy metrics.

    Updated with ``logits`` ``[N, num_classes]`` and ``targets`` ``[N]`` when N > 0.
    """
    n = num_classes
    top1 = MulticlassAccuracy(num_classes=n, top_k=1, average="micro", sync_on_compute=False)
    top5 = (
        MulticlassAccuracy(num_classes=n, top_k=5, average="micro", sync_on_compute=False)
        if n >= TOP5_MIN_CLASSES
        else None
    )
    per_class = MulticlassAccuracy(num_classes=n, average="none", sync_on_compute=False)
    if len(targets):
        for metric in (top1, top5, per_class):
            if metric is not None:
                metric.update(logits, targets)
    return top1, top5, per_class


def _fill_accuracies(
    result: dict,
    classes: list[str],
    seen: torch.Tensor,
    top1: MulticlassAccuracy,
    top5: MulticlassAccuracy | None,
    per_class: MulticlassAccuracy,
) -> None:
    """Set ``result``'s ``top1``, ``top5``, ``balanced_acc`` and ``acc_<class>`` from the metrics.

    ``seen``: images per class (``[len(classes)]``); a class without any keeps NaN and stays out of
    the balanced accuracy.
    """
    accuracies = per_class.compute()
    present = seen > 0
    result["top1"] = float(top1.compute())
    if top5 is not None:
        result["top5"] = float(top5.compute())
    result["balanced_acc"] = float(accuracies[present].mean())
    for name, accuracy, has in zip(classes, accuracies.tolist(), present.tolist(), strict=True):
        result[f"acc_{name}"] = accuracy if has else math.nan


def describe(row: dict) -> str:
    """The quality part of an epoch's log line."""
    per_class = ", ".join(
        f"{key[4:]} {value:.3f}" for key, value in row.items() if key.startswith("acc_")
    )
    top5 = "" if math.isnan(row["top5"]) else f", top-5 {row['top5']:.4f}"
    return f"top-1 {row['top1']:.4f}{top5}, balanced {row['balanced_acc']:.4f} ({per_class})"
