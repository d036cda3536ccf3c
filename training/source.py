"""Open the storage a configuration names (``storage.*``): a directory, or a bucket on S3."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.storage.base import Storage
from pipelines.storage.filesystem import FileSystemStorage
from training.config import Config, ConfigError

log = logging.getLogger(__name__)


#: The state folder of `make s3-up`'s local S3 server (its env file, pid, port).
LOCAL_S3_STATE = Path(".s3")


@dataclass(frozen=True)
class DataSource:
    """An opened storage and the dataset trees in it.

    Attributes:
        storage: the back end (a directory, or a bucket).
        roots: key prefixes of the dataset trees in ``storage`` (``""``: its root); several
            hold sources with the same classes, read as one dataset.
        kind: ``fs`` or ``s3`` (for metrics).
    """

    storage: Storage
    roots: tuple[str, ...]
    kind: str


def open_storage(cfg: Config) -> DataSource:
    """Open the storage the config names, and log where its requests go.

    The client is boto3, s3torchconnector or s3dlio; the endpoint and credentials are chosen as the
    README's "Object storage" section says. For ``s3``: ``storage.endpoint_url`` or ``S3_ENDPOINT``;
    with neither, the local server of ``make s3-up`` when it is running and answering (its endpoint,
    bucket and keys, handed to the client: credentials set in the environment are never replaced),
    else AWS (:func:`local_s3.server.resolve_s3`). The bucket is ``storage.bucket`` or
    ``S3_BUCKET``. The log names the endpoint and the credential source, never a key.

    Raises:
        ConfigError: ``s3`` without a bucket anywhere; ``s3torchconnector`` (which reads credentials
            from the environment only) for the local server while other keys are set in the
            environment.
    """
    s = cfg.storage
    roots = tuple("" if p.strip("/") in ("", ".") else p.strip("/") for p in s.prefixes) or ("",)
    if s.type == "fs":
        return DataSource(FileSystemStorage(s.root), roots, "fs")
    from local_s3.server import resolve_s3
    from pipelines.storage.s3 import safe_url

    target = resolve_s3(s.endpoint_url, s.bucket, s.region, LOCAL_S3_STATE)
    if not target.bucket:
        raise ConfigError(
            "storage.bucket must be set for storage.type s3 (config, S3_BUCKET=..., or "
            "`make s3-up` for the local server)"
        )
    common = dict(
        endpoint_url=target.endpoint, region=target.region, addressing_style=s.addressing_style
    )
    if s.client_lib == "s3dlio":
        from pipelines.storage.s3dlio_storage import S3dlioStorage

        storage = S3dlioStorage(target.bucket, max_attempts=s.max_attempts,
                                credentials_file=target.credentials_file, **common)  # fmt: skip
        credentials = (
            f"the local server's keys ({target.credentials_file}), for s3dlio's client only"
            if target.credentials_file is not None
            else "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        )
    elif s.client_lib == "s3torchconnector":
        from pipelines.storage.s3_connector import S3ConnectorStorage

        if target.credentials_file is not None:
            _local_keys_into_environment(target.credentials_file)
        storage = S3ConnectorStorage(target.bucket, max_attempts=s.max_attempts, **common)
        credentials = "the CRT's default chain (environment, profile, instance role)"
    else:
        from pipelines.storage.s3 import S3Storage

        storage = S3Storage(
            target.bucket,
            # at least one connection per concurrent read of the objects pattern
            max_pool_connections=max(s.max_pool_connections, cfg.access.concurrency),
            max_attempts=s.max_attempts,
            connect_timeout_s=s.connect_timeout_s,
            read_timeout_s=s.read_timeout_s,
            list_workers=s.list_workers,
            credentials_file=target.credentials_file,
            **common,
        )
        credentials = storage.credentials_source()
    log.info(
        "S3 endpoint %s (from %s); credentials: %s",
        safe_url(target.endpoint) if target.endpoint else "AWS",
        target.source,
        credentials,
    )
    return DataSource(storage, roots, "s3")


def _local_keys_into_environment(env_file: Path) -> None:
    """Put the local server's keys in the environment for s3torchconnector (it reads only there).

    Set when the environment has none, accepted when it has the same.

    Raises:
        ConfigError: the environment holds other keys or a session token (never replaced).
    """
    from pipelines.storage.env_file import keys_for_environment

    keys = keys_for_environment(env_file)
    if keys is None:
        raise ConfigError(
            "the local S3 server of `make s3-up` is running and no endpoint was named, but "
            "AWS_ACCESS_KEY_ID (or AWS_SESSION_TOKEN) holds other keys and storage.client_lib "
            "s3torchconnector reads "
            "credentials from the environment only: name the endpoint (S3_ENDPOINT=...) to "
            f"use those keys, or load the server's ({env_file}) into the environment"
        )
    for name, value in keys.items():
        os.environ.setdefault(name, value)
