"""`make checkpoint-bench`: how fast a storage takes and gives back a training job's checkpoint,
per rank and for the slowest rank, as MLPerf Storage reports it.

Every rank of one launch (``checkpoint.ranks``; ``make checkpoint-bench NPROC=N``) holds its
part of a checkpoint (:mod:`bench.checkpoint`). For each storage (``checkpoint.storages``) and
method (``checkpoint.methods``), ``checkpoint.checkpoints`` times: the ranks write their parts
at once, the checkpoint is made cold (one rank per node evicts its files), the ranks read their
parts back at once with new clients and compare every byte, and the checkpoint is deleted. The
ranks keep in step through agreed collectives (:mod:`bench.ranks`): a failure on any rank ends
that storage and method on every rank with one error row, and the run goes on.

MLPerf Storage v2.0 (mlcommons/storage ``Submission_guidelines.md`` §2.2.3) reports a
checkpoint's duration as the longest over the ranks and its throughput as the lowest over the
ranks; DLIO's figure for the whole job is the checkpoint's bytes over that duration. Both are
here, per checkpoint and averaged over the checkpoints (MLPerf averages runs).

Writes ``outputs/checkpoint-bench/<timestamp>/``: ``results.csv`` (one row per checkpoint,
rank, storage, method and direction; written again after each method), ``report.md`` and
the config. The checkpoints go to ``checkpoint.fs_dir`` (default ``<storage.root>/
checkpoint-bench``) and ``s3://<bucket>/<checkpoint.s3_prefix>/``, each in a new folder or
prefix of the run (``<timestamp>-<random>``) that is removed with all in it at the end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import psutil

from bench.checkpoint import (
    S3_CLIENTS,
    FsPlace,
    S3Place,
    dcp_storage,
    make_cold,
    model_parts,
    part_bytes,
    random_part,
    read,
    remove,
    write,
)
from bench.ranks import BenchRanks, attempt, error_text, everywhere, gather_agreed, on_main
from bench.run import LOCAL_BUCKET, share_local_s3, start_local_bucket
from training import distributed
from training.config import Config, ConfigError
from training.distributed import Ranks
from training.outputs import write_csv, write_yaml

log = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "storage", "method", "client_lib", "checkpoint", "rank", "direction", "bytes", "seconds",
    "throughput_mbps", "requests", "request_kinds", "retries", "cache", "verified", "error",
    "where",
]  # fmt: skip

#: Why s3torchconnector's writer does not run against the local server (measured with rclone
#: 1.75.2: the CRT log says "Could not find upload-id in create-multipart-upload response").
LOCAL_SERVER_NO_CRT_WRITES = (
    "the local server (rclone serve s3) answers CreateMultipartUpload with an "
    "<InitiateMultipartUpload> element, not S3's <InitiateMultipartUploadResult>, which the CRT "
    "client of s3torchconnector rejects (boto3 accepts it); set S3_ENDPOINT to MinIO, DSS or "
    "AWS to run dcp on S3"
)

#: What each rank holds at most during a read, in parts: its part, the bytes read back
#: (torch.save on S3) and the tensors loaded from them.
PARTS_IN_MEMORY = 3


def run_checkpoint_bench(cfg: Config, out: Path, ranks: Ranks) -> list[dict]:
    """Run the workload (see the module doc). Every rank calls it; rank 0 gets the rows (and
    writes ``results.csv`` after each method), the others an empty list.

    Raises:
        ConfigError: ``checkpoint.ranks`` is not this launch's world size, a part would not
            fit in memory, or ``checkpoint.model`` is not a training run (on every rank).
    """
    ck = cfg.checkpoint
    if ck.ranks != ranks.world_size:
        raise ConfigError(
            f"checkpoint.ranks is {ck.ranks} but this launch has {ranks.world_size} rank(s): "
            "make checkpoint-bench NPROC=N sets it to N x NNODES"
        )
    br = BenchRanks(ranks, [ranks.world_size])
    first_on_node = br.team(ranks.world_size).first_on_node(ranks.rank, br.node_of)
    on_main(lambda: out.mkdir(parents=True, exist_ok=True), ranks)
    # free memory measured by every rank before any allocates its part
    free = distributed.gather(psutil.virtual_memory().available)
    part = everywhere(lambda: this_part(cfg, ranks, br, free))
    nbytes = distributed.gather(part_bytes(part))
    if ranks.main:
        print(
            f"checkpoint of {sum(nbytes) / 1e9:.3f} GB over {ranks.world_size} rank(s) "
            f"({_source(cfg)}), {ck.checkpoints} checkpoint(s) per storage and method"
        )
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        for kind in ck.storages:
            try:
                place = open_place(kind, cfg, out, stack, br, first_on_node)
            except Exception as exc:  # noqa: BLE001 - agreed on every rank: rows say why; go on
                rows.extend(error_row(kind, m, 1, exc) for m in ck.methods)
                _say(ranks, f"{kind}: {error_text(exc)}")
                continue
            for method in ck.methods:
                if kind == "s3" and method == "dcp" and place.local_dir is not None:
                    rows.append(skipped_row(kind, method, LOCAL_SERVER_NO_CRT_WRITES))
                    _say(ranks, f"{kind} {method}: not run: {LOCAL_SERVER_NO_CRT_WRITES}")
                    continue
                rows.extend(run_method(kind, method, place, part, cfg, br, first_on_node))
                if ranks.main:
                    save_rows(out, rows)
        distributed.barrier(long=True)  # every rank done before the folders and server go
    return rows if ranks.main else []


def save_rows(out: Path, rows: list[dict]) -> None:
    """``results.csv`` so far (rank 0, after each method); a failure to write it is a warning:
    the ranks go on in step, and the final write says it again."""
    try:
        write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    except OSError as exc:
        log.warning("cannot write %s: %s", out / "results.csv", exc)


def this_part(cfg: Config, ranks: Ranks, br: BenchRanks, free: list[int]) -> dict:
    """This rank's part: an equal share of ``checkpoint.size_gb`` of random tensors, or its
    share of ``checkpoint.model``'s tensors. ``free``: every rank's free memory in bytes,
    measured before any part was made (the least on this node counts).

    Raises:
        ConfigError: the ranks on this node would not hold their parts in memory, or
            ``checkpoint.model`` is not a training run's folder.
    """
    ck = cfg.checkpoint
    if ck.model:
        return model_parts(ck.model, ranks.world_size)[ranks.rank]
    total = int(ck.size_gb * 1e9)
    nbytes = total // ranks.world_size + (ranks.rank < total % ranks.world_size)
    node = br.node_of[ranks.rank]
    here = br.node_of.count(node)
    available = min(f for r, f in enumerate(free) if br.node_of[r] == node)
    needed = PARTS_IN_MEMORY * nbytes * here
    if needed > 0.9 * available:
        raise ConfigError(
            f"checkpoint.size_gb={ck.size_gb:g} needs about {needed / 1e9:.1f} GB of memory on "
            f"this node ({here} rank(s), each holding its part, the bytes read back and the "
            f"tensors loaded) but {available / 1e9:.1f} GB is available: lower SIZE_GB, or "
            "spread the ranks over more nodes"
        )
    return random_part(nbytes, ranks.rank)


def open_place(
    kind: str,
    cfg: Config,
    out: Path,
    stack: contextlib.ExitStack,
    br: BenchRanks,
    first_on_node: bool,
):
    """Where the run's checkpoints go on ``kind``: a new folder under ``checkpoint.fs_dir``, or
    a prefix under ``checkpoint.s3_prefix`` of the same new name (``<run folder's
    name>-<random>``), removed with everything in it when ``stack`` closes (fs: by one rank
    per node; S3: by rank 0). For S3, rank 0's settings decide (``storage.*``, else
    ``S3_ENDPOINT``, ``S3_BUCKET``); without an endpoint a local server is started for the run.
    Every rank calls it, and it fails on every rank alike.

    Raises:
        ConfigError: S3 without a bucket, or several nodes without an S3 endpoint.
        Exception: the folder cannot be made, the local server did not start.
    """
    ck = cfg.checkpoint
    fs_dir = Path(ck.fs_dir or Path(cfg.storage.root) / "checkpoint-bench")

    def new_name() -> str:
        fs_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{out.name}-", dir=fs_dir)).name

    if kind == "fs":
        root = fs_dir / on_main(new_name, br.ranks)
        everywhere(lambda: root.mkdir(parents=True, exist_ok=True))  # nodes without a shared fs
        if first_on_node:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        return FsPlace(root)
    from pipelines.storage.s3 import S3Storage

    endpoint, bucket, region = distributed.gather(
        (
            cfg.storage.endpoint_url or os.environ.get("S3_ENDPOINT"),
            cfg.storage.bucket or os.environ.get("S3_BUCKET"),
            cfg.storage.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
    )[0]
    name = f"{out.name}-{os.urandom(4).hex()}"
    prefix = "/".join(p for p in (ck.s3_prefix.strip("/"), on_main(lambda: name, br.ranks)) if p)
    local_dir = None
    if not endpoint:
        # no ETags: rclone would hash the whole object for every ranged GET of a read
        start = functools.partial(start_local_bucket, stack, out, etag_hash="")
        endpoint, bucket_dir = share_local_s3(start, br, stack)
        bucket, local_dir = LOCAL_BUCKET, bucket_dir / prefix
        _say(br.ranks, f"local S3 server {endpoint}")
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
    place = S3Place(storage, region, local_dir)
    if br.ranks.main:
        stack.callback(remove_all, place)
    return place


def run_method(
    kind: str, method: str, place, part: dict, cfg: Config, br: BenchRanks, first_on_node: bool
) -> list[dict]:
    """``checkpoint.checkpoints`` checkpoints of ``method`` on ``place``: written, made cold,
    read back and compared, deleted. Every rank calls it; rank 0's rows are the result.

    A failure on any rank stops the method on every rank, with one error row; what was
    measured before it stays.
    """
    ranks = br.ranks
    rows: list[dict] = []
    for index in range(1, cfg.checkpoint.checkpoints + 1):
        where = place.describe(method, index)
        try:
            args = (method, place, index, ranks.rank, part, cfg.checkpoint)
            writer = everywhere(functools.partial(_dcp_storage, method, place, index, cfg, True))
            distributed.barrier(long=True)  # the ranks start each direction together
            writes = gather_agreed(*attempt(functools.partial(write, *args, writer)))
            cold = functools.partial(make_cold, place, method, index)
            caches = gather_agreed(*attempt(cold if first_on_node else lambda: None))
            cache = next(c for c in caches if c is not None)
            reader = everywhere(functools.partial(_dcp_storage, method, place, index, cfg, False))
            distributed.barrier(long=True)
            reads = gather_agreed(*attempt(functools.partial(read, *args, reader)))
        except Exception as exc:  # noqa: BLE001 - agreed on every rank: one row, next method
            rows.append(error_row(kind, method, index, exc, where))
            _say(ranks, f"{kind} {method} checkpoint {index}: {error_text(exc)}")
            break
        finally:
            _cleanup(place, method, index, ranks, first_on_node)
        new = [
            transfer_row(kind, method, index, rank, direction, t, cache, where)
            for direction, transfers in (("write", writes), ("read", reads))
            for rank, t in enumerate(transfers)
        ]
        rows.extend(new)
        if ranks.main:
            print(progress_line(kind, method, index, cfg.checkpoint.checkpoints, new))
    return rows


def _dcp_storage(method: str, place, index: int, cfg: Config, write: bool):
    """For ``dcp``, its storage writer or reader (:func:`bench.checkpoint.dcp_storage`); None
    for the other methods."""
    if method != "dcp":
        return None
    return dcp_storage(place, index, cfg.checkpoint, write=write)


def remove_all(place) -> None:
    """Delete everything under the run's S3 prefix (what a failed delete or an interrupted
    checkpoint left); a failure is a warning."""
    try:
        remove(place, "", 0, everything=True)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not delete %s: %s", place.storage.describe(), exc)


def _cleanup(place, method: str, index: int, ranks: Ranks, first_on_node: bool) -> None:
    """Delete the checkpoint (fs: once per node; S3: rank 0); a failure is logged on rank 0,
    and the ranks stay in step."""
    once = first_on_node if isinstance(place, FsPlace) else ranks.main
    try:
        everywhere(lambda: remove(place, method, index) if once else None)
    except Exception as exc:  # noqa: BLE001
        if ranks.main:
            log.warning("could not delete %s: %s", place.describe(method, index), exc)


def client_lib(kind: str, method: str) -> str:
    """The client library a method uses on a storage (``-`` on the filesystem)."""
    return S3_CLIENTS[method] if kind == "s3" else "-"


def transfer_row(kind, method, index, rank, direction, t, cache, where) -> dict:
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


def progress_line(kind: str, method: str, index: int, total: int, rows: list[dict]) -> str:
    """One checkpoint's result for the console."""
    parts = []
    for direction in ("write", "read"):
        done = [r for r in rows if r["direction"] == direction]
        worst = max(r["seconds"] for r in done)
        gb = sum(r["bytes"] for r in done) / 1e9
        parts.append(f"{direction} {gb:.3f} GB in {worst:.2f} s ({gb * 1e3 / worst:,.0f} MB/s)")
    bad = [r for r in rows if r["direction"] == "read" and not r["verified"]]
    check = f"DIFFERENT on {len(bad)} rank(s)" if bad else "read back identical"
    return f"{kind} {method} checkpoint {index}/{total}: {', '.join(parts)}, {check}"


