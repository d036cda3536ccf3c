"""Package a training output as a TorchServe archive: ``model_store/NAME.mar``.

Usage (from the repository root)::

    python -m scripts.archive --out outputs/detection --model-store model_store [--name detector]

Exit status 0 on success (prints the archive path and size), 1 with a one-line message when the
training output is missing or the archiver fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve.archive import ArchiveError, build_archive, human_size


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the archive, print where it is; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.archive", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/detection"),
        help="training output dir (model.pt, index_to_name.json, model.json)",
    )
    parser.add_argument(
        "--model-store",
        type=Path,
        default=Path("model_store"),
        help="dir the archive is written to (created if missing)",
    )
    parser.add_argument(
        "--name", default="detector", help="model name: NAME.mar, served at /predictions/NAME"
    )
    parser.add_argument("--version", default="1.0", help="model version in the archive manifest")
    args = parser.parse_args(argv)
    try:
        path = build_archive(args.out, args.model_store, args.name, version=args.version)
    except ArchiveError as exc:
        print(f"archive: error: {exc}", file=sys.stderr)
        return 1
    print(f"{path} ({human_size(path.stat().st_size)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
