"""Package a training output dir as a TorchServe model archive (``NAME.mar``).

The archive holds the model file ``models/detector.py``, the state_dict ``model.pt``, the handler
``handlers/detector_handler.py``, ``index_to_name.json``, ``model.json`` and the model-config YAML
``serve/detector.yaml``, all flat at its root. It is built by the real ``torch-model-archiver``
into a temporary dir inside the model store and then renamed, so ``model_store/NAME.mar`` is
either the old archive or the complete new one, never half written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from serve.runtime import find_tool

#: Repository root (this file is ``serve/archive.py``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Model file archived as ``detector.py`` (imported by the handler).
MODEL_FILE = REPO_ROOT / "models" / "detector.py"
#: TorchServe handler archived as ``detector_handler.py``.
HANDLER_FILE = REPO_ROOT / "handlers" / "detector_handler.py"
#: Model-config YAML of the archive (workers, batching, timeouts, handler knobs).
MODEL_CONFIG = REPO_ROOT / "serve" / "detector.yaml"
#: Files a training run writes into its output dir; all three go into the archive.
REQUIRED_FILES = ("model.pt", "index_to_name.json", "model.json")
#: Model names TorchServe accepts (they become URL path segments).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ArchiveError(Exception):
    """A user-fixable problem (missing training output, bad name, archiver failure).

    The message is one line that says what is wrong and how to fix it.
    """


def check_training_output(out: Path) -> dict:
    """Check that ``out`` holds what a training run writes, and read its ``model.json``.

    Args:
        out: the training output dir (``--out`` of training).

    Returns:
        The parsed ``model.json``.

    Raises:
        ArchiveError: ``out`` or one of :data:`REQUIRED_FILES` is missing, or ``model.json`` /
            ``index_to_name.json`` is not valid JSON for a detection model.
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
    if not isinstance(spec, dict) or spec.get("task", "detection") != "detection":
        raise ArchiveError(f"{out / 'model.json'} does not describe a detection model: {spec}")
    missing = [key for key in ("arch", "num_classes") if key not in spec]
    if missing:
        raise ArchiveError(f"{out / 'model.json'} lacks {', '.join(missing)}: run `make train`")
    if not isinstance(labels, dict) or not labels:
        raise ArchiveError(f"{out / 'index_to_name.json'} is not a label-id -> name mapping")
    return spec


def find_model_archiver() -> str:
    """Locate ``torch-model-archiver`` (see :func:`serve.runtime.find_tool`).

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
    name: str = "detector",
    *,
    version: str = "1.0",
    model_file: Path = MODEL_FILE,
    handler: Path = HANDLER_FILE,
    config_file: Path = MODEL_CONFIG,
) -> Path:
    """Archive a training output as ``model_store/NAME.mar``, replacing an older one atomically.

    Args:
        out: training output dir with :data:`REQUIRED_FILES`.
        model_store: dir TorchServe loads archives from; created if missing.
        name: model name: the archive is ``NAME.mar`` and is served at ``/predictions/NAME``.
        version: model version recorded in the archive manifest.
        model_file, handler, config_file: the project files to package (defaults: this repo's).

    Returns:
        Path of the archive.

    Raises:
        ArchiveError: invalid input (see :func:`check_training_output`), a bad name, or the
            archiver failed (its last error line is in the message).
    """
    if not _NAME_RE.match(name):
        raise ArchiveError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
    out = Path(out)
    check_training_output(out)
    for path in (model_file, handler, config_file):
        if not Path(path).is_file():
            raise ArchiveError(f"{path} is missing from the checkout")
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
            "--extra-files", f"{out / 'index_to_name.json'},{out / 'model.json'}",
            "--config-file", str(config_file),
            "--export-path", str(staging),
            "--force",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
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


def human_size(num_bytes: int) -> str:
    """Format a byte count for people, e.g. ``12.3 MB`` (powers of 1000)."""
    size = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
