"""Run configuration: one YAML file per task, overridden by Make variables and CLI flags.

Every key has a default, a type and a one-line description (:func:`describe_keys`; printed by
``python -m scripts.train --keys``; the README's table shows the main ones). Unknown keys and
invalid values raise :class:`ConfigError` naming the key and what is allowed. The resolved
configuration is saved with every run.

Why one module of this size: it is the table of every key (one declaration each, with its
default, type and description, which ``--help`` and the README print) and the loader that
checks them; splitting the table would scatter what a user looks up in one place.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

log = logging.getLogger(__name__)

#: The access patterns, one word each in the training config (``access.pattern``), the
#: benchmark's (``bench.access``, ``sweep.access``) and every output's ``access`` column;
#: ``sequential`` is accepted everywhere as the shards pattern's other name.
ACCESS_PATTERNS = ("random", "shards", "objects")


#: Detector architectures (``models.detector.ARCHITECTURES``; listed here so that reading a
#: config does not import torchvision).
DETECTOR_ARCHS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")
#: Classifier architectures (``models.classifier.ARCHITECTURES``).
CLASSIFIER_ARCHS = ("convnet", "resnet18")
#: The dataset formats that hold what each task learns from (``auto`` detects one of them).
TASK_FORMATS = {"detection": ("voc", "coco", "oid", "csv"), "classification": ("folder",)}


def opt(
    default: Any,
    help: str,
    *,
    kind: type,
    choices: tuple = (),
    minimum=None,
    nullable=False,
    item_kind: type = str,
    allow_empty: bool = False,
    auto: bool = False,
):
    """Declare a configuration key: its default, type, allowed values and description.

    For ``kind=list``, ``item_kind`` is the type of the items and ``choices`` / ``minimum``
    apply to each item; ``allow_empty`` accepts empty strings as items; ``auto`` accepts the
    word ``auto`` besides values of ``kind``.
    """
    meta = {
        "auto": auto,
        "help": help,
        "kind": kind,
        "choices": choices,
        "minimum": minimum,
        "nullable": nullable,
        "item_kind": item_kind,
        "allow_empty": allow_empty,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class StorageConfig:
    """Where the dataset lives."""

    type: str = opt(
        "fs",
        "storage back end; fs: a directory (local disk, NFS, a mounted volume); s3: a bucket",
        kind=str,
        choices=("fs", "s3"),
    )
    root: str = opt(
        "data", "fs: the directory holding the dataset folders named in prefixes", kind=str
    )
    endpoint_url: str | None = opt(
        None,
        "s3: endpoint URL (MinIO, DSS, ...); null: the local server of `make s3-up` when it "
        "runs, else AWS",
        kind=str,
        nullable=True,
    )
    region: str | None = opt(
        None, "s3: region; null: AWS_DEFAULT_REGION or the profile's", kind=str, nullable=True
    )
    bucket: str | None = opt(
        None, "s3: bucket; null: S3_BUCKET from the environment", kind=str, nullable=True
    )
    prefixes: list = opt(
        ["bccd"],
        "dataset folders under root (fs) or key prefixes in the bucket (s3); several: sources "
        "with the same classes read as one dataset; '' is root itself",
        kind=list,
        allow_empty=True,
    )
    addressing_style: str = opt(
        "path",
        "s3: path (endpoint/bucket/key, for custom endpoints) or virtual (bucket.endpoint)",
        kind=str,
        choices=("path", "virtual", "auto"),
    )
    client_lib: str = opt(
        "boto3",
        "s3: client library: boto3, or s3torchconnector (AWS CRT)",
        kind=str,
        choices=("boto3", "s3torchconnector"),
    )
    max_pool_connections: int = opt(
        16, "s3: HTTP connections per process (>= concurrent reads)", kind=int, minimum=1
    )
    max_attempts: int = opt(
        5, "s3: attempts per request, first included (standard retry mode)", kind=int, minimum=1
    )
    connect_timeout_s: float = opt(5.0, "s3: seconds to connect", kind=float, minimum=0.1)
    read_timeout_s: float = opt(
        30.0, "s3: seconds to wait for a response or a socket read", kind=float, minimum=0.1
    )
    list_workers: int = opt(1, "s3: threads listing sub-prefixes in parallel", kind=int, minimum=1)


@dataclass(frozen=True)
class DatasetConfig:
    """Which images and labels to read."""

    format: str = opt(
        "auto",
        "dataset layout; voc: Pascal VOC; coco: COCO JSON per split folder (Roboflow export); "
        "oid: Open Images as the OIDv4 toolkit downloads it; csv: TF Object Detection API / "
        "Roboflow CSV, one row per box; folder: <split>/<Class>/*.jpg (classification); auto: "
        "detected from the files; or your own reader: path/to/file.py:function",
        kind=str,
    )
    split: str = opt(
        "auto",
        "how the splits are made; files: the dataset's own split files or folders; hash: every "
        "image of it, split by a hash of its id with split_ratios (for a dataset without "
        "splits); auto: files when the dataset has the split, else hash (config.yaml records "
        "which)",
        kind=str,
        choices=("auto", "files", "hash"),
    )
    split_ratios: list = opt(
        [0.8, 0.1, 0.1],
        "hash split: the fractions of the images in train, val and test (summing to 1)",
        kind=list,
        item_kind=float,
        minimum=0,
    )
    train_split: str = opt(
        "train",
        "split trained on (voc: ImageSets/Main/<name>.txt; coco, oid, folder: its folder)",
        kind=str,
    )
    eval_split: str = opt(
        "test", "split evaluated after each epoch (mAP, or top-1/top-5 accuracy)", kind=str
    )
    classes: list = opt(
        [],
        "class names in label order; empty: sorted names found in the training split",
        kind=list,
    )
    limit: int | None = opt(
        None,
        "use only the first N images of each split (quick runs); null: all",
        kind=int,
        minimum=1,
        nullable=True,
    )
    shards_prefix: str = opt(
        "shards", "where the shards access pattern keeps its tar shards", kind=str
    )
    shard_size_mb: float = opt(
        1.0, "target shard size in MB (10^6 bytes)", kind=float, minimum=0.001
    )


@dataclass(frozen=True)
class AccessConfig:
    """How the training loop reads the data."""

    pattern: str = opt(
        "shards",
        "random: map-style, one read per sample in the sampler's order; shards (or "
        "sequential): WebDataset tar shards front to back; objects: the image objects in "
        "listing order, one read each",
        kind=str,
        choices=ACCESS_PATTERNS,
    )
    concurrency: int = opt(8, "objects: reads in flight per DataLoader worker", kind=int, minimum=1)
    shuffle: bool = opt(
        True, "shuffle training samples (sampler, or shard order + buffer)", kind=bool
    )
    shuffle_buffer: int = opt(
        64, "shards, objects: samples in each worker's shuffle buffer", kind=int, minimum=1
    )
    on_corrupt: str = opt(
        "skip",
        "an undecodable image: skip it and count it, or stop the run",
        kind=str,
        choices=("skip", "stop"),
    )


@dataclass(frozen=True)
class LoaderConfig:
    """torch DataLoader settings."""

    batch_size: int = opt(4, "images per training step", kind=int, minimum=1)
    num_workers: int = opt(
        2, "DataLoader worker processes (0: read in the main process)", kind=int, minimum=0
    )
    prefetch_factor: int = opt(
        2,
        "transfers each worker reads ahead (a batch; shards, objects: up to worker_batches "
        "batches)",
        kind=int,
        minimum=1,
    )
    persistent_workers: bool = opt(False, "keep workers alive between epochs", kind=bool)
    pin_memory: bool = opt(False, "pin host memory for faster copies to a GPU", kind=bool)
    worker_batches: int = opt(
        64,
        "shards, objects: most batches a worker sends per transfer (fewer when they hold "
        "over 4 MiB of decoded images); 1: one batch per transfer",
        kind=int,
        minimum=1,
    )


@dataclass(frozen=True)
class ModelConfig:
    """The model: a detector or a classifier, as ``task`` says."""

    arch: str = opt(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "detection: a torchvision Faster R-CNN (fasterrcnn_mobilenet_v3_large_320_fpn, "
        "fasterrcnn_resnet50_fpn); classification: convnet (the original DSS tool's, 32x32) or "
        "resnet18; or your own: path/to/file.py:function or package.module:function",
        kind=str,
    )
    pretrained: bool = opt(
        True,
        "start from torchvision's weights (COCO; ImageNet for resnet18) when cached or "
        "downloadable",
        kind=bool,
    )
    image_size: int = opt(
        320,
        "detection: shorter side in pixels; classification: images become N x N",
        kind=int,
        minimum=32,
    )
    grayscale: bool = opt(
        False, "classification: one luma channel instead of RGB (the original ConvNet)", kind=bool
    )
    rpn_pre_nms_top_n_train: int = opt(
        1000,
        "training: RPN proposals kept before NMS, per FPN level (torchvision: 2000)",
        kind=int,
        minimum=1,
    )
    rpn_post_nms_top_n_train: int = opt(
        500, "training: RPN proposals kept after NMS (torchvision: 2000)", kind=int, minimum=1
    )
    box_batch_size_per_image: int = opt(
        128,
        "training: RoIs sampled per image for the box head (torchvision: 512)",
        kind=int,
        minimum=1,
    )


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation."""

    epochs: int = opt(6, "training epochs", kind=int, minimum=1)
    lr: float = opt(
        0.001, "peak learning rate (linear warm-up, then cosine decay)", kind=float, minimum=0.0
    )
    optimizer: str = opt("adamw", "optimizer", kind=str, choices=("adamw", "sgd"))
    momentum: float = opt(0.9, "sgd: momentum", kind=float, minimum=0.0)
    weight_decay: float = opt(0.0001, "weight decay", kind=float, minimum=0.0)
    seed: int = opt(0, "seed for model init, sampler and shuffles", kind=int)
    device: str = opt(
        "auto", "auto (cuda when available), cpu or cuda", kind=str, choices=("auto", "cpu", "cuda")
    )
    dist_timeout_s: float = opt(
        600.0,
        "several ranks (torchrun): seconds a collective may wait for the other ranks; a rank "
        "that died or hangs stops the others after this long",
        kind=float,
        minimum=1.0,
    )
    precision: str = opt(
        "fp32",
        "fp32; bf16 or fp16: mixed precision (torch.autocast; fp16 with a gradient scaler), as "
        "GPUs train",
        kind=str,
        choices=("fp32", "bf16", "fp16"),
    )


