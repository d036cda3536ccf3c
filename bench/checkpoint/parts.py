"""One rank's part of a checkpoint: made, written, made cold, read back and compared.

MLPerf Storage v2.0's checkpoint workload (mlcommons/storage ``Submission_guidelines.md`` §2.2,
``configs/dlio/workload/llama3_8b.yaml`` and its siblings; DLIO's PyTorch checkpointing): every rank
writes its part of the model and optimizer state at once, durably, then reads it back. A part is a
``{name: tensor}`` dict (:func:`random_part`, :func:`model_parts`), written with ``torch.save``
(here: a file per rank on fs, a multipart-uploaded object per rank on S3) or ``dcp``
(:mod:`bench.checkpoint.dcp`). A write's time runs from the first byte serialised until the part is
durable (fs: ``fsync``; S3: upload completed); a read's from the first request until the tensors are
in memory. In between the checkpoint is made cold (:func:`make_cold`) and every read uses a new
client; then every tensor is compared byte for byte (:func:`differences`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.page_cache import evict_page_cache
from common.errors import first_line
from pipelines.storage.base import StorageError, join_key, relative_keys
from training.config import ConfigError

log = logging.getLogger(__name__)

#: Bytes per tensor of a random part (the last one of a part may be smaller): 64 MiB, the
#: order of one large layer's weights of a multi-billion-parameter model in bf16.
TENSOR_BYTES = 64 * 2**20

#: The methods (``checkpoint.methods``) and the client library each uses on S3.
S3_CLIENTS = {"torch.save": "boto3", "dcp": "s3torchconnector", "s3dlio": "s3dlio"}


def random_part(nbytes: int, rank: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s part of a random checkpoint: ``nbytes`` bytes of bf16 tensors.

    Args:
        nbytes: the part's size in bytes (an odd byte is dropped: a bf16 is two bytes).
        rank: names the tensors (``rank<r>.layers.<i>.weight``, unique over the ranks, as ``dcp``
            needs) and seeds them.
        seed: with ``rank``, the random bytes (all random: compression or deduplication gains
            nothing).

    Returns:
        ``{name: 1-D torch.bfloat16 tensor}``, each of :data:`TENSOR_BYTES` bytes but the last.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + rank)
    part, left, index = {}, nbytes - nbytes % 2, 0
    while left > 0:
        size = min(left, TENSOR_BYTES)
        raw = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator)
        part[f"rank{rank}.layers.{index}.weight"] = raw.view(torch.bfloat16)
        left, index = left - size, index + 1
    return part


def model_parts(run_dir: str | Path, world_size: int) -> list[dict[str, torch.Tensor]]:
    """A training run's ``<run_dir>/checkpoint.pt`` tensors, split over ``world_size`` ranks.

    As a sharded checkpoint would be: largest first, each to the rank holding the fewest bytes so
    far.

    Returns:
        One ``{name: tensor}`` per rank (names are the dotted paths in the checkpoint, e.g.
        ``optimizer.state.0.momentum_buffer``; non-tensor values are left out). A rank may get
        nothing when there are fewer tensors than ranks.

    Raises:
        ConfigError: no ``checkpoint.pt`` there, or it cannot be read as a checkpoint.
    """
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(
            f"checkpoint.model: no {path}: name a training run's folder (make train writes "
            "checkpoint.pt there), or leave checkpoint.model empty for random tensors"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip or unpickler errors: one message
        raise ConfigError(f"checkpoint.model: cannot read {path}: {first_line(exc)}") from None
    tensors = sorted(_tensors(state), key=lambda item: -item[1].nbytes)
    if not tensors:
        raise ConfigError(f"checkpoint.model: {path} holds no tensors")
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(world_size)]
    loads = [0] * world_size
    for name, tensor in tensors:
        lightest = loads.index(min(loads))
        parts[lightest][name] = tensor.contiguous()
        loads[lightest] += tensor.nbytes
    return parts


def _tensors(value, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted name, tensor)`` for every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}.{index}" if prefix else str(index))


def part_bytes(part: dict[str, torch.Tensor]) -> int:
    """The bytes of a part's tensors (the payload a write must store)."""
    return sum(t.nbytes for t in part.values())


