"""The ``checkpoint`` section of ``make checkpoint-bench``, and the command's configuration."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from common.settings import Float, Int, Section, Str, Unique
from training.config import Config


class CheckpointSection(Section):
    """The checkpoint workload: its size, ranks, storages and methods."""

    size_gb: Float = Field(
        1.0,
        ge=0.000001,
        description="total checkpoint size in GB (10^9 bytes) over all ranks, each rank writing an "
        "equal part of random bf16 tensors; ignored with checkpoint.model",
    )
    model: Str = Field(
        "",
        description="a training run's folder (e.g. outputs/detection): its checkpoint.pt's tensors "
        "(model and optimizer state), split over the ranks, instead of size_gb of random tensors",
    )
    ranks: Int = Field(
        1,
        ge=1,
        description="ranks writing and reading their parts at once; make checkpoint-bench NPROC=N "
        "sets N x NNODES",
    )
    storages: Annotated[list[Literal["fs", "s3"]], Unique] = Field(
        ["fs", "s3"],
        description="storages written to: the filesystem (checkpoint.fs_dir), and S3 (without an "
        "endpoint: a local server started for the run)",
    )
    methods: Annotated[list[Literal["torch.save", "dcp", "s3dlio"]], Unique] = Field(
        ["torch.save", "dcp"],
        description="torch.save: one file (fs, fsync) or object (S3, boto3 multipart upload) per "
        "rank; dcp: torch.distributed.checkpoint (fs: FileSystemWriter; S3: s3torchconnector's "
        "S3StorageWriter); s3dlio: torch.save's object through s3dlio's multipart writer (S3 only)",
    )
    checkpoints: Int = Field(
        3,
        ge=1,
        description="checkpoints written, each then read back, compared and deleted (MLPerf "
        "Storage writes and reads 10)",
    )
    concurrency: Int = Field(
        8,
        ge=1,
        description="per rank: multipart parts or ranged GETs in flight (boto3), writer threads "
        "(dcp)",
    )
    part_size_mib: Int = Field(
        16,
        ge=5,
        description="S3 multipart part and ranged GET size in MiB (2^20 bytes)",
    )
    fs_dir: Str = Field(
        "",
        description="fs: the folder checkpoints are written to, on the filesystem under test "
        "(every node sees the same folder for dcp); empty: <storage.root>/checkpoint-bench",
    )
    s3_prefix: Str = Field(
        "checkpoint-bench",
        description="s3: key prefix of the checkpoints in storage.bucket",
    )


class CheckpointBenchConfig(Config):
    """What ``make checkpoint-bench`` reads: the shared sections and ``checkpoint``."""

    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
