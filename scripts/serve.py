"""Run TorchServe on the model store: start (in the background), status, stop.

Usage (from the repository root)::

    python -m scripts.serve start  [--model-store model_store] [--runtime-dir serve/run]
                                   [--host 127.0.0.1] [--inference-port 8080] [--timeout 300] ...
    python -m scripts.serve status [--runtime-dir serve/run]
    python -m scripts.serve stop   [--runtime-dir serve/run]

``start`` serves every ``NAME.mar`` of the store and returns once all models are READY, printing
their prediction URLs. Exit status: 0 success; 1 a one-line error (the TorchServe log tails are
printed first when the server failed); ``status`` exits 3 when no server runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.args import add_keys_argument
from serve.archive import archived_task
from serve.properties import BASE_CONFIG, ServeError
from serve.torchserve import server_status, start_server, stop_server

PORT_OPTIONS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
#: Request body of the printed curl hint for a detector: a whole BCCD photo.
DETECTION_EXAMPLE = "data/bccd/JPEGImages/BloodImage_00007.jpg"
#: A cell crop (written by ``python -m scripts.make_crops``) for the classifier's curl hint.
CLASSIFICATION_EXAMPLE = Path("data/bccd_cells/test/WBC/BloodImage_00011_00.jpg")


def example_image(task: str | None) -> str:
    """A file to POST to a model of ``task`` in the printed curl hints (repository-root path).

    A cell crop for a classifier (a placeholder naming the command that makes the crops when there
    are none), a whole photo otherwise.
    """
    if task == "classification":
        if CLASSIFICATION_EXAMPLE.is_file():
            return str(CLASSIFICATION_EXAMPLE)
        return "CELL.jpg  # a cell crop, e.g. from `python -m scripts.make_crops`"
    return DETECTION_EXAMPLE


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (subcommands start, status, stop)."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.serve", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_runtime_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--runtime-dir",
            type=Path,
            default=Path("serve/run"),
            help="this server's config, logs, pid file (default: serve/run)",
        )

    start = sub.add_parser("start", help="start TorchServe in the background and wait until ready")
    add_runtime_dir(start)
    start.add_argument(
        "--model-store",
        type=Path,
        default=Path("model_store"),
        help="dir of NAME.mar archives, all served (default: model_store)",
    )
    start.add_argument(
        "--config",
        type=Path,
        default=BASE_CONFIG,
        help="base config.properties (default: the repository's)",
    )
    start.add_argument(
        "--host",
        help="bind address of every listener (default: as configured, "
        "127.0.0.1); any non-loopback address turns token authorization on",
    )
    for name in PORT_OPTIONS:
        start.add_argument(
            f"--{name.replace('_', '-')}-port",
            type=int,
            dest=f"{name}_port",
            metavar="PORT",
            help=f"{name.replace('_', ' ')} port (default: as configured)",
        )
    start.add_argument(
        "--token-auth",
        action="store_true",
        help="require API keys (key_file.json) even on loopback",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the models to be ready (default: 300)",
    )

    add_runtime_dir(sub.add_parser("status", help="say whether this runtime dir's server runs"))
    add_runtime_dir(sub.add_parser("stop", help="stop the server this runtime dir started"))
    add_keys_argument(parser, config=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "start":
            return _start(args)
        if args.command == "stop":
            pid = stop_server(args.runtime_dir)
            if pid is None:
                print(f"no TorchServe running for {args.runtime_dir}: nothing to stop")
            else:
                print(f"stopped TorchServe (pid {pid})")
            return 0
        return _status(args)
    except ServeError as exc:
        if exc.details:
            print(exc.details, file=sys.stderr)
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("serve: interrupted", file=sys.stderr)
        return 130


def _start(args: argparse.Namespace) -> int:
    """``start``: launch, wait, print the URLs."""
    ports = {name: getattr(args, f"{name}_port") for name in PORT_OPTIONS}
    info = start_server(
        args.model_store,
        args.runtime_dir,
        base_config=args.config,
        host=args.host,
        ports=ports,
        token_auth=args.token_auth,
        timeout_s=args.timeout,
    )
    print(f"TorchServe is ready (pid {info.pid}); runtime dir {info.runtime_dir}")
    for name in info.models:
        print(f"  POST {info.prediction_url(name)}")
    print(f"  management {info.management_url}, metrics {info.metrics_url}/metrics")
    auth = ""
    if info.token_auth:
        print(f"  token authorization is ON: keys in {info.key_file} (they expire after 60 min")
        print(f"  by default; renew: curl -X POST '{info.management_url}/token?type=inference'")
        print('  -H "Authorization: Bearer <API key>")')
        auth = ' -H "Authorization: Bearer <inference key>"'
    for name in info.models:
        body = example_image(archived_task(Path(args.model_store) / f"{name}.mar"))
        print(f"  try: curl{auth} {info.prediction_url(name)} -T {body}")
    print(f"  stop: python -m scripts.serve stop --runtime-dir {args.runtime_dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    """``status``: print what runs; exit 3 when nothing does."""
    state = server_status(args.runtime_dir)
    if state is None:
        print(f"no TorchServe running for {args.runtime_dir}")
        return 3
    print(f"TorchServe running (pid {state['pid']}); runtime dir {state['runtime_dir']}")
    ready = state.get("models_ready", {})
    if not ready:
        print("  still starting (or started by another tool): no model status yet")
    for name, is_ready in ready.items():
        url = f"{state['inference_url']}/predictions/{name}"
        print(f"  {name}: {'READY' if is_ready else 'not ready'}  POST {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
