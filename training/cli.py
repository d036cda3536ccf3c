"""What the command-line scripts share: config flags, overrides, one-line user errors."""

from __future__ import annotations

import argparse

from pipelines.records import DatasetError
from pipelines.shards import ShardError
from pipelines.storage import StorageError
from training.config import Config, ConfigError, load_config

#: CLI flag → config key it overrides (Make variables map onto these flags).
FLAG_KEYS = {
    "access": "access.mode",
    "storage": "storage.type",
    "epochs": "train.epochs",
    "batch_size": "loader.batch_size",
    "workers": "loader.num_workers",
    "lr": "train.lr",
    "limit": "dataset.limit",
    "out": "output.dir",
    "data": "storage.root",
    "arch": "model.arch",
    "s3_endpoint": "storage.endpoint_url",
    "s3_bucket": "storage.bucket",
    "s3_prefix": "storage.prefixes",
}

#: Errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (ConfigError, DatasetError, StorageError, ShardError)


def add_config_arguments(parser: argparse.ArgumentParser, flags=tuple(FLAG_KEYS)) -> None:
    """Add ``--config``, ``--set`` and the override flags named in ``flags``."""
    parser.add_argument(
        "--config", default="configs/detection.yaml", help="YAML config file (default: %(default)s)"
    )
    for flag in flags:
        help_text = f"overrides {FLAG_KEYS[flag]}"
        if flag == "s3_prefix":
            help_text += " (comma-separated for several)"
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, help=help_text)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set access.shuffle_buffer=128 (repeatable)",
    )


def config_from_args(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    """Load ``args.config`` with the flags' overrides, then ``extra``, then ``--set`` ones.

    Raises:
        ConfigError: as :func:`training.config.load_config`.
    """
    overrides = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value in (None, ""):
            continue
        if flag == "s3_prefix":
            value = "[" + ", ".join(repr(p.strip()) for p in value.split(",") if p.strip()) + "]"
        overrides.append(f"{key}={value}")
    return load_config(args.config, [*overrides, *extra, *args.set])


def user_message(exc: Exception) -> str:
    """The one-line message of a user-facing error.

    An error raised in a DataLoader worker or a torchdata thread reaches the main process
    re-raised with the worker's traceback as its message; only the original message is kept.
    """
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    name = type(exc).__name__
    return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