def summarize(rows: list[dict]) -> list[dict]:
    """Per storage, method and direction, over its checkpoints: MLPerf Storage's figures.

    Returns:
        Dicts with ``storage``, ``method``, ``client_lib``, ``direction``, ``ranks``,
        ``checkpoints``, ``gb`` (one checkpoint's bytes, 10^9), ``seconds`` (the slowest
        rank's time, mean over checkpoints), ``seconds_spread`` ((max - min) / mean of those
        times), ``throughput_mbps`` (bytes over the slowest rank's time, mean),
        ``slowest_rank_mbps`` (the lowest rank's MB/s, mean), ``requests`` (per checkpoint,
        all ranks; None when not counted), ``identical`` (every read compared equal).
    """
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        if r.get("direction"):
            key = (r["storage"], r["method"], r["client_lib"], r["direction"])
            groups.setdefault(key, {}).setdefault(r["checkpoint"], []).append(r)
    out = []
    for (kind, method, lib, direction), by_index in groups.items():
        worst = [max(r["seconds"] for r in rs) for rs in by_index.values()]
        nbytes = [sum(r["bytes"] for r in rs) for rs in by_index.values()]
        slowest = [  # ranks with nothing to write (a model with fewer tensors) left out
            min((r["throughput_mbps"] for r in rs if r["bytes"] > 0), default=float("nan"))
            for rs in by_index.values()
        ]
        counted = [r["requests"] for rs in by_index.values() for r in rs if r["requests"] != ""]
        mean = statistics.fmean(worst)
        out.append(
            {
                "storage": kind,
                "method": method,
                "client_lib": lib,
                "direction": direction,
                "ranks": len(next(iter(by_index.values()))),
                "checkpoints": len(by_index),
                "gb": statistics.fmean(nbytes) / 1e9,
                "seconds": mean,
                "seconds_spread": (max(worst) - min(worst)) / mean if mean > 0 else 0.0,
                "throughput_mbps": statistics.fmean(
                    b / s / 1e6 for b, s in zip(nbytes, worst, strict=True)
                ),
                "slowest_rank_mbps": statistics.fmean(slowest),
                "requests": sum(counted) / len(by_index) if counted else None,
                "identical": all(
                    r["verified"] is not False for rs in by_index.values() for r in rs
                ),
            }
        )
    return out