@dataclass(frozen=True)
class BenchConfig:
    """The benchmark matrix of `make bench` (ignored by `make train`)."""

    modes: list = opt(
        ["read", "emulate", "train"],
        "read: read + decode only; emulate: + a fixed compute time per step; train: real model",
        kind=list,
        choices=("read", "emulate", "train"),
    )
    access: list = opt(
        ["random", "objects", "shards"],
        "access patterns: random (map-style), objects (listing order, N reads), shards",
        kind=list,
        choices=ACCESS_PATTERNS,
    )
    storages: list = opt(
        ["fs", "s3"],
        "storage back ends; s3 without an endpoint starts a local server for the run",
        kind=list,
        choices=("fs", "s3"),
    )
    client_libs: list = opt(
        ["boto3", "s3torchconnector"],
        "s3 client libraries to compare (boto3, s3torchconnector: the AWS CRT, which the S3 "
        "peers use too)",
        kind=list,
        choices=("boto3", "s3torchconnector"),
    )
    worker_counts: list = opt(
        [],
        "DataLoader worker counts to compare; empty: loader.num_workers",
        kind=list,
        item_kind=int,
        minimum=0,
    )
    ranks: list = opt(
        [1],
        "rank counts to compare (one rank per accelerator, torchrun): every configuration runs "
        "at each; make bench NPROC=N sets [N x NNODES]",
        kind=list,
        item_kind=int,
        minimum=1,
    )
    steps: int = opt(
        12, "emulate, train: measured steps per configuration and pass", kind=int, minimum=1
    )
    read_steps: int = opt(
        500,
        "read: measured steps per configuration and pass (epochs read back to back as needed; "
        "a cold pass that cannot evict before each read stops after one epoch)",
        kind=int,
        minimum=1,
    )
    warmup_steps: int = opt(
        2, "steps run before measuring (excluded from figures)", kind=int, minimum=0
    )
    passes: int = opt(
        2, "passes per configuration: the first is cold, the others warm", kind=int, minimum=1
    )
    repeats: int = opt(
        3,
        "times each read pass is measured, each right before its raw baseline and peer (A B A "
        "B); ratios are the median over them with their spread",
        kind=int,
        minimum=1,
    )
    computation_time_s: float = opt(
        0.2,
        "emulate: seconds of compute per step (MLPerf Storage / DLIO computation_time)",
        kind=float,
        minimum=0.0,
    )
    decode: bool = opt(
        True,
        "decode and transform images in the benchmark; false measures the read path alone",
        kind=bool,
    )
    sync: str = opt(
        "step",
        "emulate on several ranks: step = the ranks wait for each other at every step (a "
        "barrier, as data-parallel training and DLIO do); none = each rank steps on its own",
        kind=str,
        choices=("step", "none"),
    )
    baselines: bool = opt(
        True, "measure a raw read baseline after each pass (cat over files, boto3 GETs)", kind=bool
    )
    peers: bool = opt(True, "measure peer loaders (ImageFolder-style, s3torchconnector)", kind=bool)
    on_error: str = opt(
        "continue",
        "a configuration that fails: continue (a row with its error; exit status 1 at the "
        "end) or stop (the run ends there; the rows written so far are kept)",
        kind=str,
        choices=("continue", "stop"),
    )


