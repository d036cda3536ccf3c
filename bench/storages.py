"""The storages a benchmark run reads: the dataset prepared on each, and what each pattern reads.

Preparing lists the split and writes its shards once; on S3 without an endpoint, a local server is
started and filled, its endpoint and keys shared with every rank. What each access pattern reads
serves the raw baselines and the cold passes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bench.page_cache import evict_page_cache
from bench.ranks import (
    BenchRanks,
    main_process_first,
    on_main,
)
from common.settings import replace
from pipelines.formats.records import Record
from pipelines.shards.manifest import ShardInfo
from training import distributed
from training.config import Config, ConfigError
from training.data import load_split, split_shards
from training.source import DataSource, open_storage

if TYPE_CHECKING:
    from pipelines.storage.s3 import S3Storage

log = logging.getLogger(__name__)


#: The bucket a local server gets for the run.
LOCAL_BUCKET = "dss-bench"


T = TypeVar("T")


@dataclass
class PreparedStorage:
    """One storage (and client library) ready to be read by the matrix.

    Attributes:
        source: the opened storage and dataset roots.
        records: the split's records (image keys in this storage).
        shards: the split's shards in this storage.
        local_dir: the folder on this machine the keys are relative to (the fs root, or the local S3
            server's bucket folder), whose page cache can be evicted for a cold pass; None when the
            storage is remote.
    """

    source: DataSource
    records: list[Record]
    shards: list[ShardInfo]
    local_dir: Path | None


def readers(cfg: Config) -> int:
    """The most readers (ranks x DataLoader workers) a run's shards serve at once.

    ``bench.ranks`` x ``bench.worker_counts`` (else ``loader.num_workers``) for a benchmark; the
    automatic shard size gives each of them shards (:func:`training.data.split_shards`).
    """
    bench = getattr(cfg, "bench", None)
    workers = [cfg.loader.num_workers, *(bench.worker_counts if bench else [])]
    return max(bench.ranks if bench else [1], default=1) * max(*workers, 1)


def prepare_fs(cfg: Config, *, shards: bool = True) -> PreparedStorage:
    """The filesystem dataset of ``storage.root`` / ``storage.prefixes``, missing shards written.

    Shards only when ``shards`` (an access pattern of the run reads them).
    """
    fs_cfg = replace(cfg, storage=replace(cfg.storage, type="fs"))
    source = open_storage(fs_cfg)
    records, _ = load_split(source, fs_cfg, cfg.dataset.train_split)
    found = (
        split_shards(source, fs_cfg, cfg.dataset.train_split, records, readers=readers(cfg))[1]
        if shards
        else []
    )
    return PreparedStorage(source, records, found, Path(cfg.storage.root))


def start_local_bucket(
    stack: contextlib.ExitStack, out: Path, *, etag_hash: str = "MD5"
) -> tuple[str, Path, dict[str, str]]:
    """Start a local S3 server for the run with an empty bucket :data:`LOCAL_BUCKET`.

    The server keeps its data in ``out/s3-server``; it stops and that folder goes when ``stack``
    closes. Its credentials go into this process's environment (read by the standard AWS chain:
    boto3 and s3torchconnector's CRT) until then. ``etag_hash``: see
    :func:`local_s3.server.start_server` (``""``: no ETags, for large objects read in parallel
    ranges).

    Returns:
        ``(endpoint URL, the server's folder behind the bucket, the environment variables set)``.

    Raises:
        local_s3.server.LocalS3Error: the server did not start.
    """
    from local_s3.server import local_s3
    from pipelines.storage.s3 import S3Storage

    server_dir = out / "s3-server"
    stack.callback(shutil.rmtree, server_dir, ignore_errors=True)  # after the server stopped
    server = stack.enter_context(local_s3(server_dir, etag_hash=etag_hash))
    env = server.env(LOCAL_BUCKET)
    set_environment(env, stack)
    S3Storage(LOCAL_BUCKET, endpoint_url=server.endpoint).client().create_bucket(
        Bucket=LOCAL_BUCKET
    )
    return server.endpoint, Path(server.data_dir) / LOCAL_BUCKET, env


def start_local_s3(
    cfg: Config, stack: contextlib.ExitStack, out: Path, *, shards: bool = True
) -> tuple[Config, Path, dict[str, str]]:
    """Start a local S3 server (:func:`start_local_bucket`) and upload the dataset to it.

    The copy of ``<storage.root>/<first prefix>`` (images, annotations, splits, and the shards
    folder ``dataset.shards_prefix`` when ``shards``) lands under ``s3://dss-bench/<first
    prefix>/``.

    Returns:
        ``(cfg pointing at the server, the server's folder behind the bucket, the environment
        variables set)``.
    """
    from datagen.upload import upload_tree
    from pipelines.storage.s3 import S3Storage

    endpoint, bucket_dir, env = start_local_bucket(stack, out)
    prefix = cfg.storage.prefixes[0]
    uploader = S3Storage(LOCAL_BUCKET, prefix, endpoint_url=endpoint)
    folder = Path(cfg.storage.root) / prefix
    print(f"local S3 server {endpoint}: uploading {folder}")
    skip = () if shards else (cfg.dataset.shards_prefix,)
    upload_tree(folder, uploader, progress=True, exclude=skip)
    storage = replace(cfg.storage, endpoint_url=endpoint, bucket=LOCAL_BUCKET, prefixes=[prefix])
    return replace(cfg, storage=storage), bucket_dir, env


def share_local_s3(
    start: Callable[[], tuple[T, Path, dict[str, str]]],
    bench_ranks: BenchRanks,
    stack: contextlib.ExitStack,
) -> tuple[T, Path]:
    """Start a local S3 server on rank 0 with ``start``; share its result and credentials with all.

    ``start`` is :func:`start_local_s3` or :func:`start_local_bucket`; every rank gets what it
    returned, and the server's endpoint and credentials in its environment until ``stack`` closes.

    Returns:
        ``start``'s first two values.

    Raises:
        ConfigError: on several nodes (the server listens on 127.0.0.1 of rank 0's machine).
        Exception: on every rank when the server could not be started or filled.
    """
    if bench_ranks.nodes > 1:
        raise ConfigError(
            "a local S3 server is reachable from its own machine only; with several nodes set "
            "storage.endpoint_url (S3_ENDPOINT) to the S3 endpoint every node can reach"
        )
    value, folder, env = on_main(start, bench_ranks.ranks)
    if not bench_ranks.ranks.main:  # rank 0's start set its own
        set_environment(env, stack)
    return value, folder


def set_environment(env: dict[str, str], stack: contextlib.ExitStack) -> None:
    """Put ``env`` into this process's environment until ``stack`` closes, then restore it."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)

    def restore() -> None:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    stack.callback(restore)


def prepare_s3(
    cfg: Config, client_lib: str, local_dir: Path | None, *, shards: bool = True
) -> PreparedStorage:
    """The S3 dataset ``cfg.storage`` names, read with ``client_lib`` (shards if ``shards``)."""
    s3_cfg = replace(cfg, storage=replace(cfg.storage, type="s3", client_lib=client_lib))
    source = open_storage(s3_cfg)
    records, _ = load_split(source, s3_cfg, cfg.dataset.train_split)
    found = (
        split_shards(source, s3_cfg, cfg.dataset.train_split, records, readers=readers(cfg))[1]
        if shards
        else []
    )
    return PreparedStorage(source, records, found, local_dir)


class Storages:
    """The storages a run reads, each prepared when first asked for, on every rank alike.

    The filesystem is prepared at once when the run reads it or fills a local S3 server from it; S3
    when its first configuration comes, after the filesystem's (a failure there then loses none of
    them): a local S3 server is started and filled when no endpoint is configured (rank 0's
    environment decides), then each client library is opened.

    Args:
        cfg: the run's config (``storage.*``, ``dataset.*``).
        out: the run's folder (a local server keeps its data there).
        bench_ranks: the ranks (:class:`bench.ranks.BenchRanks`).
        stack: closes the local server.
        kinds: the storage kinds the run reads (``fs``, ``s3``).
        client_libs: the S3 client libraries it reads with.
        stop: raise a storage's failure (``bench.on_error: stop``) instead of keeping it for
            :meth:`get` to raise for each configuration of that storage.
        shards: whether an access pattern of the run reads shards (else none are written or
            uploaded).
    """

    def __init__(
        self, cfg, out, bench_ranks, stack, kinds, client_libs, *, stop: bool, shards=True
    ):
        self.cfg, self.out, self.bench_ranks, self.stack, self.stop = (
            cfg,
            out,
            bench_ranks,
            stack,
            stop,
        )
        self.shards = shards
        self.client_libs = list(dict.fromkeys(client_libs))
        self.prepared: dict[tuple[str, str], PreparedStorage] = {}
        self.unprepared: dict[tuple[str, str], Exception] = {}
        self.s3_cfg: Config | None = None  # S3 as prepared (a local server's endpoint, bucket)
        self.baseline_s3: S3Storage | None = None  # boto3, when no configuration uses it
        endpoint = cfg.storage.endpoint_url or os.environ.get("S3_ENDPOINT")
        self.local_s3 = distributed.gather("s3" in kinds and not endpoint)[0]
        if "fs" in kinds or self.local_s3:
            self._prepare(("fs", "-"), lambda: prepare_fs(cfg, shards=shards))

    def get(self, kind: str, client_lib: str) -> PreparedStorage:
        """The prepared storage (``client_lib`` ``-`` for fs); preparing S3 the first time.

        Raises:
            Exception: why it could not be prepared (on every rank alike).
        """
        key = (kind, client_lib)
        if key not in self.prepared and key not in self.unprepared:
            try:
                self._prepare_s3()
            except Exception as exc:  # the local server: every S3 storage fails
                if self.stop:
                    raise
                for lib in self.client_libs:
                    self.unprepared.setdefault(("s3", lib), exc)
        if key in self.unprepared:
            raise self.unprepared[key]
        return self.prepared[key]

    def boto3(self) -> S3Storage | None:
        """The boto3 S3 storage of the GET-pool baseline, for every client library.

        The prepared one when boto3 is among ``client_libs``; else one opened over the same
        bucket and prefixes (no listing). None before S3 was prepared, or when it could not be.
        """
        from pipelines.storage.s3 import S3Storage

        for target in self.prepared.values():
            if isinstance(target.source.storage, S3Storage):
                return target.source.storage
        if self.s3_cfg is None or not any(k == "s3" for k, _ in self.prepared):
            return None
        if self.baseline_s3 is None:
            storage = replace(self.s3_cfg.storage, type="s3", client_lib="boto3")
            self.baseline_s3 = open_storage(replace(self.s3_cfg, storage=storage)).storage
        return self.baseline_s3

    def _prepare(self, key: tuple[str, str], fn) -> None:
        """Prepare one storage, rank 0 first (it writes what is missing)."""
        try:
            self.prepared[key] = main_process_first(fn, self.bench_ranks.ranks)
        except Exception as exc:
            if self.stop:
                raise
            self.unprepared[key] = exc

    def _prepare_s3(self) -> None:
        """Start and fill a local S3 server when there is no endpoint, then open every client
        library's storage."""
        s3_cfg, s3_dir = self.cfg, None
        if self.local_s3:
            s3_cfg, s3_dir = share_local_s3(
                lambda: start_local_s3(self.cfg, self.stack, self.out, shards=self.shards),
                self.bench_ranks,
                self.stack,
            )
        self.s3_cfg = s3_cfg
        for lib in self.client_libs:
            self._prepare(
                ("s3", lib), lambda lib=lib: prepare_s3(s3_cfg, lib, s3_dir, shards=self.shards)
            )


def case_keys(prepared: PreparedStorage, access: str) -> list[str]:
    """The storage keys ``access`` reads: the shards, or the images."""
    if access == "shards":
        return [s.key for s in prepared.shards]
    return [r.image_key for r in prepared.records]


def case_files(prepared: PreparedStorage, access: str) -> list[Path]:
    """The local files behind what ``access`` reads (for page-cache eviction)."""
    if prepared.local_dir is None:
        return []
    return [prepared.local_dir / key for key in case_keys(prepared, access)]


def cold_dir(prepared: PreparedStorage, access: str) -> Path | None:
    """Prepare a cold pass: flush and evict the files ``access`` reads from the page cache.

    Returns:
        The folder they live in when that worked (every read of the pass then evicts its file first:
        :class:`bench.page_cache.EvictBeforeRead`); None for a remote storage or a platform without
        ``posix_fadvise``.
    """
    files = case_files(prepared, access)
    if files and evict_page_cache(list(dict.fromkeys(files))):
        return prepared.local_dir
    return None