def answer_lines(rows: list[dict]) -> list[str]:
    """One sentence per storage and method: write and read, the slowest rank, the check; or
    why it failed or did not run."""
    summary = summarize(rows)
    lines = []
    for kind, method in dict.fromkeys((r["storage"], r["method"]) for r in rows):
        head = f"{kind}, {method}" + (f" ({client_lib(kind, method)})" if kind == "s3" else "")
        done = [s for s in summary if (s["storage"], s["method"]) == (kind, method)]
        if done:
            said = [
                f"{s['direction']} {s['gb']:.3f} GB in {s['seconds']:.2f} s ="
                f" {s['throughput_mbps']:,.0f} MB/s (slowest rank {s['slowest_rank_mbps']:,.0f}"
                " MB/s)"
                for s in done
            ]
            check = (
                "every rank read back identical bytes"
                if all(s["identical"] for s in done)
                else "READ BACK DIFFERENT BYTES (see results.csv)"
            )
            lines.append(f"{head}, {done[0]['ranks']} rank(s): {'; '.join(said)}; {check}.")
        for r in rows:
            if (r["storage"], r["method"]) == (kind, method) and not r.get("direction"):
                lines.append(
                    f"{head}: {r['error'] if r.get('skipped') else 'failed: ' + r['error']}"
                )
    return lines


