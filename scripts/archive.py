"""Package training outputs as TorchServe archives: ``model_store/NAME.mar``.

Usage (from the repository root)::

    python -m scripts.archive [--model-store model_store]
    python -m scripts.archive --out DIR [--model-store model_store] [--name NAME]

Without ``--out``, every default training output that has been trained is archived:
``outputs/detection`` as ``detector.mar`` and ``outputs/classification`` as ``classifier.mar``.
With ``--out``, that dir is archived as ``detector.mar`` or ``classifier.mar`` after the task in
its ``model.json``, or as ``NAME.mar``. Exit status 0 on success (prints each archive's path and
size), 1 with a one-line message when a training output is missing or broken or the archiver
fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.args import add_keys_argument
from serve.archive import TASKS, ArchiveError, build_archive, human_size


def default_outputs() -> list[Path]:
    """The default training output dirs with a ``model.pt`` (:data:`serve.archive.TASKS` order)."""
    return [
        files.default_out for files in TASKS.values() if (files.default_out / "model.pt").exists()
    ]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the archives, print where they are; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.archive", description=__doc__.split("\n")[0]
    )
    defaults = " and ".join(str(files.default_out) for files in TASKS.values())
    parser.add_argument(
        "--out",
        type=Path,
        help="training output dir (model.pt, index_to_name.json, model.json); default: each of "
        f"{defaults} that has been trained",
    )
    parser.add_argument(
        "--model-store",
        type=Path,
        default=Path("model_store"),
        help="dir the archives are written to (created if missing)",
    )
    parser.add_argument(
        "--name",
        help="model name: NAME.mar, served at /predictions/NAME (default: detector or "
        "classifier, after the task in model.json); needs --out",
    )
    parser.add_argument("--version", default="1.0", help="model version in the archive manifest")
    add_keys_argument(parser, config=None)
    args = parser.parse_args(argv)
    if args.name is not None and args.out is None:
        parser.error("--name needs --out (without --out every trained task is archived)")

    if args.out is not None:
        outs = [args.out]
    else:
        outs = default_outputs()
        if not outs:
            print(
                f"archive: error: no trained model in {defaults}: run `make train` first",
                file=sys.stderr,
            )
            return 1
    status = 0
    for out in outs:  # one failure does not keep the other task from being archived
        try:
            path = build_archive(out, args.model_store, args.name, version=args.version)
        except ArchiveError as exc:
            print(f"archive: error: {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"{path} ({human_size(path.stat().st_size)})")
    return status


if __name__ == "__main__":
    sys.exit(main())
