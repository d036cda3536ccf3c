"""What TorchServe needs before it starts, each missing piece one line naming the fix.

Java 17+ (found as TorchServe looks for it), the ``torchserve`` and ``torch-model-archiver`` console
scripts of this environment, and archives with valid model names in the model store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from serve.properties import (
    ServeError,
)

#: Oldest Java major version TorchServe 0.12 supports.
MIN_JAVA = 17


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_java() -> str:
    """Check that Java >= 17 is available the way TorchServe looks for it ($JAVA_HOME, PATH).

    Returns:
        The version string, e.g. ``17.0.15``.

    Raises:
        ServeError: no java, or an older one.
    """
    fix = "install Java 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set "
    fix += "JAVA_HOME"
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise ServeError(f"java not found (TorchServe needs Java {MIN_JAVA}+): {fix}")
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServeError(f"{java} -version failed ({exc}): {fix}") from None
    match = re.search(r'version "([^"]+)"', result.stderr + result.stdout)
    if match is None:
        raise ServeError(f"could not read the version of {java}: {fix}")
    version = match[1]
    parts = version.split(".")
    major = int(parts[1] if parts[0] == "1" and len(parts) > 1 else re.match(r"\d+", parts[0])[0])
    if major < MIN_JAVA:
        raise ServeError(f"{java} is Java {version}; TorchServe 0.12 needs {MIN_JAVA}+: {fix}")
    return version


def find_tool(name: str) -> str | None:
    """Locate a console script beside this interpreter, then on PATH; None if not installed."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def find_torchserve() -> str:
    """Locate the ``torchserve`` launcher.

    Raises:
        ServeError: not installed.
    """
    found = find_tool("torchserve")
    if found is None:
        raise ServeError("torchserve not found: run `make setup` (it is a dependency)")
    return found


def list_models(model_store: Path) -> list[str]:
    """Names of the archives (``NAME.mar``) in a model store, sorted.

    Raises:
        ServeError: no store, no archive, or an archive name TorchServe would refuse.
    """
    model_store = Path(model_store)
    archives = sorted(model_store.glob("*.mar")) if model_store.is_dir() else []
    if not archives:
        raise ServeError(f"no model archive (*.mar) in {model_store}: run `make archive` first")
    names = [path.stem for path in archives]
    bad = [name for name in names if not _MODEL_NAME.match(name)]
    if bad:
        raise ServeError(f"archive names {bad} in {model_store} are not valid model names")
    return names
