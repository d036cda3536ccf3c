"""Credentials files in shell syntax (``export AWS_ACCESS_KEY_ID=...``).

The local S3 server of ``make s3-up`` writes them (``.s3/env``, mode 0600) and the S3 clients
read them; sourcing one (``set -a; . .s3/env; set +a``) gives a shell the same keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.files import atomic_write_text
from pipelines.storage.base import StorageError


def write_env_file(path: str | os.PathLike, values: dict[str, str]) -> None:
    """Write ``export KEY=value`` lines, mode 0600, atomically (values must be shell-safe)."""
    lines = [f"# Local S3 server (python -m scripts.s3_local up). Load: set -a; . {path}; set +a"]
    for key, value in values.items():
        if not all(c.isalnum() or c in ":/._-" for c in value):
            raise ValueError(f"{key}: value is not shell-safe")
        lines.append(f"export {key}={value}")
    atomic_write_text(path, "\n".join(lines) + "\n", mode=0o600)


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """The ``KEY=value`` pairs of an env file (``export`` and ``#`` comments allowed).

    Raises:
        StorageError: the file does not exist or cannot be read.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise StorageError(
            f"{path} not found: start the local server (python -m scripts.s3_local up) or set "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_ENDPOINT, S3_BUCKET"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    return values


def keys_for_environment(path: str | os.PathLike) -> dict[str, str] | None:
    """The ``AWS_*`` values of an env file, for a client that reads keys from the environment only.

    None when the environment already holds other keys or a session token: they are never
    replaced (the caller says so in its own words).

    Raises:
        StorageError: as :func:`read_env_file`.
    """
    keys = {k: v for k, v in read_env_file(path).items() if k.startswith("AWS_")}
    user = os.environ.get("AWS_ACCESS_KEY_ID")
    if (user is not None and user != keys.get("AWS_ACCESS_KEY_ID")) or (
        "AWS_SESSION_TOKEN" in os.environ
    ):
        return None
    return keys
