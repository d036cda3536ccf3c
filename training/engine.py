"""The epoch loop: train one epoch while measuring data wait vs compute, for either task.

Structure after torchvision's ``references/detection/engine.py`` (``train_one_epoch``); what a step
computes comes from the task module (:mod:`training.detection`, :mod:`training.classification`);
timing goes through :mod:`training.meter`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from types import ModuleType

import torch
from tqdm import tqdm

from pipelines.samples import Batch
from training.meter import EpochMeter, StepRecord, gc_frozen

log = logging.getLogger(__name__)


def progress_bar(**kwargs) -> tqdm:
    """A tqdm progress bar, shown only by rank 0 (torchrun's ``RANK``): one bar on the console."""
    return tqdm(disable=os.environ.get("RANK", "0") != "0", **kwargs)


class TrainingError(Exception):
    """Training cannot go on (non-finite loss, corrupt image with ``on_corrupt=stop``)."""


class Preempted(Exception):
    """The run stopped on a signal after a step, with a step checkpoint written.

    Attributes:
        epoch, step: where it stopped (``step`` steps of ``epoch`` done, counting from 1).
        signum: the signal that asked for it (``signal.SIGTERM`` or ``signal.SIGINT``).
    """

    def __init__(self, epoch: int, step: int, signum: int):
        self.epoch, self.step, self.signum = epoch, step, signum
        super().__init__(
            f"preempted ({signal.Signals(signum).name}) at epoch {epoch} step {step}; "
            "the step checkpoint is written: make resume continues here"
        )


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
    from_first_read: bool = False,
    trace: list | None = None,
    agree: Callable[[bool], bool] | None = None,
    sync: Callable[[], object] | None = None,
    after_step: Callable[[Batch, EpochMeter], object] | None = None,
    meter: EpochMeter | None = None,
) -> EpochMeter:
    """Pull batches from ``loader`` and run ``compute`` on each, timing both sides.

    The one place where data wait and compute are measured (:mod:`training.meter`): ``data_wait_s``
    from asking for a batch to receiving it, ``compute_s`` until ``compute`` returned. Full garbage
    collections are kept out (:func:`training.meter.gc_frozen`).

    Args:
        loader: yields :class:`pipelines.samples.Batch` es.
        compute: ``compute(batch, step) -> loss`` (NaN when there is none); must finish its device
            work before returning (synchronise CUDA).
        epoch: recorded in each step.
        num_samples: samples expected (progress bar total), or None when unknown.
        max_steps: stop after this many measured steps (None: the whole loader).
        warmup_steps: steps run first and left out of the meter (its clock starts after them).
        on_corrupt: ``skip`` counts undecodable images and goes on; ``stop`` raises.
        desc: progress bar label (default ``epoch N``).
        from_first_read: start the clock when the storage read of a measured batch began
            (``Batch.read_at``) if before the warm-up ended, but not before the first request for a
            batch: for the benchmark's ``read`` mode, where reads ahead during the warm-up would
            come free. Not for training (AU and throughput count from the end of the warm-up).
        trace: when a list, ``(step, worker, id, bytes, read_at, read_s)`` is appended to it for
            every sample the loop received (see ``Batch.reads``).
        agree: with several ranks, ``agree(has images)`` is True when every rank's batch has images
            (:func:`training.distributed.all_agree`); ``compute`` runs only then, so that a batch of
            corrupt images on one rank skips the step on all.
        sync: called before asking for every batch but the first: a collective that makes the ranks
            step together (the benchmark's simulated accelerators,
            :func:`bench.loading.case.step_barrier`); its wait counts as data wait.
        after_step: called with each batch and the meter once the step is recorded (training's
            :meth:`training.preemption.StepControl.after_step`, which may raise to stop).
        meter: the meter of the epoch's steps before this call (a resumed epoch): the steps are
            numbered on from them and its clock restarts now; None: a new one.

    Raises:
        TrainingError: a corrupt image with ``on_corrupt="stop"``, or what ``compute`` raises.
    """
    with gc_frozen():  # full collections stay out of the epoch
        meter = EpochMeter(epoch) if meter is None else meter
        meter.started = time.perf_counter()
        bar = progress_bar(
            total=num_samples,
            initial=sum(s.samples + s.skipped for s in meter.steps),  # a resumed epoch's
            desc=desc or f"epoch {epoch}",
            unit="img",
            leave=True,
            dynamic_ncols=True,
        )
        asked = time.perf_counter()
        iterator = iter(loader)
        step = len(meter.steps)
        first_read = math.inf
        shown = 0.0  # when the postfix was last set: formatting it every step costs ~0.1 ms
        try:
            while max_steps is None or step < warmup_steps + max_steps:
                waited = time.perf_counter()
                if sync is not None and step > 0:
                    sync()
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                got = time.perf_counter()
                loss_value = _run_step(batch, step, compute, on_corrupt, trace, agree)
                done = time.perf_counter()
                record = _step_record(batch, epoch, step, got - waited, done - got, loss_value)
                if step >= warmup_steps:
                    meter.add(record, batch.requests)
                    first_read = min(first_read, batch.read_at)
                    if after_step is not None:
                        after_step(batch, meter)
                if step + 1 == warmup_steps:
                    meter.started = time.perf_counter()  # the measured wall clock starts now
                step += 1
                shown = _show_step(bar, record, done, shown)
        finally:
            meter.finish()
            bar.close()
        meter.warmed_up = meter.started
        if from_first_read and first_read < meter.started:
            meter.started = max(first_read, asked)
        return meter


