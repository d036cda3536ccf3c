"""The epoch loops: train one epoch while measuring data wait vs compute, evaluate mAP.

Structure after torchvision's ``references/detection/engine.py`` (``train_one_epoch``,
``evaluate``); timing goes through :mod:`training.meter`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import torch
from torchmetrics.detection import MeanAveragePrecision
from tqdm import tqdm

from pipelines.samples import Batch
from training.meter import EpochMeter, StepRecord

log = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot go on (non-finite loss, corrupt image with ``on_corrupt=stop``)."""


def measure_steps(
    loader: Iterable[Batch],
    compute: Callable[[Batch, int], float],
    epoch: int,
    *,
    num_samples: int | None,
    max_steps: int | None = None,
    warmup_steps: int = 0,
    on_corrupt: str = "skip",
    desc: str | None = None,
) -> EpochMeter:
    """Pull batches from ``loader`` and run ``compute`` on each, timing both sides.

    The one place where data wait and compute are measured (see :mod:`training.meter`): the
    clock runs from asking for a batch to receiving it (``data_wait_s``), then until ``compute``
    returned (``compute_s``). Training, evaluation-free benchmarking (``read``), emulated compute
    (``emulate``) all go through here.

    Args:
        loader: yields :class:`pipelines.samples.Batch` es.
        compute: ``compute(batch, step) -> loss`` (NaN when there is none); must finish its
            device work before returning (synchronise CUDA).
        epoch: recorded in each step.
        num_samples: samples expected (progress bar total), or None when unknown.
        max_steps: stop after this many measured steps (None: the whole loader).
        warmup_steps: steps run first and left out of the meter (its clock starts after them).
        on_corrupt: ``skip`` counts undecodable images and goes on; ``stop`` raises.
        desc: progress bar label (default ``epoch N``).

    Raises:
        TrainingError: a corrupt image with ``on_corrupt="stop"``, or what ``compute`` raises.
    """
    meter = EpochMeter(epoch)
    bar = tqdm(
        total=num_samples, desc=desc or f"epoch {epoch}", unit="img", leave=True, dynamic_ncols=True
    )
    iterator = iter(loader)
    step = 0
    try:
        while max_steps is None or step < warmup_steps + max_steps:
            waited = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            got = time.perf_counter()
            for image_id, message in batch.errors:
                if on_corrupt == "stop":
                    raise TrainingError(
                        f"corrupt image {message} (id {image_id}); "
                        "fix or remove it, or set access.on_corrupt=skip"
                    )
                log.warning("skipped corrupt image %s", message)
            loss_value = compute(batch, step) if batch.images else math.nan
            done = time.perf_counter()
            record = StepRecord(
                epoch=epoch,
                step=step,
                samples=len(batch.ids),
                skipped=len(batch.errors),
                bytes_read=batch.nbytes,
                read_s=batch.read_s,
                data_wait_s=got - waited,
                compute_s=done - got,
                loss=loss_value,
                requests=batch.requests.requests,
                retries=batch.requests.retries,
            )
            if step >= warmup_steps:
                meter.add(record, batch.requests)
            if step + 1 == warmup_steps:
                meter.started = time.perf_counter()  # the measured wall clock starts now
            step += 1
            bar.update(record.samples + record.skipped)
            bar.set_postfix(loss=f"{loss_value:.3f}", wait=f"{record.data_wait_s:.2f}s")
    finally:
        meter.finish()
        bar.close()
    return meter


def train_step_fn(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    epoch: int,
) -> Callable[[Batch, int], float]:
    """``compute`` for :func:`measure_steps`: one optimizer step of a detection model.

    Raises (from the returned function):
        TrainingError: the loss is not finite.
    """

    def step_fn(batch: Batch, step: int) -> float:
        images = [img.to(device, non_blocking=True) for img in batch.images]
        targets = [
            {k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch.targets
        ]
        losses = model(images, targets)
        loss = sum(losses.values())
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"loss is {loss_value} at epoch {epoch} step {step} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} }); "
                "lower train.lr or check the boxes"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss_value

    return step_fn


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Iterable[Batch],
    device: torch.device,
    epoch: int,
    *,
    num_samples: int,
    on_corrupt: str = "skip",
) -> EpochMeter:
    """Run one training epoch and measure every step (see :func:`measure_steps`).

    Args:
        model: a torchvision detection model (train mode is set here).
        loader: yields :class:`pipelines.samples.Batch` es.
        num_samples: samples expected in the epoch (for the progress bar only).
        on_corrupt: ``skip`` counts undecodable images and goes on; ``stop`` raises.

    Returns:
        The epoch's meter; ``meter.summary()`` gives the figures.

    Raises:
        TrainingError: non-finite loss, or a corrupt image with ``on_corrupt="stop"``.
    """
    model.train()
    step_fn = train_step_fn(model, optimizer, scheduler, device, epoch)
    return measure_steps(loader, step_fn, epoch, num_samples=num_samples, on_corrupt=on_corrupt)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: Iterable[Batch], device: torch.device, *, num_samples: int
) -> dict:
    """mAP of the model on a split, with torchmetrics' ``MeanAveragePrecision`` (COCO protocol).

    Args:
        num_samples: images in the split (for the progress bar only).

    Returns:
        ``{"map_50": mAP@0.5, "map": mAP@[.5:.95], "eval_samples": n, "eval_skipped": k,
        "eval_s": seconds}``; boxes are compared in the transformed (resized) image frame,
        where predictions and targets both live.
    """
    model.eval()
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy")
    started = time.perf_counter()
    samples = skipped = 0
    bar = tqdm(total=num_samples, desc="evaluate", unit="img", leave=False, dynamic_ncols=True)
    for batch in loader:
        bar.update(len(batch.images) + len(batch.errors))
        skipped += len(batch.errors)
        if not batch.images:
            continue
        outputs = model([img.to(device) for img in batch.images])
        preds = [{k: v.cpu() for k, v in o.items()} for o in outputs]
        targets = [
            {"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]}
            for t in batch.targets
        ]
        metric.update(preds, targets)
        samples += len(batch.images)
    bar.close()
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