@dataclass(frozen=True)
class SweepConfig:
    """The accelerator sweep of `make sweep` (ignored by `make train` and `make bench`)."""

    workload: str = opt(
        "retinanet",
        "MLPerf Storage v3.0 workload: retinanet, unet3d (closed), resnet50, cosmoflow (whatif), "
        "or bccd (this tool's detector, its step time measured here)",
        kind=str,
        choices=("retinanet", "unet3d", "resnet50", "cosmoflow", "bccd"),
    )
    accelerator: str = opt(
        "b200",
        "the simulated accelerator: b200, mi355 (closed), h100, a100 (whatif)",
        kind=str,
        choices=("b200", "mi355", "h100", "a100"),
    )
    samples: int = opt(
        1000,
        "samples generated to the profile for the sweep (MLPerf's size rules are checked and "
        "reported)",
        kind=int,
        minimum=2,
    )
    max_accelerators: int | str = opt(
        "auto",
        "the most simulated accelerators (ranks) tried; auto: as many as this node's memory "
        "hosts (one rank measured first); make sweep NPROC=N sets N x NNODES",
        kind=int,
        minimum=1,
        auto=True,
    )
    points: list = opt(
        [],
        "accelerator counts to measure, no search (a curve), e.g. [1, 2, 4, 8] "
        "(ACCELERATORS=1,2,4,8); empty: search",
        kind=list,
        item_kind=int,
        minimum=1,
    )
    rules: str = opt(
        "quick",
        "quick: state MLPerf Storage v3.0's unmet rules and answer; closed: no answer unless "
        "every rule holds (exit status 2 before running, 3 after)",
        kind=str,
        choices=("quick", "closed"),
    )
    storages: list = opt(
        ["fs", "s3"],
        "storages searched: the filesystem, and S3 (without an endpoint: a local server "
        "started for the sweep and filled with the dataset)",
        kind=list,
        choices=("fs", "s3"),
    )
    client_lib: str = opt(
        "boto3", "s3 client library", kind=str, choices=("boto3", "s3torchconnector")
    )
    access: list = opt(
        ["random", "shards"],
        "access patterns searched: random (map-style), objects, shards",
        kind=list,
        choices=ACCESS_PATTERNS,
    )
    workers: int = opt(
        -1,
        "DataLoader workers per rank; -1: the profile's read_threads",
        kind=int,
        minimum=-1,
    )
    steps: int = opt(
        100,
        "measured steps per point and rank (rules=closed: one epoch, at least 500)",
        kind=int,
        minimum=1,
    )
    warmup_steps: int = opt(
        1,
        "steps left out at the start of every point (MLPerf leaves out the first)",
        kind=int,
        minimum=0,
    )
    sync: str = opt(
        "step",
        "step: the simulated accelerators wait for each other at every step (data-parallel "
        "training, DLIO's barrier); none: each on its own",
        kind=str,
        choices=("step", "none"),
    )
    repeats: int = opt(
        3,
        "runs at the answer in all, the search's first, then new seeds (rules=closed: a "
        "warm-up run and 5 more); their mean and spread are reported",
        kind=int,
        minimum=1,
    )
    decode: bool = opt(False, "decode the images (MLPerf Storage does not)", kind=bool)
    data_dir: str = opt(
        "data/sweep",
        "where datasets generated to a profile are kept (one folder per profile and size)",
        kind=str,
    )


