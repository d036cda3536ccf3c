"""Which task module a run uses: :mod:`training.detection` or :mod:`training.classification`.

Both modules define the same names, used by :mod:`training.run` and the benchmark:

- ``LABEL_OFFSET``: label id of the first class (1 for detection, whose 0 is the background);
- ``transform(cfg, train)``: the sample transform;
- ``index_to_name(classes)``: the ``index_to_name.json`` mapping;
- ``build_model(cfg, classes, pretrained=...)``: ``(model, model.json spec)``;
- ``forward_loss(model, batch, device)``: the training loss of a batch, ``(loss, parts)``; the
  step around it (precision, backward, optimizer) is :func:`training.engine.step_fn`;
- ``quality_columns(classes)`` / ``evaluate(...)``: the held-out figures in ``metrics.csv``;
- ``describe(row)``: those figures in a log line.
"""

from __future__ import annotations

from types import ModuleType

from training import classification, detection

TASKS = {"detection": detection, "classification": classification}


def task_module(name: str) -> ModuleType:
    """The module of task ``name`` (``config.task``, already validated)."""
    return TASKS[name]


def class_to_index(task: ModuleType, classes: list[str]) -> dict[str, int]:
    """Class name → label id for the samples (see ``LABEL_OFFSET``)."""
    return {name: i + task.LABEL_OFFSET for i, name in enumerate(classes)}
