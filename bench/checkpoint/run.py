"""`make checkpoint-bench`: how fast a storage takes and gives back a training job's checkpoint.

Every rank of one launch holds its part (:mod:`bench.checkpoint.parts`). For each storage and
method, ``checkpoint.checkpoints`` times: the ranks write their parts at once, the checkpoint is
made cold (one rank per node evicts its files), the ranks read their parts back at once with new
clients and compare every byte, and the checkpoint is deleted. A failure on any rank ends that
storage and method on every rank with one error row (:mod:`bench.ranks`); the run goes on. Figures
as MLPerf Storage v2.0 reports them (``Submission_guidelines.md`` §2.2.3: duration the slowest
rank's, throughput the lowest rank's; DLIO's job figure: bytes over that duration), per checkpoint
and averaged. Writes ``results.csv`` (a row per checkpoint, rank, storage, method and direction;
after each method), ``report.md`` and the config. Checkpoints go to a new folder or prefix of the
run (``<timestamp>-<random>``) under ``checkpoint.fs_dir`` (default
``<storage.root>/checkpoint-bench``) and ``s3://<bucket>/<checkpoint.s3_prefix>/``, removed at the
end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import psutil

from bench.checkpoint.config import CheckpointBenchConfig
from bench.checkpoint.dcp import dcp_read, dcp_storage, dcp_write
from bench.checkpoint.parts import (
    FsLocation,
    S3Location,
    Transfer,
    make_cold,
    model_parts,
    part_bytes,
    random_part,
    read,
    remove,
    write,
)
from bench.checkpoint.report import RESULT_COLUMNS, client_lib, progress_line, source_text
from bench.ranks import BenchRanks, attempt, error_text, everywhere, gather_agreed, on_main
from bench.storages import LOCAL_BUCKET, share_local_s3, start_local_bucket
from training import distributed
from training.config import ConfigError
from training.distributed import Ranks
from training.outputs import write_csv

log = logging.getLogger(__name__)


#: Why s3torchconnector's and s3dlio's writers do not run against the local server (measured with
#: rclone 1.75.2: the CRT log says "Could not find upload-id in create-multipart-upload response";
#: s3dlio 0.10.0: "CreateMultipartUpload failed ... service error: unknown ... HTTP 200 OK").
LOCAL_SERVER_NO_MULTIPART = (
    "the local server (rclone serve s3) answers CreateMultipartUpload with an "
    "<InitiateMultipartUpload> element, not S3's <InitiateMultipartUploadResult>, which the CRT "
    "client of s3torchconnector and s3dlio reject (boto3 accepts it); set S3_ENDPOINT to MinIO, "
    "DSS or AWS to run {method} on S3"
)


def not_run_because(kind: str, method: str, location) -> str:
    """Why ``method`` is not run on ``kind`` here, or ``""``.

    s3dlio is an S3 method; dcp and s3dlio write in multipart uploads the local server cannot take.
    """
    if method == "s3dlio" and kind == "fs":
        return "s3dlio is an S3 client (its torch.save objects are S3's; fs has torch.save)"
    if kind == "s3" and method in ("dcp", "s3dlio") and location.local_dir is not None:
        return LOCAL_SERVER_NO_MULTIPART.format(method=method)
    return ""


#: What each rank holds at most during a read, in parts: its part, the bytes read back
#: (torch.save on S3) and the tensors loaded from them.
PARTS_IN_MEMORY = 3


def run_checkpoint_bench(cfg: CheckpointBenchConfig, out: Path, ranks: Ranks) -> list[dict]:
    """Run the workload (see the module doc); every rank calls it.

    Rank 0 gets the rows (and writes ``results.csv`` after each method), the others an empty list.

    Raises:
        ConfigError: ``checkpoint.ranks`` is not this launch's world size, a part would not fit in
            memory, or ``checkpoint.model`` is not a training run (on every rank).
    """
    ck = cfg.checkpoint
    if ck.ranks != ranks.world_size:
        raise ConfigError(
            f"checkpoint.ranks is {ck.ranks} but this launch has {ranks.world_size} rank(s): "
            "make checkpoint-bench NPROC=N sets it to N x NNODES"
        )
    bench_ranks = BenchRanks(ranks, [ranks.world_size])
    first_on_node = bench_ranks.subset(ranks.world_size).first_on_node(
        ranks.rank, bench_ranks.node_of
    )
    on_main(lambda: out.mkdir(parents=True, exist_ok=True), ranks)
    # free memory measured by every rank before any allocates its part
    free = distributed.gather(psutil.virtual_memory().available)
    part = everywhere(lambda: this_part(cfg, ranks, bench_ranks, free))
    nbytes = distributed.gather(part_bytes(part))
    if ranks.main:
        print(
            f"checkpoint of {sum(nbytes) / 1e9:.3f} GB over {ranks.world_size} rank(s) "
            f"({source_text(cfg)}), {ck.checkpoints} checkpoint(s) per storage and method"
        )
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        for kind in ck.storages:
            try:
                location = open_location(kind, cfg, out, stack, bench_ranks, first_on_node)
            except Exception as exc:  # noqa: BLE001 - agreed on every rank: rows say why; go on
                rows.extend(error_row(kind, m, 1, exc) for m in ck.methods)
                _say(ranks, f"{kind}: {error_text(exc)}")
                continue
            for method in ck.methods:
                why = not_run_because(kind, method, location)
                if why:
                    rows.append(skipped_row(kind, method, why))
                    _say(ranks, f"{kind} {method}: not run: {why}")
                    continue
                rows.extend(
                    run_method(kind, method, location, part, cfg, bench_ranks, first_on_node)
                )
                if ranks.main:
                    save_rows(out, rows)
        distributed.barrier(long=True)  # every rank done before the folders and server go
    return rows if ranks.main else []


def save_rows(out: Path, rows: list[dict]) -> None:
    """Write ``results.csv`` so far (rank 0, after each method); a failure is only a warning."""
    try:
        write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    except OSError as exc:
        log.warning("cannot write %s: %s", out / "results.csv", exc)


def this_part(
    cfg: CheckpointBenchConfig, ranks: Ranks, bench_ranks: BenchRanks, free: list[int]
) -> dict:
    """This rank's share of ``checkpoint.size_gb`` of random tensors or of ``checkpoint.model``.

    ``free``: every rank's free memory in bytes, measured before any part was made (the least on
    this node counts).

    Raises:
        ConfigError: the ranks on this node would not hold their parts in memory, or
            ``checkpoint.model`` is not a training run's folder.
    """
    ck = cfg.checkpoint
    if ck.model:
        return model_parts(ck.model, ranks.world_size)[ranks.rank]
    total = int(ck.size_gb * 1e9)
    nbytes = total // ranks.world_size + (ranks.rank < total % ranks.world_size)
    node = bench_ranks.node_of[ranks.rank]
    here = bench_ranks.node_of.count(node)
    available = min(f for r, f in enumerate(free) if bench_ranks.node_of[r] == node)
    needed = PARTS_IN_MEMORY * nbytes * here
    if needed > 0.9 * available:
        raise ConfigError(
            f"checkpoint.size_gb={ck.size_gb:g} needs about {needed / 1e9:.1f} GB of memory on "
            f"this node ({here} rank(s), each holding its part, the bytes read back and the "
            f"tensors loaded) but {available / 1e9:.1f} GB is available: lower SIZE_GB, or "
            "spread the ranks over more nodes"
        )
    return random_part(nbytes, ranks.rank)


def open_location(
    kind: str,
    cfg: CheckpointBenchConfig,
    out: Path,
    stack: contextlib.ExitStack,
    bench_ranks: BenchRanks,
    first_on_node: bool,
) -> FsLocation | S3Location:
    """Where the run's checkpoints go on ``kind``: a new folder or prefix, removed at the end.

    A folder under ``checkpoint.fs_dir`` (removed by one rank per node), or a prefix under
    ``checkpoint.s3_prefix`` of the same new name (``<run folder's name>-<random>``, removed by rank
    0) when ``stack`` closes. For S3, rank 0's settings decide (``storage.*``, else ``S3_ENDPOINT``,
    ``S3_BUCKET``); without an endpoint a local server is started for the run. Every rank calls it;
    it fails on every rank alike.

    Raises:
        ConfigError: S3 without a bucket, or several nodes without an S3 endpoint.
        Exception: the folder cannot be made, the local server did not start.
    """
    if kind == "fs":
        return _fs_location(cfg, out, stack, bench_ranks, first_on_node)
    return _s3_location(cfg, out, stack, bench_ranks)


def _fs_location(
    cfg: CheckpointBenchConfig,
    out: Path,
    stack: contextlib.ExitStack,
    bench_ranks: BenchRanks,
    first_on_node: bool,
) -> FsLocation:
    """:func:`open_location` on the filesystem: a folder named by rank 0, made on every node."""
    ck = cfg.checkpoint
    fs_dir = Path(ck.fs_dir or Path(cfg.storage.root) / "checkpoint-bench")

    def new_name() -> str:
        fs_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{out.name}-", dir=fs_dir)).name

    root = fs_dir / on_main(new_name, bench_ranks.ranks)
    everywhere(lambda: root.mkdir(parents=True, exist_ok=True))  # nodes without a shared fs
    if first_on_node:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
    return FsLocation(root)


def _s3_location(
    cfg: CheckpointBenchConfig,
    out: Path,
    stack: contextlib.ExitStack,
    bench_ranks: BenchRanks,
) -> S3Location:
    """:func:`open_location` on S3: a new prefix on rank 0's endpoint and bucket.

    A local server is started for the run when there is no endpoint; rank 0 removes the prefix when
    ``stack`` closes.
    """
    from pipelines.storage.s3 import S3Storage

    ck = cfg.checkpoint
    endpoint, bucket, region = _s3_settings(cfg)
    name = f"{out.name}-{os.urandom(4).hex()}"
    prefix = "/".join(
        p for p in (ck.s3_prefix.strip("/"), on_main(lambda: name, bench_ranks.ranks)) if p
    )
    local_dir = None
    if not endpoint:
        # no ETags: rclone would hash the whole object for every ranged GET of a read
        start = functools.partial(start_local_bucket, stack, out, etag_hash="")
        endpoint, bucket_dir = share_local_s3(start, bench_ranks, stack)
        bucket, local_dir = LOCAL_BUCKET, bucket_dir / prefix
        _say(bench_ranks.ranks, f"local S3 server {endpoint}")
    elif not bucket:
        raise ConfigError(
            "checkpoint-bench on S3 needs a bucket: storage.bucket or S3_BUCKET (without an "
            "endpoint, a local server is started for the run)"
        )
    storage = everywhere(
        lambda: S3Storage(
            bucket,
            prefix,
            endpoint_url=endpoint,
            region=region,
            addressing_style=cfg.storage.addressing_style,
            max_attempts=cfg.storage.max_attempts,
            connect_timeout_s=cfg.storage.connect_timeout_s,
            read_timeout_s=cfg.storage.read_timeout_s,
        )
    )
    location = S3Location(storage, region, local_dir)
    if bench_ranks.ranks.main:
        stack.callback(remove_all, location)
    return location


def _s3_settings(cfg: CheckpointBenchConfig) -> tuple[str | None, str | None, str]:
    """Rank 0's S3 endpoint, bucket and region (``storage.*``, else the environment), everywhere."""
    return distributed.gather(
        (
            cfg.storage.endpoint_url or os.environ.get("S3_ENDPOINT"),
            cfg.storage.bucket or os.environ.get("S3_BUCKET"),
            cfg.storage.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
    )[0]


def run_method(
    kind: str,
    method: str,
    location: FsLocation | S3Location,
    part: dict,
    cfg: CheckpointBenchConfig,
    bench_ranks: BenchRanks,
    first_on_node: bool,
) -> list[dict]:
    """Write, make cold, read back, compare and delete ``checkpoint.checkpoints`` of ``method``.

    Every rank calls it; rank 0's rows are the result. A failure on any rank stops the method on
    every rank, with one error row; what was measured before it stays.
    """
    ranks = bench_ranks.ranks
    rows: list[dict] = []
    for index in range(1, cfg.checkpoint.checkpoints + 1):
        where = location.describe(method, index)
        try:
            call = functools.partial(_transfer, method, location, index, ranks.rank, part, cfg)
            writer = everywhere(functools.partial(_dcp_storage, method, location, index, cfg, True))
            distributed.barrier(long=True)  # the ranks start each direction together
            writes = gather_agreed(*attempt(call(write, writer)))
            cold = functools.partial(make_cold, location, method, index)
            caches = gather_agreed(*attempt(cold if first_on_node else lambda: None))
            cache = next(c for c in caches if c is not None)
            reader = everywhere(
                functools.partial(_dcp_storage, method, location, index, cfg, False)
            )
            distributed.barrier(long=True)
            reads = gather_agreed(*attempt(call(read, reader)))
        except Exception as exc:  # noqa: BLE001 - agreed on every rank: one row, next method
            rows.append(error_row(kind, method, index, exc, where))
            _say(ranks, f"{kind} {method} checkpoint {index}: {error_text(exc)}")
            break
        finally:
            _cleanup(location, method, index, ranks, first_on_node)
        new = [
            transfer_row(kind, method, index, rank, direction, t, cache, where)
            for direction, transfers in (("write", writes), ("read", reads))
            for rank, t in enumerate(transfers)
        ]
        rows.extend(new)
        if ranks.main:
            print(progress_line(kind, method, index, cfg.checkpoint.checkpoints, new))
    return rows


def _transfer(
    method: str,
    location,
    index: int,
    rank: int,
    part: dict,
    cfg: CheckpointBenchConfig,
    direction,
    dcp_io,
):
    """This rank's write or read of checkpoint ``index``, as a call for :func:`bench.ranks.attempt`.

    ``direction`` is :func:`bench.checkpoint.parts.write` or ``read``; ``dcp`` goes through its
    storage writer or reader ``dcp_io``, made in an agreed step before so that a failure there
    reaches the other ranks before DCP's collectives.
    """
    if method == "dcp":
        call = dcp_write if direction is write else dcp_read
        return functools.partial(call, location, index, part, dcp_io)
    return functools.partial(direction, method, location, index, rank, part, cfg.checkpoint)


def _dcp_storage(method: str, location, index: int, cfg: CheckpointBenchConfig, write: bool):
    """``dcp``'s storage writer or reader (:func:`bench.checkpoint.dcp.dcp_storage`), else None."""
    if method != "dcp":
        return None
    return dcp_storage(location, index, cfg.checkpoint, write=write)


def remove_all(location: S3Location) -> None:
    """Delete everything under the run's S3 prefix; a failure is a warning."""
    try:
        remove(location, "", 0, everything=True)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not delete %s: %s", location.storage.describe(), exc)


def _cleanup(location, method: str, index: int, ranks: Ranks, first_on_node: bool) -> None:
    """Delete the checkpoint (fs: once per node; S3: rank 0); a failure is only logged."""
    once = first_on_node if isinstance(location, FsLocation) else ranks.main
    try:
        everywhere(lambda: remove(location, method, index) if once else None)
    except Exception as exc:  # noqa: BLE001
        if ranks.main:
            log.warning("could not delete %s: %s", location.describe(method, index), exc)


def transfer_row(
    kind: str,
    method: str,
    index: int,
    rank: int,
    direction: str,
    t: Transfer,
    cache: str,
    where: str,
) -> dict:
    """One rank's write or read of one checkpoint, as a ``results.csv`` row."""
    s3 = kind == "s3"
    return {
        "storage": kind,
        "method": method,
        "client_lib": client_lib(kind, method),
        "checkpoint": index,
        "rank": rank,
        "direction": direction,
        "bytes": t.nbytes,
        "seconds": t.seconds,
        "throughput_mbps": t.nbytes / t.seconds / 1e6 if t.seconds > 0 else float("nan"),
        "requests": sum(t.operations.values()) if t.operations else "",
        "request_kinds": " ".join(f"{k}={v}" for k, v in sorted(t.operations.items())),
        "retries": t.retries if s3 and method == "torch.save" else "",
        "cache": cache if direction == "read" else "",
        "verified": (not t.mismatch) if direction == "read" else "",
        "error": f"read back differs: {t.mismatch}" if t.mismatch else "",
        "where": where,
    }


def error_row(kind: str, method: str, index: int, exc: BaseException, where: str = "") -> dict:
    """The row of a storage or method that failed (rank and direction empty)."""
    return {
        "storage": kind,
        "method": method,
        "client_lib": client_lib(kind, method),
        "checkpoint": index,
        "rank": "",
        "direction": "",
        "error": error_text(exc),
        "where": where,
    }


def skipped_row(kind: str, method: str, why: str) -> dict:
    """The row of a storage and method not run here (``skipped``: not a failure)."""
    return {
        "storage": kind,
        "method": method,
        "client_lib": client_lib(kind, method),
        "checkpoint": "",
        "rank": "",
        "direction": "",
        "error": f"not run: {why}",
        "where": "",
        "skipped": True,
    }


def _say(ranks: Ranks, text: str) -> None:
    """Print ``text`` on rank 0."""
    if ranks.main:
        print(text)
