"""Train a detector while measuring how fast storage feeds it.

    python -m scripts.train --config configs/detection.yaml --access sequential --epochs 3
    make train TASK=detection ACCESS=random EPOCHS=1 LIMIT=20

Flags override the config file; ``--set section.key=value`` overrides any other key.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines.records import DatasetError
from pipelines.shards import ShardError
from pipelines.storage import StorageError
from training.config import ConfigError, load_config
from training.engine import TrainingError

#: CLI flag → config key it overrides.
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
}


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags; each overrides one config key (shown in its help)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default="configs/detection.yaml", help="YAML config file (default: %(default)s)"
    )
    for flag, key in FLAG_KEYS.items():
        parser.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, default=None, help=f"overrides {key}"
        )
    parser.add_argument(
        "--no-pretrained", action="store_true", help="overrides model.pretrained=false"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set access.shuffle_buffer=128 (repeatable)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    return parser


def user_message(exc: Exception) -> str:
    """The one-line message of a user-facing error.

    An error raised in a DataLoader worker reaches the main process re-raised with the worker's
    traceback as its message; only the original exception's own message is kept.
    """
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    name = type(exc).__name__
    return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the config, run training; user errors print one line and return 2."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    overrides = [
        f"{key}={getattr(args, flag)}"
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag) not in (None, "")
    ]
    if args.no_pretrained:
        overrides.append("model.pretrained=false")
    overrides.extend(args.set)
    try:
        cfg = load_config(args.config, overrides)
        from training.run import run  # heavy imports only once the config is valid

        run(cfg, resume=args.resume)
    except (ConfigError, DatasetError, StorageError, ShardError, TrainingError) as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: outputs hold the last completed epoch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