@dataclass(frozen=True)
class CheckpointConfig:
    """The checkpoint workload of `make checkpoint-bench` (ignored by the other commands)."""

    size_gb: float = opt(
        1.0,
        "total checkpoint size in GB (10^9 bytes) over all ranks, each rank writing an equal "
        "part of random bf16 tensors; ignored with checkpoint.model",
        kind=float,
        minimum=0.000001,
    )
    model: str = opt(
        "",
        "a training run's folder (e.g. outputs/detection): its checkpoint.pt's tensors (model "
        "and optimizer state), split over the ranks, instead of size_gb of random tensors",
        kind=str,
    )
    ranks: int = opt(
        1,
        "ranks writing and reading their parts at once; make checkpoint-bench NPROC=N sets "
        "N x NNODES",
        kind=int,
        minimum=1,
    )
    storages: list = opt(
        ["fs", "s3"],
        "storages written to: the filesystem (checkpoint.fs_dir), and S3 (without an "
        "endpoint: a local server started for the run)",
        kind=list,
        choices=("fs", "s3"),
    )
    methods: list = opt(
        ["torch.save", "dcp"],
        "torch.save: one file (fs, fsync) or object (S3, boto3 multipart upload) per rank; "
        "dcp: torch.distributed.checkpoint (fs: FileSystemWriter; S3: s3torchconnector's "
        "S3StorageWriter)",
        kind=list,
        choices=("torch.save", "dcp"),
    )
    checkpoints: int = opt(
        3,
        "checkpoints written, each then read back, compared and deleted (MLPerf Storage "
        "writes and reads 10)",
        kind=int,
        minimum=1,
    )
    concurrency: int = opt(
        8,
        "per rank: multipart parts or ranged GETs in flight (boto3), writer threads (dcp)",
        kind=int,
        minimum=1,
    )
    part_size_mib: int = opt(
        16, "S3 multipart part and ranged GET size in MiB (2^20 bytes)", kind=int, minimum=5
    )
    fs_dir: str = opt(
        "",
        "fs: the folder checkpoints are written to, on the filesystem under test (every node "
        "sees the same folder for dcp); empty: <storage.root>/checkpoint-bench",
        kind=str,
    )
    s3_prefix: str = opt(
        "checkpoint-bench", "s3: key prefix of the checkpoints in storage.bucket", kind=str
    )