def failed(rows: list[dict]) -> bool:
    """Whether a storage or method failed, or read back different bytes (not run: no)."""
    return any(r["error"] and not r.get("skipped") for r in rows)


def write_outputs(out: Path, cfg: Config, rows: list[dict]) -> None:
    """``results.csv``, ``report.md`` and ``config.yaml`` (each atomically)."""
    from common.files import atomic_write_bytes

    write_yaml(out / "config.yaml", cfg.to_dict())
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    summary = summarize(rows)
    ck = cfg.checkpoint
    lines = [
        "# Checkpoint benchmark",
        "",
        *answer_lines(rows),
        "",
        f"Checkpoint: {_source(cfg)}, written and read by {ck.ranks} rank(s) at once, "
        f"{ck.checkpoints} time(s) per storage and method. Each write is durable before its "
        "time stops (fs: fsync of the file and its folder; S3: the upload completed); before "
        "each read the checkpoint's files are evicted from this machine's page cache (fs, and "
        "a local S3 server's files) and every read uses a new client (the `cache` column). "
        "Every tensor read back is compared byte for byte with what was written.",
        "",
        "As MLPerf Storage v2.0 reports a checkpoint (Submission_guidelines.md §2.2.3): the "
        "duration is the slowest rank's, the throughput per rank the lowest rank's; MB/s for "
        "the job is the checkpoint's bytes (tensor bytes, MB = 10^6 bytes) over the slowest "
        "rank's time (DLIO's figure). Means over the checkpoints; the spread is (max - min) / "
        "mean of the slowest rank's times.",
        "",
        "| storage | method | client | direction | ranks | GB | slowest rank s | spread"
        " | MB/s | slowest rank MB/s | requests per checkpoint | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {s['storage']} | {s['method']} | {s['client_lib']} | {s['direction']}"
            f" | {s['ranks']} | {s['gb']:.3f} | {s['seconds']:.3f} | {s['seconds_spread']:.1%}"
            f" | {s['throughput_mbps']:,.1f} | {s['slowest_rank_mbps']:,.1f}"
            f" | {_count(s['requests'])}"
            f" | {'yes' if s['identical'] else 'NO'} |"
            for s in summary
        ],
        "",
        "Requests are counted for boto3 (by operation in `results.csv`'s `request_kinds`); "
        "the CRT client of s3torchconnector does not tell them. dcp's time on each rank ends "
        "with its closing collective, so every rank's is about the slowest's: its slowest-rank "
        "MB/s is the job's share per rank, not a rank's own speed. Per rank and checkpoint: "
        "`results.csv`.",
    ]
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode("utf-8"))


def _count(value: float | None) -> str:
    """A request count for the table; ``-`` when not counted."""
    return "-" if value is None else f"{value:,.0f}"


def _source(cfg: Config) -> str:
    """What the checkpoint is, for the console and the report."""
    ck = cfg.checkpoint
    if ck.model:
        return f"the tensors of {Path(ck.model) / 'checkpoint.pt'}"
    return f"{ck.size_gb:g} GB of random bf16 tensors"


def _say(ranks: Ranks, text: str) -> None:
    """Print ``text`` on rank 0."""
    if ranks.main:
        print(text)
