"""The ``dcp`` method of ``make checkpoint-bench``: ``torch.distributed.checkpoint`` of every part.

A collective ``save`` / ``load`` with PyTorch's ``FileSystemWriter`` / ``FileSystemReader`` on fs,
s3torchconnector's ``S3StorageWriter`` / ``S3StorageReader`` on S3
(https://pytorch.org/docs/stable/distributed.checkpoint.html; s3torchconnector's ``dcp`` module).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings

import torch

from bench.checkpoint.parts import FsLocation, Transfer, as_bytes, differences, part_bytes
from common.errors import error_line
from pipelines.storage.base import StorageError
from training import distributed

log = logging.getLogger(__name__)


def dcp_write(location, index: int, part: dict, writer) -> Transfer:
    """``dcp.save`` of every rank's part: a collective on the long-waiting group (no time-outs).

    Each rank's time ends with DCP's closing collective: it is about the slowest rank's.
    """
    from torch.distributed import checkpoint as dcp

    start = time.perf_counter()
    with _quiet_dcp():
        try:
            dcp.save(part, storage_writer=writer, process_group=distributed.long_group())
        except (Exception, dcp.CheckpointException) as exc:  # every rank's errors, gathered
            raise StorageError(
                f"dcp cannot write {location.describe('dcp', index)}: {_dcp_cause(exc)}"
            ) from None
    return Transfer(time.perf_counter() - start, part_bytes(part))


def dcp_read(location, index: int, part: dict, reader) -> Transfer:
    """``dcp.load`` into tensors filled with the complement of the expected bytes, then compare."""
    from torch.distributed import checkpoint as dcp

    got = {name: torch.empty_like(tensor) for name, tensor in part.items()}
    for name, tensor in part.items():
        as_bytes(got[name]).copy_(torch.bitwise_not(as_bytes(tensor)))
    start = time.perf_counter()
    with _quiet_dcp():
        try:
            dcp.load(got, storage_reader=reader, process_group=distributed.long_group())
        except (Exception, dcp.CheckpointException) as exc:
            raise StorageError(
                f"dcp cannot read {location.describe('dcp', index)}: {_dcp_cause(exc)}"
            ) from None
    seconds = time.perf_counter() - start
    return Transfer(seconds, part_bytes(part), mismatch=differences(part, got))


def dcp_storage(location, index: int, cfg, *, write: bool):
    """DCP's storage writer (or reader) of checkpoint ``index`` on ``location``; sends no request.

    PyTorch's own for fs, s3torchconnector's for S3 (given a client for the location's endpoint).

    Raises:
        StorageError: s3torchconnector (with its ``dcp`` extra) is not installed.
    """
    from torch.distributed import checkpoint as dcp

    if isinstance(location, FsLocation):
        folder = location.folder("dcp", index)
        if write:
            return dcp.FileSystemWriter(folder, sync_files=True, thread_count=cfg.concurrency)
        return dcp.FileSystemReader(folder)
    try:
        from s3torchconnector import S3ClientConfig
        from s3torchconnector._s3client import S3Client
        from s3torchconnector.dcp import S3FileSystem, S3StorageReader, S3StorageWriter
    except ImportError:
        raise StorageError(
            "checkpoint method dcp on S3 needs s3torchconnector: `uv pip install "
            "s3torchconnector`, or checkpoint.methods: [torch.save]"
        ) from None
    storage = location.storage
    config = S3ClientConfig(
        part_size=cfg.part_size_mib * 2**20,
        force_path_style=storage.addressing_style == "path",
        max_attempts=storage.max_attempts,
    )
    uri = location.uri("dcp", index)
    if write:
        dcp_storage = S3StorageWriter(
            location.region, uri, s3client_config=config, thread_count=cfg.concurrency
        )
        constructor = None
    else:
        dcp_storage = S3StorageReader(location.region, uri, s3client_config=config)
        constructor = dcp_storage._reader_constructor
    client = S3Client(location.region, endpoint=storage.endpoint_url, s3client_config=config)
    # s3torchconnector 1.5's writer and reader build a client without an endpoint (AWS only);
    # their file system takes one: replace it before any request is sent
    dcp_storage.fs = S3FileSystem(location.region, s3_client=client, reader_constructor=constructor)
    return dcp_storage


def _dcp_cause(exc: BaseException) -> str:
    """DCP's error in one line: the first rank's failure, with a hint for the CRT's refusals.

    ``failures`` of a ``CheckpointException`` maps rank to the exception or ``(exception,
    traceback)``.
    """
    failures = getattr(exc, "failures", None)
    if failures:
        rank, error = next(iter(failures.items()))
        cause = error[0] if isinstance(error, tuple) else error
        text = f"rank {rank}: {error_line(cause)}"
    else:
        text = error_line(exc)
    if "REQUEST_HAS_COMPLETED" in text:
        text += (
            " (the CRT client gave up on the upload: the server refused it or answered in a "
            "form the CRT does not accept; S3_TORCH_CONNECTOR_DEBUG_LOGS=awscrt=debug shows why)"
        )
    return text


@contextlib.contextmanager
def _quiet_dcp():
    """Silence DCP's single-process warning; log its writer threads' tracebacks at debug level.

    A writer thread's error is what ``dcp.save`` raises; the thread may outlive the call.
    """
    if threading.excepthook is not _writer_thread_hook:
        global _next_hook
        _next_hook, threading.excepthook = threading.excepthook, _writer_thread_hook
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


_next_hook = threading.excepthook


def _writer_thread_hook(args) -> None:
    """``threading.excepthook``: DCP's writer threads log their error; others as before."""
    if args.thread is not None and "_write_files_from_queue" in args.thread.name:
        log.debug("dcp writer thread %s: %s", args.thread.name, args.exc_value)
        return
    _next_hook(args)