def _run_step(
    batch: Batch,
    step: int,
    compute: Callable[[Batch, int], float],
    on_corrupt: str,
    trace: list | None,
    agree: Callable[[bool], bool] | None,
) -> float:
    """Run the compute side of one step; return the loss (NaN when ``compute`` did not run).

    Traces the batch's reads, handles its corrupt images and runs ``compute`` when the batch has
    samples (on every rank, with ``agree``).

    Raises:
        TrainingError: a corrupt image with ``on_corrupt="stop"``, or what ``compute`` raises.
    """
    if trace is not None:
        trace.extend((step, batch.worker, *read) for read in batch.reads)
    for image_id, message in batch.errors:
        if on_corrupt == "stop":
            raise TrainingError(
                f"corrupt image {message} (id {image_id}); "
                "fix or remove it, or set access.on_corrupt=skip"
            )
        log.warning("skipped corrupt image %s", message)
    # samples read without decoding (the benchmark) have ids and no images
    ready = bool(batch.ids) if agree is None else agree(bool(batch.ids))
    return compute(batch, step) if ready else math.nan


def _step_record(
    batch: Batch, epoch: int, step: int, data_wait_s: float, compute_s: float, loss: float
) -> StepRecord:
    """The :class:`StepRecord` of a step: its samples, bytes, requests, data wait, compute (s)."""
    return StepRecord(
        epoch=epoch,
        step=step,
        samples=len(batch.ids),
        skipped=len(batch.errors),
        bytes_read=batch.nbytes,
        read_s=batch.read_s,
        data_wait_s=data_wait_s,
        compute_s=compute_s,
        loss=loss,
        requests=batch.requests.requests,
        retries=batch.requests.retries,
    )


def _show_step(bar: tqdm, record: StepRecord, done: float, shown: float) -> float:
    """Advance the progress bar by a step's samples; return when its postfix was last set.

    The loss and wait postfix is refreshed at most once per ``bar.mininterval`` seconds.
    """
    if not bar.disable and done - shown >= bar.mininterval:
        bar.set_postfix(loss=f"{record.loss:.3f}", wait=f"{record.data_wait_s:.2f}s", refresh=False)
        shown = done
    bar.update(record.samples + record.skipped)
    return shown


class Precision:
    """The numeric precision a model trains and evaluates in (``train.precision``).

    ``fp32``: plain float32. ``bf16`` / ``fp16``: automatic mixed precision (``torch.autocast``:
    matrix products and convolutions in the lower precision; weights, reductions and the optimizer
    in float32; PyTorch's "Automatic Mixed Precision" recipe). ``fp16`` also scales the loss with a
    ``torch.amp.GradScaler`` so that small gradients do not underflow (bf16 has float32's range).

    Args:
        name: ``fp32``, ``bf16`` or ``fp16``.
        device: where the model runs (autocast and the scaler are per device type).

    Attributes:
        dtype: the autocast dtype (None for fp32); ``scaler``: the ``GradScaler`` (fp16) or None.

    Raises:
        ValueError: ``name`` is none of the three.
    """

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name: str, device: torch.device):
        if name not in self.DTYPES:
            raise ValueError(f"precision {name!r} is not one of {', '.join(self.DTYPES)}")
        self.name = name
        self.device = device
        self.dtype = self.DTYPES[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        """The context to run forward passes (and the loss) in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def step_fn(
    task: ModuleType,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    epoch: int,
    precision: Precision | None = None,
) -> Callable[[Batch, int], float]:
    """One training step, as :func:`measure_steps` calls it: ``step(batch, index) -> loss``.

    After torchvision's ``references/detection/engine.py``: ``task.forward_loss`` in ``precision``
    (default fp32) on ``device``, backward, optimizer step (fp16: through the gradient scaler, which
    skips a step whose gradients overflowed), LR schedule; on CUDA, a wait for the device so that
    the compute time is all measured. The step returns the loss as a float.

    Raises (from the returned function):
        TrainingError: the loss is not finite (the message has the epoch, the step and, for a
            detector, each of its losses).
    """
    precision = precision or Precision("fp32", device)

    def step(batch: Batch, index: int) -> float:
        with precision.autocast():
            loss, parts = task.forward_loss(model, batch, device)
        value = loss.item()
        if not math.isfinite(value):
            detail = f" ({ {k: round(v.item(), 4) for k, v in parts.items()} })" if parts else ""
            raise TrainingError(
                f"loss is {value} at epoch {epoch} step {index}{detail}; lower train.lr"
                + (" or check the boxes" if parts else "")
            )
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        if scheduler is not None:
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return value

    return step


def train_one_epoch(
    model: torch.nn.Module,
    step_fn: Callable[[Batch, int], float],
    loader: Iterable[Batch],
    epoch: int,
    *,
    num_samples: int,
    on_corrupt: str = "skip",
    trace: list | None = None,
    agree: Callable[[bool], bool] | None = None,
    after_step: Callable[[Batch, EpochMeter], object] | None = None,
    meter: EpochMeter | None = None,
) -> EpochMeter:
    """Run one training epoch and measure every step (:func:`measure_steps`).

    Args:
        model: the model ``step_fn`` trains (train mode is set here).
        step_fn: one optimizer step on a batch, returning the loss (:func:`step_fn`).
        loader: yields :class:`pipelines.samples.Batch` es.
        num_samples: samples expected in the epoch (for the progress bar only).
        on_corrupt: ``skip`` counts undecodable images and goes on; ``stop`` raises.
        trace, agree, after_step, meter: as for :func:`measure_steps`.

    Returns:
        The epoch's meter; ``meter.summary()`` gives the figures.

    Raises:
        TrainingError: non-finite loss, or a corrupt image with ``on_corrupt="stop"``.
    """
    model.train()
    return measure_steps(
        loader, step_fn, epoch, num_samples=num_samples, on_corrupt=on_corrupt, trace=trace,
        agree=agree, after_step=after_step, meter=meter,
    )  # fmt: skip
