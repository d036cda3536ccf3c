"""The detection task: Faster R-CNN trained on boxes, evaluated by mAP.

One of the two task modules (see :mod:`training.tasks`); both define the same names. The step
and evaluation loops follow torchvision's ``references/detection/engine.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.transforms import v2

from models import own_model
from models.detector import build_detector, build_pretrained_detector
from pipelines.samples import Batch, detection_transform
from training import distributed
from training.config import Config
from training.engine import Precision, progress_bar

#: Label id of the first class: 0 is the background class of torchvision's detectors.
LABEL_OFFSET = 1


def transform(cfg: Config, train: bool) -> v2.Compose:
    """The sample transform (see :func:`pipelines.samples.detection_transform`)."""
    return detection_transform(train, cfg.model.image_size)


def index_to_name(classes: list[str]) -> dict[str, str]:
    """``index_to_name.json``: label id (as a string) → class name, ``"0"`` the background."""
    return {"0": "__background__", **{str(i + LABEL_OFFSET): n for i, n in enumerate(classes)}}


def sampling_options(cfg: Config) -> dict:
    """The training-time sampling knobs of ``model.*`` as ``FasterRCNN`` keyword arguments."""
    return {
        "rpn_pre_nms_top_n_train": cfg.model.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": cfg.model.rpn_post_nms_top_n_train,
        "box_batch_size_per_image": cfg.model.box_batch_size_per_image,
    }


def build_model(
    cfg: Config, classes: list[str], *, pretrained: bool
) -> tuple[torch.nn.Module, dict]:
    """The detector for ``classes`` (plus the background) and its ``model.json`` spec.

    Args:
        pretrained: start from torchvision's COCO weights when they can be had.

    Returns:
        ``(model, spec)``; ``spec`` is what :func:`models.detector.load_trained_detector` and
        the serving handler rebuild the model from, and says whether the COCO weights were
        really loaded (``pretrained``: they may not be cached nor downloadable).
    """
    num_classes = len(classes) + LABEL_OFFSET
    if own_model.is_own_model(cfg.model.arch):
        entry = own_model.resolve(cfg.model.arch)
        size = cfg.model.image_size
        model = own_model.build(entry, "detection", num_classes, size, pretrained)
        spec = {"task": "detection", "arch": cfg.model.arch, "num_classes": num_classes,
                "image_size": size, "pretrained": pretrained,
                **own_model.spec(entry)}  # fmt: skip
        return model, spec
    sampling = sampling_options(cfg)
    if pretrained:
        model, frozen_bn = build_pretrained_detector(cfg.model.arch, num_classes, **sampling)
    else:
        model, frozen_bn = build_detector(cfg.model.arch, num_classes, **sampling), False
    spec = {
        "task": "detection",
        "arch": cfg.model.arch,
        "num_classes": num_classes,
        "frozen_bn": frozen_bn,
        "image_size": cfg.model.image_size,
        "pretrained": frozen_bn,  # COCO weights were loaded (frozen_bn is set exactly then)
    }
    return model, spec


def forward_loss(
    model: torch.nn.Module, batch: Batch, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss on ``batch``: ``(sum of the losses, each loss by name)``.

    Its images and targets are moved to ``device``; the losses are those torchvision's detection
    models return in train mode (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
    ``loss_rpn_box_reg``). The step around it: :func:`training.engine.step_fn`.
    """
    images = [img.to(device, non_blocking=True) for img in batch.images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch.targets]
    losses = model(images, targets)
    return sum(losses.values()), losses


def quality_columns(classes: list[str]) -> list[str]:
    """The ``metrics.csv`` columns :func:`evaluate` fills."""
    return ["map_50", "map", "eval_samples", "eval_skipped", "eval_s"]


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
    """mAP of the model on a split, with torchmetrics' ``MeanAveragePrecision`` (COCO protocol).

    Args:
        num_samples: images in the split (for the progress bar only).
        precision: the forward passes run in it (:class:`training.engine.Precision`; fp32).

    Returns:
        ``{"map_50": mAP@0.5, "map": mAP@[.5:.95], "eval_samples": n, "eval_skipped": k,
        "eval_s": seconds}``; boxes are compared in the transformed (resized) image frame,
        where predictions and targets both live.
    """
    model.eval()
    precision = precision or Precision("fp32", device)
    started = time.perf_counter()
    preds, targets, skipped = [], [], 0
    bar = progress_bar(
        total=num_samples, desc="evaluate", unit="img", leave=False, dynamic_ncols=True
    )
    for batch in loader:
        bar.update(len(batch.images) + len(batch.errors))
        skipped += len(batch.errors)
        if not batch.images:
            continue
        with precision.autocast():
            outputs = model([img.to(device) for img in batch.images])
        preds += [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()}
                  for o in outputs]  # fmt: skip
        targets += [
            {"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]}
            for t in batch.targets
        ]
    bar.close()
    # several ranks: each evaluated its part; every rank gathers all parts (whatever their
    # sizes: one object collective) and computes mAP over the whole split, in one process
    # (torchmetrics' own sync would run one collective per image, which uneven parts break)
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", sync_on_compute=False)
    samples = skipped = 0
    for rank_preds, rank_targets, rank_skipped in distributed.gather((preds, targets, skipped)):
        if rank_preds:
            metric.update(rank_preds, rank_targets)
        samples += len(rank_preds)
        skipped += rank_skipped
    result = (
        metric.compute()
        if samples
        else {"map_50": torch.tensor(math.nan), "map": torch.tensor(math.nan)}
    )
    return {
        "map_50": float(result["map_50"]),
        "map": float(result["map"]),
        "eval_samples": samples,
        "eval_skipped": skipped,
        "eval_s": time.perf_counter() - started,
    }


def describe(row: dict) -> str:
    """The quality part of an epoch's log line."""
    return f"mAP@0.5 {row['map_50']:.4f}, mAP@[.5:.95] {row['map']:.4f}"