def differences(expected: dict[str, torch.Tensor], got: dict) -> str:
    """How the tensors read back differ from those written; ``""`` when all match.

    Every tensor must have the same name, dtype, shape and bytes.

    Returns:
        The first difference found, e.g. ``"tensor 'rank0.layers.3.weight': 67108864 bytes written,
        byte 1048576 differs"``.
    """
    missing = sorted(set(expected) - set(got))
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}"
    extra = sorted(set(got) - set(expected))
    if extra:
        return f"{len(extra)} tensor(s) not written came back, e.g. {extra[0]!r}"
    for name, tensor in expected.items():
        other = got[name]
        if not isinstance(other, torch.Tensor):
            return f"{name!r} came back as {type(other).__name__}, not a tensor"
        if other.dtype != tensor.dtype or other.shape != tensor.shape:
            return (
                f"tensor {name!r}: {tensor.dtype} {tuple(tensor.shape)} written, {other.dtype} "
                f"{tuple(other.shape)} read"
            )
        a, b = as_bytes(tensor), as_bytes(other)
        if not torch.equal(a, b):
            first = int((a != b).nonzero()[0])
            return f"tensor {name!r}: {tensor.nbytes} bytes written, byte {first} differs"
    return ""


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes as a 1-D uint8 tensor (bit patterns compared: NaN equals NaN)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


@dataclass
class Transfer:
    """One rank's write or read of its part.

    Attributes:
        seconds: wall time of the transfer (``time.perf_counter``).
        nbytes: the part's tensor bytes (:func:`part_bytes`).
        operations: S3 requests by operation (``{"UploadPart": 64, ...}``; boto3 only: the CRT
            client of s3torchconnector does not tell).
        retries: S3 attempts after the first (boto3 only).
        mismatch: for a read, :func:`differences` between what was written and what came back
            (``""``: identical).
    """

    seconds: float
    nbytes: int
    operations: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    mismatch: str = ""


# -- where a checkpoint goes ---------------------------------------------------------------------


@dataclass(frozen=True)
class FsLocation:
    """The filesystem under test: checkpoint ``i`` of a method is ``<root>/<method>/ckpt-<i>``.

    torch.save's file of rank ``r`` is ``rank-<r>.pt`` in it.
    """

    root: Path

    def folder(self, method: str, index: int) -> Path:
        """Where checkpoint ``index`` of ``method`` is written."""
        return self.root / method / f"ckpt-{index}"

    def describe(self, method: str, index: int) -> str:
        """The checkpoint's folder, for messages."""
        return str(self.folder(method, index))


@dataclass(frozen=True)
class S3Location:
    """An S3 bucket under test: checkpoint ``i`` of a method is ``<prefix>/<method>/ckpt-<i>/``.

    Attributes:
        storage: the boto3 storage whose prefix holds the run's checkpoints (also lists and deletes
            them).
        region: the region the CRT client of s3torchconnector signs for.
        local_dir: the local S3 server's folder behind ``storage``'s prefix (its files are evicted
            for a cold read), or None for a remote endpoint.
    """

    storage: object
    region: str
    local_dir: Path | None = None

    def key(self, method: str, index: int) -> str:
        """Checkpoint ``index`` of ``method``'s prefix, relative to the storage's."""
        return f"{method}/ckpt-{index}"

    def uri(self, method: str, index: int) -> str:
        """``s3://bucket/prefix/method/ckpt-i`` (what ``dcp`` is given)."""
        prefix = "/".join(p for p in (self.storage.prefix, self.key(method, index)) if p)
        return f"s3://{self.storage.bucket}/{prefix}"

    def describe(self, method: str, index: int) -> str:
        """The checkpoint's prefix and endpoint, for messages (never credentials)."""
        return self.storage.describe(self.key(method, index))


# -- writes and reads ----------------------------------------------------------------------------


