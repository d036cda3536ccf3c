"""Derive the cell-classification dataset from BCCD: one crop per annotated cell.

    python -m scripts.make_crops                      # data/bccd → data/bccd_cells
    python -m scripts.make_crops --src data/bccd --out data/bccd_cells --splits train,val,test

Writes ``<out>/<split>/{RBC,WBC,Platelets}/<image id>_<n>.jpg`` with BCCD's own split carried
over, and prints the crops per class and split (RBC dominates: the imbalance is real). Each split
is written into ``<out>/.<split>.partial`` and renamed into place when complete, so an
interrupted run leaves no half split; a split that already exists is kept (delete it to write
it again).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from cli.args import add_keys_argument
from common.errors import say_error
from datagen.crops import write_crops
from pipelines.formats.records import DatasetError
from pipelines.formats.voc import load_voc_split
from pipelines.storage.base import StorageError
from pipelines.storage.filesystem import FileSystemStorage


def main(argv: list[str] | None = None) -> int:
    """Write the missing splits' crops; a missing or malformed source prints one line, returns 2."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--src", default="data/bccd", help="Pascal VOC dataset (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="data/bccd_cells", help="output folder (default: %(default)s)"
    )
    parser.add_argument("--splits", default="train,val,test", help="comma-separated VOC splits")
    add_keys_argument(parser, config=None)
    args = parser.parse_args(argv)
    source, out = FileSystemStorage(args.src), Path(args.out)
    try:
        for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
            if (out / split).exists():
                print(f"{out / split} exists: kept (delete it to write it again)")
                continue
            records, boxes = load_voc_split(source, split)
            partial = out / f".{split}.partial"
            shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
            with tqdm(total=len(records), desc=f"crops {split}", unit="img") as bar:
                counts = write_crops(
                    source, records, FileSystemStorage(partial), split, on_image=bar.update
                )
            os.replace(partial / split, out / split)
            partial.rmdir()
            per_class = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "skipped")
            print(
                f"{split}: {per_class}; skipped {counts['skipped']} tiny and "
                f"{boxes.dropped} degenerate boxes"
            )
    except (DatasetError, StorageError, ValueError) as exc:
        say_error(str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
