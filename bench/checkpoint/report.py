"""The outputs of ``make checkpoint-bench``: MLPerf Storage's figures, answers, files.

Figures per storage, method and direction (mlcommons/storage ``Submission_guidelines.md`` §2.2.3: a
checkpoint's duration is the slowest rank's, its throughput per rank the lowest rank's; DLIO's job
MB/s is the bytes over that duration), the answer sentences, ``results.csv``, ``report.md`` and
``config.yaml``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.checkpoint.config import CheckpointBenchConfig
from bench.checkpoint.parts import S3_CLIENTS
from common.files import atomic_write_bytes
from training.outputs import write_csv, write_yaml

RESULT_COLUMNS = [
    "storage", "method", "client_lib", "checkpoint", "rank", "direction", "bytes", "seconds",
    "throughput_mbps", "requests", "request_kinds", "retries", "cache", "verified", "error",
    "where",
]  # fmt: skip


def summarize(rows: list[dict]) -> list[dict]:
    """MLPerf Storage's figures per storage, method and direction, over its checkpoints.

    Returns:
        Dicts with ``storage``, ``method``, ``client_lib``, ``direction``, ``ranks``,
            ``checkpoints``,
        ``gb`` (one checkpoint's bytes, 10^9), ``seconds`` (the slowest rank's time, mean over
        checkpoints), ``seconds_spread`` ((max - min) / mean of those times), ``throughput_mbps``
        (bytes over the slowest rank's time, mean), ``slowest_rank_mbps`` (the lowest rank's MB/s,
        mean), ``requests`` (per checkpoint, all ranks; None when not counted), ``identical`` (every
        read compared equal).
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
    """A sentence per storage and method: write and read, slowest rank, check; or the error."""
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


def write_outputs(out: Path, cfg: CheckpointBenchConfig, rows: list[dict]) -> None:
    """Write ``results.csv``, ``report.md`` and ``config.yaml``, each atomically."""
    write_yaml(out / "config.yaml", cfg.to_dict())
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    summary = summarize(rows)
    ck = cfg.checkpoint
    lines = [
        "# Checkpoint benchmark",
        "",
        *answer_lines(rows),
        "",
        f"Checkpoint: {source_text(cfg)}, written and read by {ck.ranks} rank(s) at once, "
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


def source_text(cfg: CheckpointBenchConfig) -> str:
    """What the checkpoint is, for the console and the report."""
    ck = cfg.checkpoint
    if ck.model:
        return f"the tensors of {Path(ck.model) / 'checkpoint.pt'}"
    return f"{ck.size_gb:g} GB of random bf16 tensors"


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


def client_lib(kind: str, method: str) -> str:
    """The client library a method uses on a storage (``-`` on the filesystem)."""
    return S3_CLIENTS[method] if kind == "s3" else "-"
