"""The ``sweep`` section: what ``make sweep`` searches, and the command's configuration."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from common.settings import Int, Section, Str, Unique
from training.config import ClientLib, Config, Pattern


class SweepSection(Section):
    """The sweep's MLPerf Storage workload and accelerator, and how its points are measured."""

    workload: Literal["retinanet", "unet3d", "resnet50", "cosmoflow", "bccd"] = Field(
        "retinanet",
        description="MLPerf Storage v3.0 workload: retinanet, unet3d (closed), resnet50, cosmoflow "
        "(whatif), or bccd (this tool's detector, its step time measured here)",
    )
    accelerator: Literal["b200", "mi355", "h100", "a100"] = Field(
        "b200",
        description="the simulated accelerator: b200, mi355 (closed), h100, a100 (whatif)",
    )
    samples: Int = Field(
        1000,
        ge=2,
        description="samples generated to the profile for the sweep (MLPerf's size rules are "
        "checked and reported)",
    )
    max_accelerators: Annotated[Int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="the most simulated accelerators (ranks) tried; auto: as many as this node's "
        "memory hosts (one rank measured first); make sweep NPROC=N sets N x NNODES",
    )
    points: Annotated[list[Annotated[Int, Field(ge=1)]], Unique] = Field(
        [],
        description="accelerator counts to measure, no search (a curve), e.g. [1, 2, 4, 8] "
        "(ACCELERATORS=1,2,4,8); empty: search",
    )
    rules: Literal["quick", "closed"] = Field(
        "quick",
        description="quick: state MLPerf Storage v3.0's unmet rules and answer; closed: no answer "
        "unless every rule holds (exit status 2 before running, 3 after)",
    )
    storages: Annotated[list[Literal["fs", "s3"]], Unique] = Field(
        ["fs", "s3"],
        description="storages searched: the filesystem, and S3 (without an endpoint: a local "
        "server started for the sweep and filled with the dataset)",
    )
    client_lib: ClientLib = Field(
        "boto3",
        description="s3 client library",
    )
    access: Annotated[list[Pattern], Unique] = Field(
        ["random", "shards"],
        description="access patterns searched: random (map-style), objects, shards",
    )
    workers: Int = Field(
        -1,
        ge=-1,
        description="DataLoader workers per rank; -1: the profile's read_threads",
    )
    steps: Int = Field(
        100,
        ge=1,
        description="measured steps per point and rank (rules=closed: one epoch, at least 500)",
    )
    warmup_steps: Int = Field(
        1,
        ge=0,
        description="steps left out at the start of every point (MLPerf leaves out the first)",
    )
    sync: Literal["step", "none"] = Field(
        "step",
        description="step: the simulated accelerators wait for each other at every step "
        "(data-parallel training, DLIO's barrier); none: each on its own",
    )
    repeats: Int = Field(
        3,
        ge=1,
        description="runs at the answer in all, the search's first, then new seeds (rules=closed: "
        "a warm-up run and 5 more); their mean and spread are reported",
    )
    decode: bool = Field(
        False,
        description="decode the images (MLPerf Storage does not)",
    )
    data_dir: Str = Field(
        "data/sweep",
        description="where datasets generated to a profile are kept (one folder per profile and "
        "size)",
    )


class SweepConfig(Config):
    """What ``make sweep`` reads: the shared sections and ``sweep``."""

    sweep: SweepSection = Field(default_factory=SweepSection)
