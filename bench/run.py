"""`make bench`: run the matrix on the filesystem and S3, with baselines and peers, then report.

Order of work: prepare the data on every storage (shards written once; a local S3 server started
and filled when ``s3`` is asked for without an endpoint), measure the raw baselines, run each
configuration for ``bench.passes`` passes (the first cold, the rest warm), measure the peers,
then write ``results.csv``, ``steps.csv``, ``report.md``, the plots and the config used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.baselines import evict_page_cache, fs_read_baseline, s3_get_baseline
from bench.runner import expand_matrix, run_case
from pipelines.records import Record
from pipelines.shards import ShardInfo
from training.config import Config, ConfigError
from training.data import DataSource, class_names, load_split, open_storage, split_shards

log = logging.getLogger(__name__)

#: The bucket a local server gets for the run.
LOCAL_BUCKET = "dss-bench"


@dataclass
class Prepared:
    """One storage (and client library) ready to be read by the matrix.

    Attributes:
        source: the opened storage and dataset roots.
        records: the split's records (image keys in this storage).
        shards: the split's shards in this storage.
        local_dir: the folder on this machine that the keys are relative to (the fs root, or
            the local S3 server's bucket folder) whose page cache can be evicted for a cold
            pass; None when the storage is remote.
    """

    source: DataSource
    records: list[Record]
    shards: list[ShardInfo]
    local_dir: Path | None


def prepare_fs(cfg: Config) -> Prepared:
    """The filesystem dataset of ``storage.root`` / ``storage.prefixes``, its shards written
    when missing."""
    fs_cfg = replace(cfg, storage=replace(cfg.storage, type="fs"))
    source = open_storage(fs_cfg)
    records, _ = load_split(source, fs_cfg, cfg.dataset.train_split)
    _, shards, _ = split_shards(source, fs_cfg, cfg.dataset.train_split, records)
    return Prepared(source, records, shards, Path(cfg.storage.root))


def start_local_s3(cfg: Config, stack: contextlib.ExitStack, out: Path) -> tuple[Config, Path]:
    """Start a local S3 server for the run and upload the dataset folder to it.

    The copy of ``<storage.root>/<first prefix>`` (images, annotations, splits and shards)
    lands under ``s3://dss-bench/<first prefix>/``; the server stops when ``stack`` closes. Its
    credentials go into this process's environment, where the standard AWS chain reads them.

    Returns:
        ``(cfg pointing at the server, the server's folder behind the bucket)``.
    """
    from pipelines.s3 import S3Storage
    from pipelines.s3_local import local_s3, upload_tree

    server_dir = out / "s3-server"
    stack.callback(shutil.rmtree, server_dir, ignore_errors=True)  # after the server stopped
    server = stack.enter_context(local_s3(server_dir))
    for name, value in server.env(LOCAL_BUCKET).items():
        os.environ[name] = value
    prefix = cfg.storage.prefixes[0]
    uploader = S3Storage(LOCAL_BUCKET, prefix, endpoint_url=server.endpoint)
    uploader.client().create_bucket(Bucket=LOCAL_BUCKET)
    folder = Path(cfg.storage.root) / prefix
    print(f"local S3 server {server.endpoint}: uploading {folder}")
    upload_tree(folder, uploader, progress=True)
    storage = replace(
        cfg.storage, endpoint_url=server.endpoint, bucket=LOCAL_BUCKET, prefixes=[prefix]
    )
    return replace(cfg, storage=storage), Path(server.data_dir) / LOCAL_BUCKET


def prepare_s3(cfg: Config, client_lib: str, local_dir: Path | None) -> Prepared:
    """The S3 dataset as ``cfg.storage`` names it, read with ``client_lib``."""
    s3_cfg = replace(cfg, storage=replace(cfg.storage, type="s3", client_lib=client_lib))
    source = open_storage(s3_cfg)
    records, _ = load_split(source, s3_cfg, cfg.dataset.train_split)
    _, shards, _ = split_shards(source, s3_cfg, cfg.dataset.train_split, records)
    return Prepared(source, records, shards, local_dir)


def case_keys(prepared: Prepared, access: str) -> list[str]:
    """The storage keys ``access`` reads: the shards, or the images."""
    if access == "shards":
        return [s.key for s in prepared.shards]
    return [r.image_key for r in prepared.records]


def case_files(prepared: Prepared, access: str) -> list[Path]:
    """The local files behind what ``access`` reads (for page-cache eviction)."""
    if prepared.local_dir is None:
        return []
    return [prepared.local_dir / key for key in case_keys(prepared, access)]


def cache_state(prepared: Prepared, access: str, pass_index: int) -> str:
    """Make pass 0 cold where possible; return the label for the results."""
    if pass_index > 0:
        return "warm"
    files = case_files(prepared, access)
    if files and evict_page_cache(files):
        return "cold (page cache evicted)"
    return "cold (first pass; cache not evicted)"


def measure_baseline(prepared: Prepared, storage_kind: str, access: str, cfg: Config, cold: bool):
    """The raw read of the same objects: ``cat`` over files (fs), a boto3 GET pool (s3)."""
    if storage_kind == "fs":
        return fs_read_baseline(case_files(prepared, access), cold=cold)
    from pipelines.s3 import S3Storage

    storage = prepared.source.storage
    if not isinstance(storage, S3Storage):
        return None  # the GET-pool baseline is boto3's; s3torchconnector rows reuse boto3's
    if cold and prepared.local_dir is not None:
        evict_page_cache(case_files(prepared, access))
    threads = min(cfg.access.concurrency, storage.max_pool_connections)
    return s3_get_baseline(storage, case_keys(prepared, access), threads=threads)


def run_bench(cfg: Config, out: Path) -> tuple[list[dict], list[dict], dict]:
    """Run the whole matrix; returns ``(results rows, step rows, extras)`` (see module doc).

    ``extras`` holds the baselines and peers measured, for the report.
    """
    from bench.peers import imagefolder_peer, s3torchconnector_peer

    if "train" in cfg.bench.modes and not cfg.bench.decode:
        raise ConfigError(
            "bench.modes has train but bench.decode is false: training needs decoded images"
        )
    cases = expand_matrix(cfg)
    results, steps = [], []
    baselines: dict[tuple, object] = {}
    peers: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        prepared: dict[tuple[str, str], Prepared] = {}
        s3_cfg, s3_dir = cfg, None
        local_s3 = "s3" in cfg.bench.storages and not (
            cfg.storage.endpoint_url or os.environ.get("S3_ENDPOINT")
        )
        if "fs" in cfg.bench.storages or local_s3:
            prepared[("fs", "-")] = prepare_fs(cfg)  # writes the shards the upload then carries
        if local_s3:
            s3_cfg, s3_dir = start_local_s3(cfg, stack, out)
        for case in cases:
            key = (case.storage, case.client_lib)
            if key not in prepared:
                prepared[key] = prepare_s3(s3_cfg, case.client_lib, s3_dir)
        first = next(iter(prepared.values()))
        classes = class_names(cfg, first.records)

        if cfg.bench.baselines:
            for (storage_kind, _lib), prep in prepared.items():
                if storage_kind not in cfg.bench.storages:
                    continue
                for kind in sorted(
                    {"shards" if c.access == "shards" else "objects" for c in cases}
                ):
                    access = "shards" if kind == "shards" else "random"
                    for cold in (True, False):
                        result = measure_baseline(prep, storage_kind, access, cfg, cold)
                        if result is not None:
                            baselines[(storage_kind, kind, cold)] = result

        for case in cases:
            prep = prepared[(case.storage, case.client_lib)]
            for pass_index in range(cfg.bench.passes):
                cache = cache_state(prep, case.access, pass_index)
                row, case_steps = run_case(
                    case, cfg, prep.source.storage, prep.records,
                    prep.shards if case.access == "shards" else None, classes,
                    pass_index=pass_index,
                )  # fmt: skip
                kind = "shards" if case.access == "shards" else "objects"
                base = baselines.get((case.storage, kind, pass_index == 0))
                row.update(
                    config=case.name, mode=case.mode, access=case.access, storage=case.storage,
                    client_lib=case.client_lib, workers=case.workers, cache=cache,
                    baseline_mbps=getattr(base, "mbps", float("nan")),
                    baseline_objects_per_s=getattr(base, "objects_per_s", float("nan")),
                )  # fmt: skip
                row["pass"] = pass_index
                results.append(row)
                steps.extend({**s, "pass": pass_index} for s in case_steps)

        if cfg.bench.peers:
            workers = (cfg.bench.worker_counts or [cfg.loader.num_workers])[0]
            common = dict(
                batch_size=cfg.loader.batch_size, num_workers=workers,
                image_size=cfg.model.image_size, max_batches=cfg.bench.read_steps,
            )  # fmt: skip
            if "fs" in cfg.bench.storages:
                fs_prep = prepared[("fs", "-")]
                paths = case_files(fs_prep, "random")
                peers["fs/random"] = imagefolder_peer(paths, **common)
            for (storage_kind, lib), prep in prepared.items():
                if storage_kind != "s3" or lib != "boto3":
                    continue
                storage = prep.source.storage
                keys = [storage._key(r.image_key) for r in prep.records]
                for kind, access in (("map", "random"), ("iterable", "objects")):
                    peers[f"s3/{access}"] = s3torchconnector_peer(
                        kind, storage.bucket, keys, endpoint=storage.endpoint_url,
                        region=storage.region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        **common,
                    )  # fmt: skip
    add_ratios(results, peers if cfg.bench.decode else {})  # peers decode: compare like with like
    return results, steps, {"baselines": baselines, "peers": peers}


def add_ratios(results: list[dict], peers: dict) -> None:
    """``ratio_to_baseline`` (MB/s over the baseline's MB/s) and ``ratio_to_peer`` (samples/s
    of the warm ``read`` row over the peer's samples/s) for every row that has a comparison.
    Peers always decode, so runs with ``bench.decode: false`` pass no peers."""
    for row in results:
        base = row.get("baseline_mbps", float("nan"))
        row["ratio_to_baseline"] = (
            row["throughput_mbps"] / base if base and base == base else float("nan")
        )
        peer = peers.get(f"{row['storage']}/{row['access']}")
        if peer is not None and row["mode"] == "read" and row["cache"] == "warm":
            row["peer_samples_per_s"] = peer.samples_per_s
            row["ratio_to_peer"] = row["samples_per_s"] / peer.samples_per_s
        else:
            row["peer_samples_per_s"] = float("nan")
            row["ratio_to_peer"] = float("nan")


def timestamp() -> str:
    """``YYYYmmdd-HHMMSS`` in local time, for the run's folder name."""
    return time.strftime("%Y%m%d-%H%M%S")