@dataclass(frozen=True)
class OutputConfig:
    """Where results go."""

    dir: str = opt(
        "outputs/detection", "output directory (model, metrics, log, checkpoint)", kind=str
    )
    tensorboard: bool = opt(
        False,
        "also write the run's charts as TensorBoard event files in OUT/tensorboard "
        "(tensorboard --logdir outputs)",
        kind=bool,
    )
    trace: bool = opt(
        False,
        "write trace.csv: one row per training sample read (epoch, rank, worker, step, id, "
        "bytes, read start and end in seconds from the run's start)",
        kind=bool,
    )


@dataclass(frozen=True)
class Config:
    """A whole run."""

    task: str = opt(
        "detection", "what to train (TASK=...)", kind=str, choices=("detection", "classification")
    )
    storage: StorageConfig = field(default_factory=StorageConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        """The configuration as plain dicts and lists (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file and apply ``section.key=value`` overrides on top.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: strings like ``train.epochs=3``; values are parsed as YAML scalars.

    Raises:
        ConfigError: unreadable file, unknown key, or invalid value (the key is named).
    """
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.strip().split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {section} is not a section")
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    return check_task(_build(Config, _first_class_words(data), ""))


#: The streaming pattern's other name: ``ACCESS=sequential`` (the command this tool was asked
#: for) reads the tar shards front to back, as ``shards`` does.
SEQUENTIAL = "sequential"

#: Keys of earlier versions, refused with the key that replaced them.
REPLACED_KEYS = {
    "mode": "access.pattern: random, shards (sequential) or objects",
    "sequential_source": "access.pattern: shards (sequential) or objects",
}


def _pattern(value):
    """``sequential`` is the shards pattern; other values as given (checked later)."""
    return "shards" if value == SEQUENTIAL else value


def _first_class_words(data: dict) -> dict:
    """``data`` with ``sequential`` read as ``shards`` wherever an access pattern is named
    (``access.pattern``, ``bench.access``, ``sweep.access``).

    Raises:
        ConfigError: an access key of an earlier version (``access.mode``,
            ``access.sequential_source``), naming the key that replaced it.
    """
    access = data.get("access")
    if isinstance(access, dict):
        for old, new in REPLACED_KEYS.items():
            if old in access:
                raise ConfigError(f"access.{old} was replaced by {new}")
        if "pattern" in access:
            data = {**data, "access": {**access, "pattern": _pattern(access["pattern"])}}
    for section in ("bench", "sweep"):
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get("access"), list):
            data = {**data, section: {**block, "access": [_pattern(a) for a in block["access"]]}}
    return data


