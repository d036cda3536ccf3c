"""Write a synthetic detection dataset (real JPEGs, random boxes, Pascal VOC layout).

    python -m scripts.synth --out data/synth --count 1000 [--preset flowers]
    python -m scripts.synth --out s3://dss-bench/synth --count 100000 --preset openimages
    python -m scripts.synth --out data/synth-30k --count 200 --mean-kb 30 --std-kb 5

Size presets (KB = 10^3 bytes): flowers ~62 KB mean, openimages ~315 KB, mlperf 150 KB (all
images the same target); --mean-kb / --std-kb override them (lognormal sizes unless
--distribution normal, which is clipped to at least 2 KB). Same arguments, same bytes.

S3 targets: the endpoint comes from --endpoint (empty: AWS), else $S3_ENDPOINT, else the local
server of `python -m scripts.s3_local up` while it runs (its state folder is the env file's:
.s3/), else AWS; credentials only from the AWS chain (environment, profile) or that server's
env file, never from the command line. The bucket must exist. An existing dataset at the target
is refused unless --overwrite (which replaces the keys it writes and keeps the others).
Exit status: 0 written; 2 a one-line error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.args import add_keys_argument
from datagen.images import (
    DEFAULT_CLASSES,
    DEFAULT_PRESET,
    KB,
    PRESETS,
    SynthError,
    spec_from_preset,
)
from datagen.synthetic import generate_dataset
from local_s3.server import DEFAULT_STATE_DIR, LocalS3Error, resolve_s3
from pipelines.storage.base import Storage, StorageError
from pipelines.storage.filesystem import FileSystemStorage


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.synth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", required=True, help="a directory, or s3://bucket/prefix (the VOC tree's root)"
    )
    parser.add_argument("--count", type=int, required=True, help="number of images (>= 2)")
    _add_size_flags(parser)
    _add_content_flags(parser)
    _add_run_flags(parser)
    _add_s3_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_keys_argument(parser, config=None)
    return parser


def _add_size_flags(parser: argparse.ArgumentParser) -> None:
    """Add the image size flags: ``--preset``, ``--mean-kb``, ``--std-kb``, ``--distribution``."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help=f"size distribution of a known dataset (default: {DEFAULT_PRESET})",
    )
    parser.add_argument("--mean-kb", type=float, help="mean image size in KB (overrides preset)")
    parser.add_argument(
        "--std-kb",
        type=float,
        help="size standard deviation in KB (default: the preset's std/mean ratio times the mean)",
    )
    parser.add_argument(
        "--distribution",
        choices=("lognormal", "normal"),
        default="lognormal",
        help="size distribution (default: lognormal; normal is clipped to at least 2 KB)",
    )


def _add_content_flags(parser: argparse.ArgumentParser) -> None:
    """Add the content flags: ``--classes``, ``--max-boxes``, ``--test-fraction``, ``--seed``."""
    parser.add_argument(
        "--classes",
        default=",".join(DEFAULT_CLASSES),
        help="comma-separated class names (default: %(default)s)",
    )
    parser.add_argument(
        "--max-boxes", type=int, default=8, help="boxes per image: 1..K (default: 8)"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of ids in test.txt, in [0, 1) (default: 0.2; 0: no test split)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Add the writing flags: ``--overwrite``, ``--workers``, ``--write-threads``."""
    parser.add_argument(
        "--overwrite", action="store_true", help="write over an existing dataset at --out"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes generating images (default: 1)"
    )
    parser.add_argument(
        "--write-threads", type=int, default=8, help="writes in flight (default: 8)"
    )


def _add_s3_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags an ``s3://`` target's endpoint comes from: ``--endpoint``, ``--env-file``."""
    parser.add_argument("--endpoint", help="S3 endpoint URL (default: $S3_ENDPOINT; empty: AWS)")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=DEFAULT_STATE_DIR / "env",
        help="the local S3 server's env file, in its state folder; used while that server runs "
        "and no endpoint is named (default: .s3/env)",
    )


def open_target(out: str, endpoint: str | None, env_file: Path, write_threads: int) -> Storage:
    """The storage of ``--out``: a :class:`FileSystemStorage` or an ``S3Storage``.

    An S3 target's endpoint and credentials come from :func:`local_s3.server.resolve_s3`, with
    ``env_file``'s folder as the local server's state folder.

    Raises:
        SynthError: ``out`` is an existing file, or an S3 URI without a bucket.
    """
    if not out.startswith("s3://"):
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise SynthError(f"{path} exists and is not a directory: give a folder for --out")
        return FileSystemStorage(path)
    bucket, _, prefix = out[len("s3://") :].partition("/")
    if not bucket:
        raise SynthError(f"{out}: no bucket: write s3://bucket/prefix")
    target = resolve_s3(endpoint, bucket, None, env_file.parent)
    from pipelines.storage.s3 import S3Storage

    return S3Storage(
        bucket,
        prefix,
        endpoint_url=target.endpoint,
        region=target.region,
        credentials_file=target.credentials_file,
        max_pool_connections=max(16, write_threads),
    )


def main(argv: list[str] | None = None) -> int:
    """Write the dataset and print what was written; user errors return 2."""
    args = get_args_parser().parse_args(argv)
    try:
        spec = spec_from_preset(
            args.preset,
            mean_kb=args.mean_kb,
            std_kb=args.std_kb,
            distribution=args.distribution,
            classes=tuple(args.classes.split(",")),
            max_boxes=args.max_boxes,
            seed=args.seed,
        )
        storage = open_target(args.out, args.endpoint, args.env_file, args.write_threads)
        report = generate_dataset(
            storage,
            spec,
            args.count,
            test_fraction=args.test_fraction,
            overwrite=args.overwrite,
            workers=args.workers,
            write_threads=args.write_threads,
            progress=not args.no_progress,
        )
    except (ValueError, SynthError, StorageError, LocalS3Error, OSError) as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "synth: interrupted (no split files written: rerun with --overwrite)", file=sys.stderr
        )
        return 130
    mean, target = report.mean_image_bytes, report.target_mean_bytes
    seconds = report.elapsed_s
    total = report.image_bytes + report.other_bytes
    print(
        f"wrote {report.images} images, {report.image_bytes / 1e6:.1f} MB: mean "
        f"{mean / KB:.1f} KB (target {target / KB:.1f} KB, {100 * (mean / target - 1):+.1f} %), "
        f"{report.boxes} boxes of {len(spec.classes)} classes"
    )
    print(
        f"{report.objects} objects, {total / 1e6:.1f} MB in {storage.describe()}; "
        f"train {report.train} ids, test {report.test} ids"
    )
    print(
        f"elapsed {seconds:.1f} s: {report.objects_per_s:.1f} objects/s, "
        f"{report.images / seconds:.1f} images/s, {total / 1e6 / seconds:.1f} MB/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
