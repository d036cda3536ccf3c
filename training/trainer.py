"""The model and what trains it: optimizer, LR schedule, precision, DDP wrap, checkpoint resume."""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from common.errors import first_line
from pipelines.formats.records import DatasetError
from training import distributed
from training.config import Config, ConfigError
from training.distributed import ONE_RANK, Ranks
from training.engine import Precision
from training.run_data import RunData
from training.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class Training:
    """The model and what trains it.

    Attributes:
        model: the model, on its device: with several ranks wrapped in
            DistributedDataParallel (gradients averaged over the ranks at each step).
        net: the model itself (``model.module`` under DDP): what is evaluated and saved.
        spec: its ``model.json`` (what rebuilds it), with ``pretrained``.
        optimizer, scheduler: AdamW or SGD; warm-up then cosine decay over every step the
            training loader yields in all epochs (:func:`lr_lambda`).
        precision: ``train.precision`` (mixed precision and its gradient scaler).
    """

    model: torch.nn.Module
    net: torch.nn.Module
    spec: dict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision

    @property
    def pretrained(self) -> bool:
        """Whether the model started from pretrained weights."""
        return bool(self.spec["pretrained"])


def build_training(cfg: Config, task: Task, data: RunData, device: torch.device) -> Training:
    """Build the model (logging if it is pretrained), the task's optimizer and the LR schedule."""
    model, spec = task.build_model(cfg, data.classes, pretrained=cfg.model.pretrained)
    if spec["pretrained"]:
        log.info("model %s: starts from pretrained weights", cfg.model.arch)
    elif cfg.model.pretrained:
        log.info("model %s: trained from scratch (its pretrained weights could not be had)",
                 cfg.model.arch)  # fmt: skip
    else:
        log.info("model %s: trained from scratch (model.pretrained false)", cfg.model.arch)
    model.to(device)
    optimizer = task.build_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    # the steps the loader really yields: an iterable loader's workers each end with a partial
    # batch, so an epoch can have more than ceil(samples / batch size) (see build_loader)
    total_steps = sum(data.train_loader.steps(e) for e in range(1, cfg.train.epochs + 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, warmup_steps=min(100, max(1, total_steps // 10)))
    )
    precision = Precision(cfg.train.precision, device)
    if precision.dtype is not None:
        log.info("precision %s: torch.autocast(%s)%s", precision.name, device.type,
                 " with a gradient scaler" if precision.scaler else "")  # fmt: skip
    return Training(model, model, spec, optimizer, scheduler, precision)


def lr_lambda(total_steps: int, warmup_steps: int):
    """The LR factor per step: linear warm-up to 1, then cosine decay to 0 at ``total_steps``.

    SGDR's shape (Loshchilov & Hutter 2017) without restarts; steps past the end stay at 0.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def wrap_for_ranks(training: Training, device: torch.device) -> None:
    """With several ranks, wrap the model in DistributedDataParallel (gradients averaged each step).

    Every rank starts from rank 0's weights and buffers (DDP broadcasts them here, after a resume).
    """
    if dist.is_initialized():
        training.model = DistributedDataParallel(
            training.net, device_ids=[device.index] if device.type == "cuda" else None
        )


@dataclass
class History:
    """Rows of the epochs so far (``metrics.csv``, ``steps.csv``) and the first epoch to run.

    Attributes:
        position: where ``first_epoch`` stopped when a step checkpoint was resumed, else None:
            ``{"epoch", "step", "time" (``time.time()`` when written), "ranks": [per rank:
            "consumed", "meter", "trace", "rng"]}`` (see :mod:`training.preemption`).
    """

    rows: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    first_epoch: int = 1
    position: dict | None = None


def checkpoint_state(
    training: Training,
    epoch: int,
    world_size: int,
    args: dict,
    history: History,
    position: dict | None = None,
) -> dict:
    """What ``checkpoint.pt`` holds after ``epoch``, what :func:`resume_from` loads.

    The model, optimizer, schedule and gradient scaler states, ``world_size``, ``pretrained``, the
    run's settings (``args``) and the epochs so far; a step checkpoint (written in epoch
    ``epoch + 1``) also holds ``position``, where that epoch stopped (:class:`History`).
    """
    scaler = training.precision.scaler
    return {
        "model": training.net.state_dict(), "world_size": world_size,
        "optimizer": training.optimizer.state_dict(),
        "lr_scheduler": training.scheduler.state_dict(),
        "grad_scaler": scaler.state_dict() if scaler else {}, "epoch": epoch,
        "pretrained": training.pretrained, "args": args, "metrics": history.rows,
        "steps": history.steps, "position": position,
    }  # fmt: skip


def resume_from(
    path: Path, training: Training, device: torch.device, ranks: Ranks = ONE_RANK
) -> History:
    """Load the checkpoint at ``path`` into ``training``; return the epochs it holds.

    Loads the model, optimizer, schedule and scaler states and whether the run started from
    pretrained weights; a step checkpoint's position comes back in :attr:`History.position`.
    Every rank loads the same file.

    Raises:
        DatasetError: there is no checkpoint, or it cannot be read (damaged, not this tool's).
        ConfigError: it was written by a run with another number of ranks (the data split and the
            step counts would not continue where they stopped), or the ranks found different
            checkpoints.
    """
    if not path.exists():
        raise DatasetError(f"--resume: no checkpoint at {path}; train without --resume first")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # truncated, not torch.save's
        raise DatasetError(
            f"--resume: {path} cannot be read ({first_line(exc).split('. ')[0]}): it is damaged "
            "or not a "
            "checkpoint of this tool (this tool writes it atomically); restore it, or move it "
            "away and train afresh"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DatasetError(f"--resume: {path} is not a checkpoint of this tool (no model state)")
    written_by = ckpt.get("world_size", 1)
    if written_by != ranks.world_size:
        raise ConfigError(
            f"--resume: {path} was written by a run of {written_by} rank(s), this one has "
            f"{ranks.world_size}: resume with NPROC (x NNODES) = {written_by}, or train afresh"
        )
    training.net.load_state_dict(ckpt["model"])
    training.optimizer.load_state_dict(ckpt["optimizer"])
    training.scheduler.load_state_dict(ckpt["lr_scheduler"])
    if training.precision.scaler is not None and ckpt.get("grad_scaler"):
        training.precision.scaler.load_state_dict(ckpt["grad_scaler"])
    training.spec["pretrained"] = ckpt.get("pretrained", training.pretrained)
    position = ckpt.get("position")
    step = position["step"] if position else 0
    found = distributed.gather((ckpt["epoch"], step, weights_digest(training.net)))
    if len(set(found)) > 1:  # e.g. a node whose output folder holds another checkpoint
        raise ConfigError(
            f"--resume: the ranks found different checkpoints at {path} (epoch, step, weights: "
            f"{found}): every node must resume from the same output folder (a shared one)"
        )
    if position:
        log.info("resuming from %s at epoch %d step %d (a step checkpoint)",
                 path, position["epoch"], position["step"])  # fmt: skip
    else:
        log.info("resuming from %s after epoch %d", path, ckpt["epoch"])
    return History(ckpt["metrics"], ckpt["steps"], ckpt["epoch"] + 1, position)


def weights_digest(model: torch.nn.Module) -> str:
    """The first 16 hex digits of the SHA-256 of the model's state (tensors in key order).

    Equal on every rank when DistributedDataParallel kept the replicas in step.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 0-dim counters too
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
