"""Train a detector while measuring how fast storage feeds it.

    python -m scripts.train --config configs/detection.yaml --access shards --epochs 3
    make train TASK=detection ACCESS=random EPOCHS=1 LIMIT=20

Flags override the config file; ``--set section.key=value`` overrides any other key;
``--keys`` lists every key with its default and description.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cli.args import add_config_arguments, config_from_args
from common.errors import UserError, say_error, user_message
from training.engine import Preempted, TrainingError


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags; each overrides one config key (shown in its help)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--no-pretrained", action="store_true", help="overrides model.pretrained=false"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the config, run training; user errors print one line and return 2."""
    args = get_args_parser().parse_args(argv)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)  # DEBUG records (the full config) go to the log file only
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", handlers=[console])
    try:
        cfg = config_from_args(args, ["model.pretrained=false"] if args.no_pretrained else [])
        from training.run import run  # heavy imports only once the config is valid

        run(cfg, resume=args.resume)
    except Preempted as exc:
        logging.getLogger("training").warning("%s", exc)
        return 128 + exc.signum  # the shell's code for a process ended by that signal
    except (UserError, TrainingError) as exc:
        say_error(user_message(exc))
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoint.pt holds the last epoch or step checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