def check_task(cfg: Config) -> Config:
    """Refuse a model or dataset format that the task cannot use; returns ``cfg``.

    Raises:
        ConfigError: naming the key and what the task allows.
    """
    archs = DETECTOR_ARCHS if cfg.task == "detection" else CLASSIFIER_ARCHS
    formats = ("auto", *TASK_FORMATS[cfg.task])
    own = ":" in cfg.model.arch  # the user's function (models/entry_point.py), checked there
    if cfg.model.arch not in archs and not own:
        raise ConfigError(
            f"model.arch {cfg.model.arch!r} cannot do task {cfg.task}; choose {', '.join(archs)}, "
            "or your own model as path/to/file.py:function"
        )
    if cfg.dataset.format not in formats and ":" not in cfg.dataset.format:
        raise ConfigError(
            f"dataset.format {cfg.dataset.format!r} has no labels for task {cfg.task}; choose "
            f"{', '.join(formats)}, or your own reader as path/to/file.py:function"
        )
    ratios = cfg.dataset.split_ratios
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(
            f"dataset.split_ratios {ratios} must be three fractions (train, val, test) summing "
            "to 1, e.g. [0.8, 0.1, 0.1]"
        )
    if cfg.model.arch == "convnet" and cfg.model.image_size != 32:
        raise ConfigError(
            f"model.image_size must be 32 for model.arch convnet (its linear layers expect "
            f"32x32 inputs); got {cfg.model.image_size}"
        )
    return cfg


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; allowed keys{where}: {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(
            f.default_factory if f.default_factory is not dataclasses.MISSING else None
        ):
            values[name] = _build(f.default_factory, data[name], f"{prefix}{name}.")
        else:
            values[name] = _check(f"{prefix}{name}", data[name], f.metadata)
    return cls(**values)


def _check(key: str, value: Any, meta) -> Any:
    kind, choices, minimum = meta["kind"], meta["choices"], meta["minimum"]
    if meta["auto"] and value == "auto":
        return value
    if value is None:
        if meta["nullable"]:
            return None
        raise ConfigError(f"{key} must be set ({meta['help']})")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in (int, float) and isinstance(value, str):
        try:
            value = kind(value)  # YAML reads 5e-4 (no dot) as a string
        except ValueError:
            pass
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        value = value.lower() in ("true", "1")
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        also = " or auto" if meta["auto"] else ""
        raise ConfigError(f"{key} must be {kind.__name__}{also}, got {value!r} ({meta['help']})")
    if kind is list:
        return _check_list(key, value, meta)
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}; got {value!r}")
    return value


def _check_list(key: str, value: list, meta) -> list:
    item_kind, choices, minimum = meta["item_kind"], meta["choices"], meta["minimum"]
    what = "names" if item_kind is str else f"{item_kind.__name__}s"
    if item_kind is float:  # YAML reads 0 and 1 as ints
        value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    if not all(isinstance(v, item_kind) and not isinstance(v, bool) for v in value) or (
        item_kind is str and not meta["allow_empty"] and not all(value)
    ):
        raise ConfigError(f"{key} must be a list of {what}; got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} lists an item twice: {value!r}")
    for item in value:
        if choices and item not in choices:
            raise ConfigError(f"{key}: {item!r} is not one of {', '.join(choices)}")
        if minimum is not None and item < minimum:
            raise ConfigError(f"{key}: {item!r} must be >= {minimum}")
    return value


def describe_keys(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(key, default, description)`` for every configuration key, in declaration order."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
            f.default_factory
        ):
            rows.extend(describe_keys(f.default_factory, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        allowed = f" ({' | '.join(meta['choices'])})" if meta["choices"] else ""
        rows.append((f"{prefix}{f.name}", default, meta["help"] + allowed))
    return rows
