"""Run outputs: atomic writes of CSV, JSON, YAML and torch files, and the run's log file."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import torch
import yaml

from common.files import atomic_file, atomic_write_bytes


def run_folder(parent: str | Path) -> Path:
    """A run's folder ``<parent>/<YYYYmmdd-HHMMSS>`` in local time, as rank 0 named it; not created.

    Every rank gets the same (a collective with several ranks).
    """
    from training import distributed

    return Path(distributed.gather(str(Path(parent) / time.strftime("%Y%m%d-%H%M%S")))[0])


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` as CSV with a header, atomically; floats keep 6 significant digits."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def write_yaml(path: Path, data) -> None:
    """Write ``data`` as YAML, atomically."""
    atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode("utf-8"))


def save_torch(path: Path, obj) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    with atomic_file(path) as f:
        torch.save(obj, f)


#: Loggers of the project's packages; their INFO records go to the run's log file.
PROJECT_LOGGERS = ("pipelines", "training", "models", "common", "datagen")


def attach_log_file(path: Path, rank: int | None = None) -> logging.Handler:
    """Send the project's log records (DEBUG and up) to ``path``, appending; return the handler.

    With several ranks each line says ``[rank N]`` (small appends of whole lines from several
    processes do not interleave). Pass the handler to :func:`detach_log_file` when the run ends.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    where = "" if rank is None else f"[rank {rank}] "
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")
    )
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    """Undo :func:`attach_log_file` and close the file."""
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()
