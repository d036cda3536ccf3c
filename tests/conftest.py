"""Shared fixtures: small real copies of the embedded BCCD dataset (Pascal VOC layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO / "data" / "bccd"


def make_voc_subset(dest: Path, splits: dict[str, int]) -> Path:
    """Copy the first ``n`` ids of each BCCD split (images, annotations, split file) to ``dest``."""
    (dest / "ImageSets" / "Main").mkdir(parents=True)
    (dest / "Annotations").mkdir()
    (dest / "JPEGImages").mkdir()
    for split, n in splits.items():
        ids = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
        (dest / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for image_id in ids:
            shutil.copy(BCCD / "Annotations" / f"{image_id}.xml", dest / "Annotations")
            shutil.copy(BCCD / "JPEGImages" / f"{image_id}.jpg", dest / "JPEGImages")
    return dest


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A writable VOC tree with 12 train and 6 test BCCD images."""
    return make_voc_subset(tmp_path / "bccd", {"train": 12, "test": 6})
