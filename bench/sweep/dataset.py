"""The dataset a sweep reads: generated to the workload's profile, disk space checked first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.ranks import main_process_first
from bench.sweep.config import SweepConfig
from bench.sweep.workloads import Workload
from datagen.images import SynthSpec
from datagen.synthetic import SPLIT_DIR, generate_dataset
from pipelines.storage.filesystem import FileSystemStorage
from training.config import ConfigError
from training.distributed import Ranks

#: Share of a disk's free space a sweep may fill: the rest stays for the outputs, the logs and
#: whatever else writes there meanwhile.
DISK_SHARE = 0.9


def dataset_folder(cfg: SweepConfig, w: Workload) -> Path:
    """The dataset folder of ``w``: bccd's configured one, else ``<data_dir>/<key>-<samples>``."""
    if w.name == "bccd":
        return Path(cfg.storage.root) / cfg.storage.prefixes[0]
    return Path(cfg.sweep.data_dir) / f"{w.key}-{cfg.sweep.samples}"


def dataset_samples(folder: Path) -> int:
    """The samples of the dataset at ``folder`` (its train split's ids); 0 without a split file."""
    split = folder / SPLIT_DIR / "train.txt"
    return len(split.read_text().split()) if split.exists() else 0


def sweep_dataset(cfg: SweepConfig, w: Workload, ranks: Ranks) -> Path:
    """The dataset the sweep reads (:func:`dataset_folder`); rank 0 generates it when missing.

    Missing or incomplete (its split file is written last); the other ranks wait. ``sweep.samples``
    JPEGs drawn to the profile's sample size (:mod:`datagen.synthetic`, lognormal with the profile's
    mean and standard deviation). Samples larger than a JPEG the generator draws (unet3d's 146.6 MB
    volumes) are a JPEG followed by random bytes up to their size
    (:data:`datagen.images.LARGEST_JPEG_BYTES`). A generation that fails removes what it wrote.

    Raises:
        ConfigError: the dataset would not fit on the disk that takes it (checked before it is
            generated: :func:`check_disk`).
    """
    folder = dataset_folder(cfg, w)
    if w.name == "bccd":
        return folder
    spec = SynthSpec(mean_bytes=round(w.sample_bytes), std_bytes=round(w.sample_stdev_bytes))

    def generate() -> None:
        if dataset_samples(folder):  # the split file is written last: the dataset is whole
            return
        check_disk(cfg, w, folder)
        print(f"generating {cfg.sweep.samples} samples of {w.key} into {folder}")
        try:
            generate_dataset(
                FileSystemStorage(folder), spec, cfg.sweep.samples, test_fraction=0.0,
                overwrite=True,  # over what an interrupted generation left
                workers=os.cpu_count() or 1,
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no split file: nothing whole to keep
            raise

    main_process_first(generate, ranks)
    return folder


def copies(cfg: SweepConfig) -> int:
    """Copies of the samples' bytes a sweep writes to this machine's disk.

    The samples; their shards when a swept access pattern reads shards; a local S3 server's copy of
    both when ``s3`` is swept without an endpoint.
    """
    on_disk = 2 if "shards" in cfg.sweep.access else 1
    endpoint = cfg.storage.endpoint_url or os.environ.get("S3_ENDPOINT")
    if "s3" in cfg.sweep.storages and not endpoint:
        on_disk *= 2
    return on_disk


def check_disk(cfg: SweepConfig, w: Workload, folder: Path) -> None:
    """Refuse a dataset whose :func:`copies` exceed :data:`DISK_SHARE` of ``folder``'s free space.

    A local S3 server keeps its copy under ``outputs/``, assumed to be on the same disk.

    Raises:
        ConfigError: with the figures and the most samples that would fit.
    """
    n = copies(cfg)
    per_sample = w.sample_bytes * n
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    if cfg.sweep.samples * per_sample > DISK_SHARE * free:
        fit = int(DISK_SHARE * free // per_sample)
        what = ["the samples"]
        if "shards" in cfg.sweep.access:
            what.append("their shards")
        if n > len(what):
            what.append("a local S3 server's copy")
        raise ConfigError(
            f"sweep.samples={cfg.sweep.samples} of {w.key} ({w.sample_bytes / 1e6:.1f} MB each, "
            f"{n} cop{'y' if n == 1 else 'ies'}: {', '.join(what)}) need about "
            f"{cfg.sweep.samples * per_sample / 1e9:.1f} GB but {free / 1e9:.1f} GB are free on "
            f"{existing}: set sweep.samples to at most {fit}, or sweep.data_dir to a larger disk"
        )
