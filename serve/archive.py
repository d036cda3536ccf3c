"""Package a training output dir as a TorchServe model archive (``NAME.mar``).

The task in ``model.json`` picks the model file, handler and model-config YAML (:data:`TASKS`); a
model of the user's (``model.json`` has ``model_file``: ``models/own_model.py``) packs the run's
copy of its own file instead. Every archive also holds ``model.pt``, ``index_to_name.json``,
``model.json`` and ``handlers/base_handler.py``, flat at its root. The real ``torch-model-archiver``
builds it in a temporary dir inside the model store, then it is renamed: ``model_store/NAME.mar`` is
either the old archive or the complete new one, never half written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from serve.preflight import find_tool

#: Repository root (this file is ``serve/archive.py``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Module both handlers import; shipped in every archive next to the handler.
SHARED_HANDLER_FILES = (REPO_ROOT / "handlers" / "base_handler.py",)
#: Files a training run writes into its output dir; all three go into the archive.
REQUIRED_FILES = ("model.pt", "index_to_name.json", "model.json")
#: Task of a ``model.json`` without a ``task`` key (written before classification existed).
DEFAULT_TASK = "detection"
#: Model names TorchServe accepts (they become URL path segments).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TaskFiles:
    """What archiving a training output of one task takes.

    Attributes:
        name: default model name (``NAME.mar``, served at ``/predictions/NAME``).
        default_out: training output dir of ``make train`` for this task (relative to the
            repository root, where make runs).
        model_file: model file, archived under its own name (imported by the handler).
        handler: TorchServe handler, archived under its own name.
        config_file: model-config YAML (workers, batching, timeouts, handler knobs).
        spec_keys: keys ``model.json`` must have besides ``task``.
    """

    name: str
    default_out: Path
    model_file: Path
    handler: Path
    config_file: Path
    spec_keys: tuple[str, ...]


#: ``model.json`` task -> what its archive holds.
TASKS: dict[str, TaskFiles] = {
    "detection": TaskFiles(
        name="detector",
        default_out=Path("outputs/detection"),
        model_file=REPO_ROOT / "models" / "detector.py",
        handler=REPO_ROOT / "handlers" / "detector_handler.py",
        config_file=REPO_ROOT / "serve" / "detector.yaml",
        spec_keys=("arch", "num_classes"),
    ),
    "classification": TaskFiles(
        name="classifier",
        default_out=Path("outputs/classification"),
        model_file=REPO_ROOT / "models" / "classifier.py",
        handler=REPO_ROOT / "handlers" / "classifier_handler.py",
        config_file=REPO_ROOT / "serve" / "classifier.yaml",
        spec_keys=("arch", "num_classes", "image_size"),
    ),
}


class ArchiveError(Exception):
    """A user-fixable problem (missing training output, bad name, archiver failure).

    The message is one line that says what is wrong and how to fix it.
    """


def check_training_output(out: Path) -> dict:
    """Check that ``out`` holds what a training run writes, and read its ``model.json``.

    Args:
        out: the training output dir (``--out`` of training).

    Returns:
        The parsed ``model.json``; its ``task`` (``detection`` when absent) is one of
        :data:`TASKS`.

    Raises:
        ArchiveError: ``out`` or one of :data:`REQUIRED_FILES` is missing, ``model.json`` /
            ``index_to_name.json`` is not valid JSON, ``model.json`` names an unknown task or
            lacks a key its task needs.
    """
    out = Path(out)
    if not out.is_dir():
        raise ArchiveError(f"training output dir {out} does not exist: run `make train` first")
    for name in REQUIRED_FILES:
        if not (out / name).is_file():
            raise ArchiveError(f"{out / name} is missing: run `make train` first")
    try:
        spec = json.loads((out / "model.json").read_text(encoding="utf-8"))
        labels = json.loads((out / "index_to_name.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(
            f"{out} holds an unreadable JSON file ({exc}): run `make train` again"
        ) from None
    if not isinstance(spec, dict):
        raise ArchiveError(f"{out / 'model.json'} is not a JSON object: {spec}")
    task = spec.get("task", DEFAULT_TASK)
    if task not in TASKS:
        raise ArchiveError(
            f"{out / 'model.json'} says task={task!r}; can archive only "
            f"{' or '.join(sorted(TASKS))}"
        )
    missing = [key for key in TASKS[task].spec_keys if key not in spec]
    if missing:
        raise ArchiveError(f"{out / 'model.json'} lacks {', '.join(missing)}: run `make train`")
    if not isinstance(labels, dict) or not labels:
        raise ArchiveError(f"{out / 'index_to_name.json'} is not a label-id -> name mapping")
    return spec


def task_files(spec: dict) -> TaskFiles:
    """What to archive for a ``model.json`` already checked by :func:`check_training_output`."""
    return TASKS[spec.get("task", DEFAULT_TASK)]


def find_model_archiver() -> str:
    """Locate ``torch-model-archiver`` (see :func:`serve.preflight.find_tool`).

    Raises:
        ArchiveError: not installed.
    """
    found = find_tool("torch-model-archiver")
    if found is None:
        raise ArchiveError("torch-model-archiver not found: run `make setup` (it is a dependency)")
    return found


def build_archive(
    out: Path,
    model_store: Path,
    name: str | None = None,
    *,
    version: str = "1.0",
    model_file: Path | None = None,
    handler: Path | None = None,
    config_file: Path | None = None,
) -> Path:
    """Archive a training output as ``model_store/NAME.mar``, replacing an older one atomically.

    Args:
        out: training output dir with :data:`REQUIRED_FILES`.
        model_store: dir TorchServe loads archives from; created if missing.
        name: model name: the archive is ``NAME.mar`` and is served at ``/predictions/NAME``;
            None: the task's (``detector`` or ``classifier``, see :data:`TASKS`).
        version: model version recorded in the archive manifest.
        model_file, handler, config_file: the project files to package; None: the task's.

    Returns:
        Path of the archive.

    Raises:
        ArchiveError: invalid input (see :func:`check_training_output`), a bad name, or the
            archiver failed (its last error line is in the message).
    """
    out = Path(out)
    spec = check_training_output(out)
    files = task_files(spec)
    name = files.name if name is None else name
    if not _NAME_RE.match(name):
        raise ArchiveError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
    if model_file is None and "model_file" in spec:  # the user's model: the run's copy
        model_file = out / spec["model_file"]
        if not model_file.is_file():
            raise ArchiveError(f"{model_file} is missing (a run copies its model file): retrain")
    model_file = files.model_file if model_file is None else Path(model_file)
    handler = files.handler if handler is None else Path(handler)
    config_file = files.config_file if config_file is None else Path(config_file)
    for path in (model_file, handler, config_file, *SHARED_HANDLER_FILES):
        if not path.is_file():
            raise ArchiveError(f"{path} is missing from the checkout")
    extra_files = [out / "index_to_name.json", out / "model.json", *SHARED_HANDLER_FILES]
    if any("," in str(path) for path in extra_files):
        raise ArchiveError(f"paths {extra_files} must not contain a comma (--extra-files)")
    model_store = Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    target = model_store / f"{name}.mar"

    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=model_store))
    try:
        cmd = [
            find_model_archiver(),
            "--model-name", name,
            "--version", version,
            "--model-file", str(model_file),
            "--serialized-file", str(out / "model.pt"),
            "--handler", str(handler),
            "--extra-files", ",".join(str(path) for path in extra_files),
            "--config-file", str(config_file),
            "--export-path", str(staging),
            "--force",
        ]  # fmt: skip
        # torch-model-archiver gathers the files in <TMPDIR>/<model name>: two archives of one
        # name built at once (two projects, two test processes) would mix their files there
        env = {**os.environ, "TMPDIR": str(staging)}
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        built = staging / f"{name}.mar"
        if result.returncode != 0 or not built.is_file():
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise ArchiveError(
                f"torch-model-archiver failed (exit {result.returncode}): {lines[-1].strip()}"
            )
        os.replace(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def archived_task(archive: Path) -> str | None:
    """The task of a built archive, read from the ``model.json`` inside it.

    Returns:
        ``model.json``'s task (:data:`DEFAULT_TASK` when it names none), or None when the
        archive cannot be read or holds no ``model.json`` object.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            spec = json.loads(zf.read("model.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return spec.get("task", DEFAULT_TASK) if isinstance(spec, dict) else None


def human_size(num_bytes: int) -> str:
    """Format a byte count for people, e.g. ``12.3 MB`` (powers of 1000)."""
    size = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
