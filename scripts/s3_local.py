"""Run a local S3-protocol server (rclone serve s3 on 127.0.0.1): up, status, down, upload.

Usage (from the repository root)::

    python -m scripts.s3_local up     [--state-dir .s3] [--port PORT] [--bucket dss-bench]
    python -m scripts.s3_local status [--state-dir .s3]
    python -m scripts.s3_local upload [--src data/bccd] [--prefix bccd] [--workers 8]
    python -m scripts.s3_local down   [--state-dir .s3]

``up`` starts the server in the background with fresh random credentials, serving
``.s3/data/`` (each sub-folder is a bucket), and writes them to ``.s3/env`` (mode 0600; load it
with ``set -a; . .s3/env; set +a``). The secret is never printed. ``upload`` copies a directory
tree to a bucket: the endpoint of ``--endpoint``, else ``S3_ENDPOINT``, else the running local
server's, whose bucket and keys it then uses (read from ``.s3/env`` by the client; credentials
in the environment are left as they are).
Exit status: 0 success; 1 a one-line error; ``status`` exits 3 when no server runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cli.args import add_keys_argument
from datagen.upload import upload_tree
from local_s3.server import (
    DEFAULT_BUCKET,
    DEFAULT_STATE_DIR,
    LocalS3Error,
    down,
    resolve_s3,
    running_server,
    state_paths,
    up,
)
from pipelines.storage.base import StorageError
from pipelines.storage.s3 import S3Storage


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (subcommands up, status, down, upload)."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.s3_local", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_state_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=DEFAULT_STATE_DIR,
            help="data/, env, server.json, rclone.log of this server (default: .s3)",
        )

    start = sub.add_parser("up", help="start the server in the background, write the env file")
    add_state_dir(start)
    start.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: a free one)")
    start.add_argument(
        "--bucket", default=DEFAULT_BUCKET, help=f"bucket to create (default: {DEFAULT_BUCKET})"
    )
    start.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for it (default: 30)"
    )
    add_state_dir(sub.add_parser("status", help="say whether the server runs"))
    add_state_dir(sub.add_parser("down", help="stop the server that `up` started"))

    upload = sub.add_parser("upload", help="upload a directory tree to s3://$S3_BUCKET/PREFIX/")
    add_state_dir(upload)
    upload.add_argument(
        "--src", type=Path, default=Path("data/bccd"), help="directory (default: data/bccd)"
    )
    upload.add_argument("--prefix", default="bccd", help="key prefix (default: bccd)")
    upload.add_argument("--bucket", help="bucket (default: $S3_BUCKET)")
    upload.add_argument("--endpoint", help="endpoint URL (default: $S3_ENDPOINT; empty: AWS)")
    upload.add_argument(
        "--workers", type=int, default=8, help="files uploaded at once (default: 8)"
    )
    add_keys_argument(parser, config=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            pid = down(args.state_dir)
            if pid is None:
                print(f"no local S3 server running for {args.state_dir}: nothing to stop")
            else:
                print(
                    f"stopped the local S3 server (pid {pid}); data kept in "
                    f"{state_paths(args.state_dir)['data']}"
                )
            return 0
        if args.command == "status":
            state = running_server(args.state_dir)
            if state is None:
                print(f"no local S3 server running for {args.state_dir}")
                return 3
            print(
                f"local S3 server running (pid {state['pid']}) at {state['endpoint']}, "
                f"serving {state['data_dir']}"
            )
            return 0
        return _upload(args)
    except (LocalS3Error, StorageError) as exc:
        print(f"s3_local: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("s3_local: interrupted", file=sys.stderr)
        return 130


def _up(args: argparse.Namespace) -> int:
    state, started = up(args.state_dir, port=args.port, bucket=args.bucket, timeout_s=args.timeout)
    env = state_paths(args.state_dir)["env"]
    verb = "started" if started else "already running"
    print(f"local S3 server {verb} (pid {state['pid']}): {state['endpoint']}")
    print(
        f"  bucket {args.bucket if started else state.get('bucket', args.bucket)!r}; "
        f"data in {state['data_dir']}"
    )
    print(f"  credentials (not shown) in {env}; load them: set -a; . {env}; set +a")
    print("  upload the dataset: python -m scripts.s3_local upload")
    print("  stop: python -m scripts.s3_local down")
    return 0


def _upload(args: argparse.Namespace) -> int:
    target = resolve_s3(args.endpoint, args.bucket, None, args.state_dir)
    if args.endpoint is None and target.credentials_file is None and target.endpoint is None:
        raise LocalS3Error(
            f"no local S3 server running for {args.state_dir} and no endpoint named: start it "
            "(python -m scripts.s3_local up), or set S3_ENDPOINT / pass --endpoint"
        )
    if not target.bucket:
        raise LocalS3Error("no bucket: set S3_BUCKET or pass --bucket")
    storage = S3Storage(
        target.bucket,
        args.prefix,
        endpoint_url=target.endpoint,
        region=target.region,
        credentials_file=target.credentials_file,
        max_pool_connections=max(16, 4 * args.workers),
    )
    start = time.perf_counter()
    count, nbytes = upload_tree(args.src, storage, workers=args.workers)
    seconds = time.perf_counter() - start
    print(
        f"uploaded {count} files, {nbytes / 1e6:.1f} MB in {seconds:.1f} s to {storage.describe()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
