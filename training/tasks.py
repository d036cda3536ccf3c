"""The task a run trains, built-in or the user's, behind one :class:`Task` protocol.

A user's task (``train.task: path/to/file.py:MyTask``) subclasses :class:`DetectionTask` or
:class:`ClassificationTask` (the top-level ``task`` key says which data it gets) and overrides the
loss (:meth:`Task.forward_loss`), optionally the optimizer (:meth:`Task.build_optimizer`) and the
evaluation (:meth:`Task.evaluate`, ``quality_columns``, ``describe``); it is trained, measured and
resumed as the built-in tasks are. ``examples/my_task.py`` shows one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Protocol, runtime_checkable

import torch

from common.errors import ConfigError
from common.reference import load_reference, resolve
from pipelines.access.loaders import EpochLoader
from pipelines.samples import Batch
from training import classification, detection
from training.config import Config
from training.engine import Precision

log = logging.getLogger(__name__)


@runtime_checkable
class Task(Protocol):
    """What a run needs from its task.

    Attributes:
        LABEL_OFFSET: label id of the first class (detection: 1, 0 being the background).
    """

    LABEL_OFFSET: int

    def transform(self, cfg: Config, train: bool) -> Callable:
        """The sample transform (:mod:`pipelines.samples`), for training or evaluation."""
        ...

    def index_to_name(self, classes: list[str]) -> dict[str, str]:
        """``index_to_name.json``: label id (as a string) → class name."""
        ...

    def build_model(
        self, cfg: Config, classes: list[str], *, pretrained: bool
    ) -> tuple[torch.nn.Module, dict]:
        """``(model, model.json spec)``; the spec's ``pretrained``: whether weights were loaded."""
        ...

    def build_optimizer(
        self, params: list[torch.nn.Parameter], cfg: Config
    ) -> torch.optim.Optimizer:
        """The optimizer of the trainable ``params`` (``train.optimizer``, ``train.lr``, ...)."""
        ...

    def forward_loss(
        self, model: torch.nn.Module, batch: Batch, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of ``batch`` (scalar tensor with a graph) and its parts (for logs).

        The parts are scalar tensors; the step around it (precision, backward, optimizer) is
        :func:`training.engine.step_fn`.
        """
        ...

    def quality_columns(self, classes: list[str]) -> list[str]:
        """The held-out figures :meth:`evaluate` returns, as ``metrics.csv`` columns."""
        ...

    def evaluate(
        self,
        model: torch.nn.Module,
        loader: EpochLoader,
        device: torch.device,
        *,
        num_samples: int,
        classes: list[str],
        precision: Precision,
    ) -> dict:
        """The held-out figures after an epoch, over all ranks (each rank evaluates its share)."""
        ...

    def describe(self, row: dict) -> str:
        """Those figures in a log line."""
        ...


class BuiltinTask:
    """A task of this tool (its functions in :attr:`module`), and the base class of the user's.

    Subclasses override what they change; the rest is the built-in task's.
    """

    module: ModuleType

    @property
    def LABEL_OFFSET(self) -> int:  # noqa: N802 - the protocol's constant
        """The built-in task's label offset."""
        return self.module.LABEL_OFFSET

    def transform(self, cfg: Config, train: bool) -> Callable:
        """The built-in task's transform."""
        return self.module.transform(cfg, train)

    def index_to_name(self, classes: list[str]) -> dict[str, str]:
        """The built-in task's label names."""
        return self.module.index_to_name(classes)

    def build_model(
        self, cfg: Config, classes: list[str], *, pretrained: bool
    ) -> tuple[torch.nn.Module, dict]:
        """The model ``model.arch`` names (built-in or the user's own)."""
        return self.module.build_model(cfg, classes, pretrained=pretrained)

    def build_optimizer(
        self, params: list[torch.nn.Parameter], cfg: Config
    ) -> torch.optim.Optimizer:
        """AdamW, or SGD with momentum, as ``train.optimizer`` says."""
        if cfg.train.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        return torch.optim.SGD(
            params, lr=cfg.train.lr, momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay,
        )  # fmt: skip

    def forward_loss(
        self, model: torch.nn.Module, batch: Batch, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The built-in task's loss."""
        return self.module.forward_loss(model, batch, device)

    def quality_columns(self, classes: list[str]) -> list[str]:
        """The built-in task's held-out figures."""
        return self.module.quality_columns(classes)

    def evaluate(self, model, loader, device, *, num_samples, classes, precision) -> dict:
        """The built-in task's evaluation (mAP, or top-1/top-5 accuracy)."""
        return self.module.evaluate(
            model, loader, device, num_samples=num_samples, classes=classes, precision=precision
        )

    def describe(self, row: dict) -> str:
        """The built-in task's log line of its figures."""
        return self.module.describe(row)


class DetectionTask(BuiltinTask):
    """Faster R-CNN trained on boxes, evaluated by mAP (:mod:`training.detection`)."""

    module = detection


class ClassificationTask(BuiltinTask):
    """A classifier: cross-entropy, evaluated by accuracy (:mod:`training.classification`)."""

    module = classification


BUILTIN = {"detection": DetectionTask, "classification": ClassificationTask}


def load_task(cfg: Config) -> Task:
    """The task of a run: the user's class ``train.task`` names, else the built-in task of ``task``.

    Raises:
        ConfigError: ``train.task`` names no file or class, the file fails to import, or the class
            is not a :class:`DetectionTask` / :class:`ClassificationTask` of the run's ``task``.
    """
    if not cfg.train.task:
        return BUILTIN[cfg.task]()
    cls = load_reference(resolve(cfg.train.task, "train.task"), "train.task")
    base = BUILTIN[cfg.task]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
            f"train.task {cfg.train.task!r} must name a class that subclasses "
            f"training.tasks.{base.__name__} (task is {cfg.task})"
        )
    try:
        task = cls()
    except Exception as exc:  # noqa: BLE001 - any error of the user's class: one line
        raise ConfigError(f"train.task {cfg.train.task!r}: {type(exc).__name__}: {exc}") from None
    log.info("training class %s (train.task)", cfg.train.task)
    return task


def class_to_index(task: Task, classes: list[str]) -> dict[str, int]:
    """Class name → label id for the samples (see ``LABEL_OFFSET``)."""
    return {name: i + task.LABEL_OFFSET for i, name in enumerate(classes)}
