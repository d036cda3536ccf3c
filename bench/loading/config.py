"""The ``bench`` section: the matrix ``make bench`` measures, and the command's configuration."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from common.settings import Float, Int, Section, Unique
from training.config import ClientLib, Config, Pattern


class BenchSection(Section):
    """The benchmark matrix (modes, patterns, storages, libraries, workers, ranks) and passes."""

    modes: Annotated[list[Literal["read", "emulate", "train"]], Unique] = Field(
        ["read", "emulate", "train"],
        description="read: read + decode only; emulate: + a fixed compute time per step; train: "
        "real model",
    )
    access: Annotated[list[Pattern], Unique] = Field(
        ["random", "objects", "shards"],
        description="access patterns: random (map-style), objects (listing order, N reads), shards",
    )
    storages: Annotated[list[Literal["fs", "s3"]], Unique] = Field(
        ["fs", "s3"],
        description="storage back ends; s3 without an endpoint starts a local server for the run",
    )
    client_libs: Annotated[list[ClientLib], Unique] = Field(
        ["boto3", "s3torchconnector"],
        description="s3 client libraries to compare (boto3, s3torchconnector: the AWS CRT, "
        "s3dlio: MLPerf Storage v3.0's); each library's own datasets join the peers",
    )
    worker_counts: Annotated[list[Annotated[Int, Field(ge=0)]], Unique] = Field(
        [],
        description="DataLoader worker counts to compare; empty: loader.num_workers",
    )
    ranks: Annotated[list[Annotated[Int, Field(ge=1)]], Unique] = Field(
        [1],
        description="rank counts to compare (one rank per accelerator, torchrun): every "
        "configuration runs at each; make bench NPROC=N sets [N x NNODES]",
    )
    steps: Int = Field(
        12,
        ge=1,
        description="emulate, train: measured steps per configuration and pass",
    )
    read_steps: Int = Field(
        500,
        ge=1,
        description="read: measured steps per configuration and pass (epochs read back to back as "
        "needed; a cold pass that cannot evict before each read stops after one epoch)",
    )
    warmup_steps: Int = Field(
        2,
        ge=0,
        description="steps run before measuring (excluded from figures)",
    )
    passes: Int = Field(
        2,
        ge=1,
        description="passes per configuration: the first is cold, the others warm",
    )
    repeats: Int = Field(
        3,
        ge=1,
        description="times each read pass is measured, each right before its raw baseline and peer "
        "(A B A B); ratios are the median over them with their spread",
    )
    computation_time_s: Float = Field(
        0.2,
        ge=0.0,
        description="emulate: seconds of compute per step (MLPerf Storage / DLIO computation_time)",
    )
    decode: bool = Field(
        True,
        description="decode and transform images in the benchmark; false measures the read path "
        "alone",
    )
    sync: Literal["step", "none"] = Field(
        "step",
        description="emulate on several ranks: step = the ranks wait for each other at every step "
        "(a barrier, as data-parallel training and DLIO do); none = each rank steps on its own",
    )
    baselines: bool = Field(
        True,
        description="measure a raw read baseline after each pass (cat over files, boto3 GETs)",
    )
    peers: bool = Field(
        True,
        description="measure peer loaders (ImageFolder-style, s3torchconnector)",
    )
    on_error: Literal["continue", "stop"] = Field(
        "continue",
        description="a configuration that fails: continue (a row with its error; exit status 1 at "
        "the end) or stop (the run ends there; the rows written so far are kept)",
    )


class BenchConfig(Config):
    """What ``make bench`` reads: the shared sections and ``bench``."""

    bench: BenchSection = Field(default_factory=BenchSection)


def bench_config(cfg: Config, bench: BenchSection) -> BenchConfig:
    """``cfg``'s shared sections with ``bench`` (how the sweep runs bench passes its own way)."""
    return BenchConfig(**{name: getattr(cfg, name) for name in Config.model_fields}, bench=bench)
