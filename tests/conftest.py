"""Shared fixtures: small real copies of the embedded BCCD dataset (Pascal VOC layout)."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
from pathlib import Path

import pytest

from serve.local_s3 import local_s3

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


def resident_fraction(path: Path) -> float:
    """The share of the file's pages in the page cache, from Linux ``mincore(2)``."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        del address  # release the buffer export before the mmap closes
    return sum(v & 1 for v in vector) / pages


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A writable VOC tree with 12 train and 6 test BCCD images."""
    return make_voc_subset(tmp_path / "bccd", {"train": 12, "test": 6})


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A local S3 server (rclone serve s3, free port) for one test module, its credentials in the
    environment; stopped at teardown."""
    with local_s3(tmp_path_factory.mktemp("s3")) as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", srv.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", srv.secret_key)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
        missing = str(tmp_path_factory.getbasetemp() / "no-such-aws-file")
        mp.setenv("AWS_CONFIG_FILE", missing)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        yield srv
