"""The configuration of a run: one frozen section per subject, read from YAML with overrides.

:class:`Config` (storage, dataset, access, loader, model, train, output) is what ``make train`` (and
``predict``, ``write_shards``) reads; each benchmark adds its section in its package
(``bench.loading.config``, ``bench.sweep.config``, ``bench.checkpoint.config``). Validation is
:mod:`common.settings`'s; ``python -m scripts.<command> --keys`` lists a command's keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from common.errors import ConfigError
from common.settings import Float, Int, Name, Section, Str, Unique, describe, load
from pipelines.access.loaders import LoaderSettings

__all__ = ["ConfigError", "Config", "load_config", "describe_keys"]

#: The access patterns, one word each in the training config (``access.pattern``), the
#: benchmark's (``bench.access``, ``sweep.access``) and every output's ``access`` column;
#: ``sequential`` is accepted everywhere as the shards pattern's other name.
ACCESS_PATTERNS = ("random", "shards", "objects")
#: The streaming pattern's other name: ``ACCESS=sequential`` (the command this tool was asked
#: for) reads the tar shards front to back, as ``shards`` does.
SEQUENTIAL = "sequential"
#: Detector architectures (``models.detector.ARCHITECTURES``; listed here so that reading a
#: config does not import torchvision).
DETECTOR_ARCHS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")
#: Classifier architectures (``models.classifier.ARCHITECTURES``).
CLASSIFIER_ARCHS = ("convnet", "resnet18")
#: The dataset formats that hold what each task learns from (``auto`` detects one of them).
TASK_FORMATS = {"detection": ("voc", "coco", "oid", "csv"), "classification": ("folder",)}
#: Sections that other commands read: left out of a file given to this command, refused as an
#: override (:func:`common.settings.load`).
ELSEWHERE = {"bench": "make bench", "sweep": "make sweep", "checkpoint": "make checkpoint-bench"}
#: Keys of earlier versions, refused with the key that replaced them.
REPLACED_KEYS = {
    "mode": "access.pattern: random, shards (sequential) or objects",
    "sequential_source": "access.pattern: shards (sequential) or objects",
}


def _pattern(value: Any) -> Any:
    """``sequential`` is the shards pattern; other values as given (checked after)."""
    return "shards" if value == SEQUENTIAL else value


#: An access pattern (``sequential``: shards).
Pattern = Annotated[Literal["random", "shards", "objects"], BeforeValidator(_pattern)]

#: S3 client libraries: boto3, s3torchconnector (the AWS CRT), s3dlio (MLPerf Storage v3.0's).
ClientLib = Literal["boto3", "s3torchconnector", "s3dlio"]


class StorageSection(Section):
    """Where the dataset lives."""

    type: Literal["fs", "s3"] = Field(
        "fs",
        description="storage back end; fs: a directory (local disk, NFS, a mounted volume); s3: a "
        "bucket",
    )
    root: Str = Field(
        "data",
        description="fs: the directory holding the dataset folders named in prefixes",
    )
    endpoint_url: Str | None = Field(
        None,
        description="s3: endpoint URL (MinIO, DSS, ...); null: the local server of `make s3-up` "
        "when it runs, else AWS",
    )
    region: Str | None = Field(
        None,
        description="s3: region; null: AWS_DEFAULT_REGION or the profile's",
    )
    bucket: Str | None = Field(
        None,
        description="s3: bucket; null: S3_BUCKET from the environment",
    )
    prefixes: Annotated[list[Str], Unique] = Field(
        ["bccd"],
        description="dataset folders under root (fs) or key prefixes in the bucket (s3); several: "
        "sources with the same classes read as one dataset; '' is root itself",
    )
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        "path",
        description="s3: path (endpoint/bucket/key, for custom endpoints) or virtual "
        "(bucket.endpoint)",
    )
    client_lib: ClientLib = Field(
        "boto3",
        description="s3: client library: boto3, s3torchconnector (AWS CRT), or s3dlio (MLPerf "
        "Storage v3.0's object client)",
    )
    max_pool_connections: Int = Field(
        16,
        ge=1,
        description="s3: HTTP connections per process (>= concurrent reads)",
    )
    max_attempts: Int = Field(
        5,
        ge=1,
        description="s3: attempts per request, first included (standard retry mode)",
    )
    connect_timeout_s: Float = Field(
        5.0,
        ge=0.1,
        description="s3: seconds to connect",
    )
    read_timeout_s: Float = Field(
        30.0,
        ge=0.1,
        description="s3: seconds to wait for a response or a socket read",
    )
    list_workers: Int = Field(
        1,
        ge=1,
        description="s3: threads listing sub-prefixes in parallel",
    )


class DatasetSection(Section):
    """Which images and labels to read."""

    format: Str = Field(
        "auto",
        description="dataset layout; voc: Pascal VOC; coco: COCO JSON per split folder (Roboflow "
        "export); oid: Open Images as the OIDv4 toolkit downloads it; csv: TF Object Detection "
        "API / Roboflow CSV, one row per box; folder: <split>/<Class>/*.jpg (classification); "
        "auto: detected from the files; or your own reader: path/to/file.py:function",
    )
    split: Literal["auto", "files", "hash"] = Field(
        "auto",
        description="how the splits are made; files: the dataset's own split files or folders; "
        "hash: every image of it, split by a hash of its id with split_ratios (for a dataset "
        "without splits); auto: files when the dataset has the split, else hash (config.yaml "
        "records which)",
    )
    split_ratios: list[Annotated[Float, Field(ge=0)]] = Field(
        [0.8, 0.1, 0.1],
        description="hash split: the fractions of the images in train, val and test (summing to 1)",
    )
    train_split: Str = Field(
        "train",
        description="split trained on (voc: ImageSets/Main/<name>.txt; coco, oid, folder: its "
        "folder)",
    )
    eval_split: Str = Field(
        "test",
        description="split evaluated after each epoch (mAP, or top-1/top-5 accuracy)",
    )
    classes: Annotated[list[Name], Unique] = Field(
        [],
        description="class names in label order; empty: sorted names found in the training split",
    )
    limit: Int | None = Field(
        None,
        ge=1,
        description="use only the first N images of each split (quick runs); null: all",
    )
    shards_prefix: Str = Field(
        "shards",
        description="where the shards access pattern keeps its tar shards",
    )
    shard_size_mb: Float | None = Field(
        None,
        ge=0.001,
        description="target shard size in MB (10^6 bytes); null: at most 1 MB and small enough "
        "for 2 shards per reader (ranks x DataLoader workers)",
    )


class AccessSection(Section):
    """How the training loop reads the data."""

    pattern: Pattern = Field(
        "shards",
        description="random: map-style, one read per sample in the sampler's order; shards (or "
        "sequential): WebDataset tar shards front to back; objects: the image objects in listing "
        "order, one read each",
    )
    concurrency: Int = Field(
        8,
        ge=1,
        description="objects: reads in flight per DataLoader worker",
    )
    shuffle: bool = Field(
        True,
        description="shuffle training samples (sampler, or shard order + buffer)",
    )
    shuffle_buffer: Int = Field(
        64,
        ge=1,
        description="shards, objects: samples in each worker's shuffle buffer",
    )
    on_corrupt: Literal["skip", "stop"] = Field(
        "skip",
        description="an undecodable image: skip it and count it, or stop the run",
    )


class ModelSection(Section):
    """The model: a detector or a classifier, as ``task`` says."""

    arch: Str = Field(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        description="detection: a torchvision Faster R-CNN (fasterrcnn_mobilenet_v3_large_320_fpn, "
        "fasterrcnn_resnet50_fpn); classification: convnet (the original DSS tool's, 32x32) or "
        "resnet18; or your own: path/to/file.py:function or package.module:function",
    )
    pretrained: bool = Field(
        True,
        description="start from torchvision's weights (COCO; ImageNet for resnet18) when cached or "
        "downloadable",
    )
    image_size: Int = Field(
        320,
        ge=32,
        description="detection: shorter side in pixels; classification: images become N x N",
    )
    grayscale: bool = Field(
        False,
        description="classification: one luma channel instead of RGB (the original ConvNet)",
    )
    rpn_pre_nms_top_n_train: Int = Field(
        1000,
        ge=1,
        description="training: RPN proposals kept before NMS, per FPN level (torchvision: 2000)",
    )
    rpn_post_nms_top_n_train: Int = Field(
        500,
        ge=1,
        description="training: RPN proposals kept after NMS (torchvision: 2000)",
    )
    box_batch_size_per_image: Int = Field(
        128,
        ge=1,
        description="training: RoIs sampled per image for the box head (torchvision: 512)",
    )


class TrainSection(Section):
    """The optimisation."""

    epochs: Int = Field(
        6,
        ge=1,
        description="training epochs",
    )
    lr: Float = Field(
        0.001,
        ge=0.0,
        description="peak learning rate (linear warm-up, then cosine decay)",
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="optimizer",
    )
    momentum: Float = Field(
        0.9,
        ge=0.0,
        description="sgd: momentum",
    )
    weight_decay: Float = Field(
        0.0001,
        ge=0.0,
        description="weight decay",
    )
    task: Str = Field(
        "",
        description="your own training class: path/to/file.py:Class, a subclass of "
        "training.tasks.DetectionTask or ClassificationTask (the loss, and optionally the "
        "optimizer and evaluation); empty: the built-in task",
    )
    seed: Int = Field(
        0,
        description="seed for model init, sampler and shuffles",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto (cuda when available), cpu or cuda",
    )
    dist_timeout_s: Float = Field(
        600.0,
        ge=1.0,
        description="several ranks (torchrun): seconds a collective may wait for the other ranks; "
        "a rank that died or hangs stops the others after this long",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32; bf16 or fp16: mixed precision (torch.autocast; fp16 with a gradient "
        "scaler), as GPUs train",
    )
    checkpoint_every_steps: Int | None = Field(
        None,
        ge=0,
        description="steps between step checkpoints (model, optimizer, RNG and the loader's "
        "position: a SIGKILL loses at most these steps; SIGTERM or Ctrl-C write one at once); "
        "null: about every 5 minutes, estimated from the first steps; 0: at epoch ends only",
    )


class OutputSection(Section):
    """Where results go."""

    dir: Str = Field(
        "outputs/detection",
        description="output directory (model, metrics, log, checkpoint)",
    )
    tensorboard: bool = Field(
        False,
        description="also write the run's charts as TensorBoard event files in OUT/tensorboard "
        "(tensorboard --logdir outputs)",
    )
    trace: bool = Field(
        False,
        description="write trace.csv: one row per training sample read (epoch, rank, worker, step, "
        "id, bytes, read start and end in seconds from the run's start)",
    )


class Config(Section):
    """What ``make train`` reads: the task and the shared sections."""

    task: Literal["detection", "classification"] = Field(
        "detection", description="what to train (TASK=...)"
    )
    storage: StorageSection = Field(default_factory=StorageSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    access: AccessSection = Field(default_factory=AccessSection)
    loader: LoaderSettings = Field(default_factory=LoaderSettings)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)


def load_config(
    path: str | Path | None, overrides: list[str] = (), command: type[Config] = Config
) -> Config:
    """Read a YAML config file and apply ``section.key=value`` overrides on top.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: strings like ``train.epochs=3``; values are parsed as YAML scalars.
        command: the command's configuration class (:class:`Config` or a benchmark's, which adds its
            section).

    Raises:
        ConfigError: unreadable file, unknown key, invalid value (the key is named), a key of an
            earlier version (naming the one that replaced it), or a key another command reads.
    """
    cfg = load(command, path, overrides, ELSEWHERE, _refuse_replaced_keys)
    return check_task(cfg)


def _refuse_replaced_keys(data: dict) -> dict:
    """``data`` as given, unless it holds an access key of an earlier version.

    Raises:
        ConfigError: ``access.mode`` or ``access.sequential_source``, naming the key that
            replaced it.
    """
    access = data.get("access")
    for old, new in REPLACED_KEYS.items():
        if isinstance(access, dict) and old in access:
            raise ConfigError(f"access.{old} was replaced by {new}")
    return data


def check_task(cfg: Config) -> Config:
    """Refuse a model or dataset format that the task cannot use; returns ``cfg``.

    Raises:
        ConfigError: naming the key and what the task allows.
    """
    archs = DETECTOR_ARCHS if cfg.task == "detection" else CLASSIFIER_ARCHS
    formats = ("auto", *TASK_FORMATS[cfg.task])
    own = ":" in cfg.model.arch  # the user's function (models/own_model.py), checked there
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


def describe_keys(command: type[Config] = Config) -> list[tuple[str, Any, str]]:
    """``(key, default, description)`` for every key of ``command``, in declaration order."""
    return describe(command)