def write(method: str, location, index: int, rank: int, part: dict, cfg) -> Transfer:
    """Write rank ``rank``'s ``part`` as checkpoint ``index`` of ``method`` to ``location``.

    ``torch.save`` only; ``dcp`` is :func:`bench.checkpoint.dcp.dcp_write`. On S3 the part streams
    through a pipe (:class:`SaveStream`) into a boto3 multipart upload.

    Args:
        cfg: ``checkpoint.*`` (:class:`bench.checkpoint.config.CheckpointSection`).

    Raises:
        StorageError: the storage refused or failed (the message names the location).
    """
    if isinstance(location, FsLocation):
        path = location.folder(method, index) / f"rank-{rank}.pt"
        start = time.perf_counter()
        _save_file(part, path)
        return Transfer(time.perf_counter() - start, part_bytes(part))
    key = f"{location.key(method, index)}/rank-{rank}.pt"
    if method == "s3dlio":  # its requests are not exposed: no counts
        storage = s3dlio_storage(location)
        start = time.perf_counter()
        with SaveStream(part) as stream:
            storage.upload_stream(
                join_key(location.storage.prefix, key), stream,
                part_size=cfg.part_size_mib * 2**20,
            )  # fmt: skip
        return Transfer(time.perf_counter() - start, part_bytes(part))
    storage = location.storage.with_connections(cfg.concurrency)  # a new client of its own
    counter = OperationCounter(storage.client())
    start = time.perf_counter()
    with SaveStream(part) as stream:
        storage.upload_stream(
            key, stream, part_size=cfg.part_size_mib * 2**20, concurrency=cfg.concurrency
        )
    seconds = time.perf_counter() - start
    return Transfer(seconds, part_bytes(part), counter.counts(), counter.retries())


def read(method: str, location, index: int, rank: int, part: dict, cfg) -> Transfer:
    """Read rank ``rank``'s part of checkpoint ``index`` back with a new client; compare (untimed).

    ``torch.save`` only (``dcp``: :func:`bench.checkpoint.dcp.dcp_read`); on S3 by ranged GETs into
    memory, then ``torch.load``.

    Raises:
        StorageError: the storage failed, or what came back is not a checkpoint.
    """
    if isinstance(location, FsLocation):
        path = location.folder(method, index) / f"rank-{rank}.pt"
        start = time.perf_counter()
        got = _load(path, str(path))
        seconds = time.perf_counter() - start
        return Transfer(seconds, part_bytes(part), mismatch=differences(part, got))
    key = f"{location.key(method, index)}/rank-{rank}.pt"
    if method == "s3dlio":  # one GET into s3dlio's buffer
        storage, full = s3dlio_storage(location), join_key(location.storage.prefix, key)
        start = time.perf_counter()
        got = _load(io.BytesIO(storage.read(full)), storage.describe(full))
        seconds = time.perf_counter() - start
        return Transfer(seconds, part_bytes(part), mismatch=differences(part, got))
    storage = location.storage.with_connections(cfg.concurrency)
    counter = OperationCounter(storage.client())
    start = time.perf_counter()
    buffer = io.BytesIO()
    storage.download_stream(
        key, buffer, part_size=cfg.part_size_mib * 2**20, concurrency=cfg.concurrency
    )
    buffer.seek(0)
    got = _load(buffer, storage.describe(key))
    seconds = time.perf_counter() - start
    return Transfer(
        seconds,
        part_bytes(part),
        counter.counts(),
        counter.retries(),
        differences(part, got),
    )


def s3dlio_storage(location: S3Location):
    """An :class:`~pipelines.storage.s3dlio_storage.S3dlioStorage` over ``location``'s bucket.

    The same endpoint, region, addressing style and keys as its boto3 storage (whose keys are
    relative to its prefix; this one's to the bucket).
    """
    from pipelines.storage.s3dlio_storage import S3dlioStorage

    s3 = location.storage
    return S3dlioStorage(
        s3.bucket, endpoint_url=s3.endpoint_url, region=location.region,
        addressing_style=s3.addressing_style, max_attempts=s3.max_attempts,
        credentials_file=s3.credentials_file,
    )  # fmt: skip


