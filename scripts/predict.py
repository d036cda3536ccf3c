"""Run a trained model on images and write them with boxes (or the class), labels and scores.

    make predict INPUT=data/bccd/JPEGImages/BloodImage_00007.jpg
    make predict INPUT=s3://dss-bench/bccd/JPEGImages/BloodImage_00007.jpg
    make predict INPUT=my-images.txt        # one path or s3:// URI per line
    make predict TASK=classification INPUT=data/bccd_cells/test/WBC/BloodImage_00011_00.jpg

Writes ``<OUT>/predicted_images/`` (one JPEG per input) and ``detections.json`` there. S3
URIs use the configured endpoint (``storage.endpoint_url``, ``--s3-endpoint``, ``S3_ENDPOINT``,
or the local server of ``make s3-up``) and credentials from the standard AWS chain.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cli.args import add_config_arguments, config_from_args
from common.errors import UserError, say_error, user_message


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, flags=("out", "s3_endpoint"))
    parser.add_argument("--input", required=True, help="image path, s3:// URI, or a .txt list")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score (default 0.5)")
    parser.add_argument("--output-dir", default=None, help="default: <OUT>/predicted_images")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Predict; exit 0 when every input was processed, 1 when some failed, 2 on user errors."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        cfg = config_from_args(args)
        from training.predict import expand_inputs, load_trained, predict_all
        from training.source import open_storage

        storages = {}

        def read_bytes(spec: str) -> bytes:
            if not spec.startswith("s3://"):
                return Path(spec).read_bytes()
            bucket, _, key = spec[len("s3://") :].partition("/")
            if not bucket or not key:
                raise ValueError(f"{spec}: an S3 URI must look like s3://bucket/key")
            if bucket not in storages:
                s3 = config_from_args(args, ["storage.type=s3", f"storage.bucket={bucket}"])
                storages[bucket] = open_storage(s3).storage
            return storages[bucket].read(key)

        inputs = expand_inputs(args.input, lambda spec: read_bytes(spec).decode("utf-8"))
        model, index_to_name, spec = load_trained(Path(cfg.output.dir))
        out_dir = Path(args.output_dir or Path(cfg.output.dir) / "predicted_images")
        predictions, failures = predict_all(
            model, index_to_name, inputs, read_bytes, out_dir, args.threshold, spec=spec
        )
    except (UserError, FileNotFoundError, ValueError) as exc:
        say_error(user_message(exc))
        return 2
    what = "classes" if spec.get("task") == "classification" else "boxes"
    for p in predictions:
        labels = ", ".join(f"{d['label']} {d['score']:.2f}" for d in p.detections[:5])
        more = f" (+{len(p.detections) - 5} more)" if len(p.detections) > 5 else ""
        print(f"{p.input}: {len(p.detections)} {what} [{labels}{more}] -> {p.image_path}")
    summary = f"{len(predictions)} images, {len(failures)} failed"
    print(f"{summary}; detections in {out_dir / 'detections.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
