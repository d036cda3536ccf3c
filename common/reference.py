"""A reference to the user's code, ``path/to/file.py:name`` or ``package.module:name``.

:func:`resolve` finds it and :func:`load_reference` imports it by its path; used for ``model.arch``
(:mod:`models.own_model`), ``dataset.format`` (:func:`training.data.read_own`) and ``train.task``
(:func:`training.tasks.load_task`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, error_line


@dataclass(frozen=True)
class Reference:
    """Where a function or class of the user's comes from.

    Attributes:
        text: as the user wrote it (``examples/my_models.py:build_net``).
        source: the Python file defining the function (absolute).
        function: the function's name.
    """

    text: str
    source: Path
    function: str

    @property
    def model_file(self) -> str:
        """The file's name (a model file keeps it in the run's folder and in the archive)."""
        return self.source.name


def resolve(text: str, key: str) -> Reference:
    """Find the file and function ``text`` names; nothing is imported yet.

    Args:
        key: the setting that names it, for messages (``dataset.format`` for a dataset reader, which
            may have any file name).

    Raises:
        ConfigError: not ``file.py:function`` / ``module:function``, no such file or module, or a
            module that is not one Python file.
    """
    target, _, function = text.rpartition(":")
    if not target or not function.isidentifier():
        raise ConfigError(
            f"{key} {text!r}: expected path/to/file.py:function or package.module:function"
        )
    if target.endswith(".py"):
        source = Path(target)
        if not source.is_file():
            raise ConfigError(f"{key} {text!r}: no file {source} (from {os.getcwd()})")
    else:
        try:
            found = importlib.util.find_spec(target)
        except Exception as exc:  # noqa: BLE001 - a package's __init__ may raise anything
            raise ConfigError(f"{key} {text!r}: cannot find module {target}: {exc}") from None
        if found is None or not (found.origin or "").endswith(".py"):
            raise ConfigError(
                f"{key} {text!r}: no Python file for module {target!r} (is it installed, "
                "or on PYTHONPATH?)"
            )
        source = Path(found.origin)
    return Reference(text, source.resolve(), function)


def load_reference(entry: Reference, key: str = "model.arch") -> Callable:
    """Import ``entry.source`` by its path and return the function (``key`` as for :func:`resolve`).

    Raises:
        ConfigError: the file fails to import (its error's first line), or defines no such function.
    """
    name = f"user_{entry.source.stem}_{abs(hash(str(entry.source)))}"
    spec = importlib.util.spec_from_file_location(name, entry.source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the user's file: one line
        sys.modules.pop(name, None)
        raise ConfigError(
            f"{key} {entry.text!r}: importing {entry.source} failed: {error_line(exc)}"
        ) from None
    function = getattr(module, entry.function, None)
    if not callable(function):
        raise ConfigError(
            f"{key} {entry.text!r}: {entry.source.name} defines no function {entry.function!r}"
        )
    return function