def _save_file(part: dict, path: Path) -> None:
    """``torch.save`` durably: a temporary file beside ``path``, fsync, rename, fsync folder.

    Never a partial file at ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(part, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(source, where: str) -> dict:
    """``torch.load`` of a part (tensors only), any failure a StorageError naming ``where``."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StorageError(f"cannot read {where}: no such file") from None
    except OSError as exc:  # torch's zip reader seeking before the start of a short file
        raise StorageError(
            f"cannot read {where} ({exc.strerror or exc}): the file is damaged or truncated, "
            "or the storage failed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file: the unpickler's or zip's error
        raise StorageError(f"{where} is not a readable checkpoint: {first_line(exc)}") from None


class SaveStream(io.RawIOBase):
    """``torch.save(obj)`` as a readable stream: a thread serialises into a pipe.

    :meth:`read` drains the pipe: an upload starts with the first bytes and memory holds a pipe's
    buffer, not a second copy. When serialising fails, :meth:`read` raises at the end of the stream
    instead of returning ``b""``, so the upload fails (and is aborted) rather than storing a short
    object. Closing the stream early stops the thread.
    """

    def __init__(self, obj):
        read_fd, write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb")
        self._writer = os.fdopen(write_fd, "wb")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._save, args=(obj,), daemon=True)
        self._thread.start()

    def _save(self, obj) -> None:
        try:
            torch.save(obj, self._writer)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                self._writer.close()

    def readable(self) -> bool:
        """True: a stream to read."""
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all the rest for ``n < 0``); ``b""`` at the end.

        Raises:
            RuntimeError: serialising failed (its exception is the cause).
        """
        data = self._reader.read(n)
        if not data:
            self._thread.join()
            if self._error is not None:
                raise RuntimeError(f"torch.save failed: {self._error}") from self._error
        return data

    def close(self) -> None:
        """Close the pipe and wait for the thread."""
        if not self.closed:
            self._reader.close()
            self._thread.join()
        super().close()


class OperationCounter:
    """S3 requests a boto3 client sends by operation (``UploadPart``, ...), and its retries.

    Counted by botocore's ``before-call`` event (once per request) and ``request-created`` events of
    attempts after the first. The client is a transfer's own
    (:meth:`pipelines.storage.s3.S3Storage.with_connections`), so its counts are that transfer's.
    """

    def __init__(self, client):
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._retries = 0
        client.meta.events.register("before-call.s3", self._count)
        client.meta.events.register("request-created.s3", self._count_retry)

    def _count(self, model=None, **_kwargs) -> None:
        name = getattr(model, "name", "unknown")
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def _count_retry(self, request=None, **_kwargs) -> None:
        attempt = getattr(request, "context", {}).get("retries", {}).get("attempt", 1)
        if attempt > 1:
            with self._lock:
                self._retries += 1

    def retries(self) -> int:
        """The attempts retried so far."""
        with self._lock:
            return self._retries

    def counts(self) -> dict[str, int]:
        """The requests so far, by operation."""
        with self._lock:
            return dict(self._counts)


# -- a cold read ---------------------------------------------------------------------------------


def make_cold(location, method: str, index: int) -> str:
    """Evict checkpoint ``index`` of ``method`` from the page cache where its bytes live here.

    fs, or the local S3 server's files; called once per node, after every rank wrote.

    Returns:
        What a read then finds (the ``cache`` column): ``evicted``, ``new client (the server's own
        cache is not cleared)`` for a remote S3 endpoint, ``not evicted (no posix_fadvise here)``,
            or
        ``nothing found to evict in <folder>``.

    Raises:
        StorageError: a file of the checkpoint cannot be opened.
    """
    if isinstance(location, FsLocation):
        folder = location.folder(method, index)
    elif location.local_dir is not None:
        folder = location.local_dir / location.key(method, index)
    else:
        return "new client (the server's own cache is not cleared)"
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        return f"nothing found to evict in {folder}"
    try:
        evicted = evict_page_cache(files)
    except OSError as exc:
        raise StorageError(f"cannot evict {exc.filename}: {exc.strerror}") from None
    return "evicted" if evicted else "not evicted (no posix_fadvise here)"


def remove(location, method: str, index: int, *, everything: bool = False) -> None:
    """Delete checkpoint ``index`` of ``method``, or with ``everything`` all the run wrote.

    Only the run's own folder or prefix. fs: once per node (a missing folder is fine); S3: once.

    Raises:
        StorageError: the deletion failed.
    """
    if isinstance(location, FsLocation):
        try:
            shutil.rmtree(location.root if everything else location.folder(method, index))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {exc.filename}: {exc.strerror}") from None
        return
    prefix = "" if everything else location.key(method, index)
    for key in list(relative_keys(location.storage, prefix)):
        location.storage.delete(f"{prefix}/{key}" if prefix else key)
