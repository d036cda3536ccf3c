"""Shared fixtures: small real copies of the embedded BCCD dataset (Pascal VOC layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_s3.server import local_s3
from tests.helpers import make_voc_subset


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A writable VOC tree with 12 train and 6 test BCCD images."""
    return make_voc_subset(tmp_path / "bccd", {"train": 12, "test": 6})


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3 server (rclone serve s3, free port) shared by the whole session (each test
    makes its own bucket), its credentials in the environment; stopped at the end."""
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


def pytest_collection_modifyitems(items) -> None:
    """Mark what a test needs from its fixtures: ``server`` for the local S3 server,
    ``torchserve`` for a running TorchServe (``served``), so that ``-m "not server"`` and the
    like select by need."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "s3_server" in names or "server" in names:
            item.add_marker(pytest.mark.server)
        if "served" in names:
            item.add_marker(pytest.mark.torchserve)
