"""Workload profiles from MLPerf Storage, and its rules on the size of a benchmark dataset.

A profile says what one simulated accelerator of a named kind asks of storage in one MLPerf
Storage training workload: the size of its samples, how many a file holds, the batch it takes
per step, how many reader threads feed it, how long its computation takes per step (the
``computation_time`` a simulated accelerator sleeps, DLIO's emulation) and the AU it must keep.
Every value is copied from the DLIO workload configuration named in the profile's ``source``
(repository ``mlcommons/storage``, file and commit); MLPerf does not decode samples. Sizes are
bytes; MB = 10^6 bytes.

Released with MLPerf Storage v2.0 (``main`` at ``caa90c9c``, the same files as the
``v2.0-branch``): ``resnet50`` and ``unet3d`` for ``a100`` and ``h100``, with their AU minimums
from ``Submission_guidelines.md`` §2.1, Table 1 (90 % for both). ``retinanet`` (JPEG files, the
workload closest to this tool's detector) exists only in later, unreleased commits of the same
repository, whose values changed between commits: its profiles name the commit they were read
at, and its 85 % threshold comes from those files (no rules document states one yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import ConfigError

#: MLPerf Storage v2.0, ``Submission_guidelines.md`` §6.6: the dataset is at least this many
#: times the memory of all client nodes together.
MEMORY_MULTIPLE = 5
#: The same, §7: at least this many steps per epoch for every accelerator.
MIN_STEPS_PER_EPOCH = 500

_V2 = "mlcommons/storage@caa90c9c (MLPerf Storage v2.0) configs/dlio/workload/"
_DEV = "mlcommons/storage@{commit} (unreleased, after v2.0) configs/dlio/workload/"


@dataclass(frozen=True)
class Workload:
    """One MLPerf Storage training workload on one kind of accelerator.

    Attributes:
        name: ``retinanet``, ``resnet50``, ``unet3d`` (or ``bccd``, this tool's own).
        accelerator: the accelerator whose step time ``computation_time_s`` is (``h100``...).
        source: where the values come from (repository, commit, file).
        file_format: the files' format in MLPerf's dataset (``jpeg``, ``tfrecord``, ``npz``).
        sample_bytes: mean size of one sample (``record_length_bytes``).
        sample_stdev_bytes: its standard deviation (``record_length_bytes_stdev``; 0 if none).
        samples_per_file: samples in one file (``num_samples_per_file``).
        batch_size: samples per step per accelerator.
        read_threads: reader threads per accelerator (``read_threads``: DataLoader workers).
        computation_time_s: seconds of computation per step (None: measured on this machine).
        au_threshold: the AU a run must keep to pass, 0 to 1.
        mlperf_files: ``num_files_train`` of MLPerf's configuration (its full dataset).
    """

    name: str
    accelerator: str
    source: str
    file_format: str
    sample_bytes: float
    sample_stdev_bytes: float
    samples_per_file: int
    batch_size: int
    read_threads: int
    computation_time_s: float | None
    au_threshold: float
    mlperf_files: int

    @property
    def key(self) -> str:
        """``<name>_<accelerator>``, as MLPerf names its configuration files."""
        return f"{self.name}_{self.accelerator}"


def _retinanet(accelerator: str, commit: str, computation_time_s: float) -> Workload:
    return Workload(
        "retinanet", accelerator, _DEV.format(commit=commit) + f"retinanet_{accelerator}.yaml",
        "jpeg", 153_600, 51_200, 1, 16, 8, computation_time_s, 0.85, 1_743_042,
    )  # fmt: skip


def _resnet50(accelerator: str, computation_time_s: float) -> Workload:
    return Workload(
        "resnet50", accelerator, _V2 + f"resnet50_{accelerator}.yaml",
        "tfrecord", 114_660.07, 0, 1251, 400, 8, computation_time_s, 0.90, 1024,
    )  # fmt: skip


def _unet3d(accelerator: str, computation_time_s: float) -> Workload:
    return Workload(
        "unet3d", accelerator, _V2 + f"unet3d_{accelerator}.yaml",
        "npz", 146_600_628, 68_341_808, 1, 7, 4, computation_time_s, 0.90, 168,
    )  # fmt: skip


#: The profiles, by ``<name>_<accelerator>``; ``bccd`` is this tool's detector on the embedded
#: dataset, its step time measured on the machine at hand.
WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (
        _retinanet("h100", "fa240126", 0.180),
        _retinanet("a100", "c8d70b66", 0.210),
        _resnet50("h100", 0.224),
        _resnet50("a100", 0.435),
        _unet3d("h100", 0.323),
        _unet3d("a100", 0.636),
        Workload(
            name="bccd",
            accelerator="here",
            source="this tool: data/bccd's train split (205 JPEGs, mean 20.8 kB, sd 0.9 kB), "
            "configs/detection.yaml's batch and workers, the detector's step time measured",
            file_format="jpeg",
            sample_bytes=20_845,
            sample_stdev_bytes=935,
            samples_per_file=1,
            batch_size=4,
            read_threads=2,
            computation_time_s=None,
            au_threshold=0.90,
            mlperf_files=205,
        ),
    )
}


def workload(name: str, accelerator: str = "h100") -> Workload:
    """The profile ``name`` (``retinanet``, ``resnet50``, ``unet3d``, ``bccd``) for
    ``accelerator``.

    Raises:
        ConfigError: no such profile; the message lists the profiles there are.
    """
    if name == "bccd":
        return WORKLOADS["bccd_here"]
    found = WORKLOADS.get(f"{name}_{accelerator}")
    if found is None:
        raise ConfigError(
            f"no workload profile {name!r} for accelerator {accelerator!r}; profiles: "
            + ", ".join(sorted(WORKLOADS))
        )
    return found


@dataclass(frozen=True)
class Rule:
    """One of MLPerf Storage's rules on the dataset, checked for a run.

    Attributes:
        name: ``memory`` (dataset >= 5x the clients' memory) or ``steps`` (>= 500 steps per
            epoch for every accelerator).
        met: whether the run's dataset meets it.
        text: one sentence for the report, with the figures.
    """

    name: str
    met: bool
    text: str


def min_samples(w: Workload, accelerators: int, hosts: int, host_memory_bytes: int) -> int:
    """The fewest samples MLPerf Storage allows for ``accelerators`` accelerators on ``hosts``
    client nodes of ``host_memory_bytes`` each: the larger of ``MEMORY_MULTIPLE`` x their memory
    in samples and ``MIN_STEPS_PER_EPOCH`` steps of every accelerator (MLPerf Storage v2.0
    ``Submission_guidelines.md`` §7; ``mlpstorage/rules.py``, ``calculate_training_data_size``).
    """
    by_memory = math.ceil(MEMORY_MULTIPLE * hosts * host_memory_bytes / w.sample_bytes)
    by_steps = MIN_STEPS_PER_EPOCH * w.batch_size * accelerators
    return max(by_memory, by_steps)


def check_rules(
    w: Workload, samples: int, accelerators: int, hosts: int, host_memory_bytes: int
) -> list[Rule]:
    """MLPerf Storage's dataset rules for a run of ``samples`` samples of ``w`` on
    ``accelerators`` accelerators spread over ``hosts`` client nodes of ``host_memory_bytes``
    of memory each (see :func:`min_samples`); each rule says whether it is met, with the
    figures."""
    dataset = samples * w.sample_bytes
    memory = MEMORY_MULTIPLE * hosts * host_memory_bytes
    steps = samples // (w.batch_size * accelerators)
    return [
        Rule(
            "memory",
            dataset >= memory,
            f"dataset {dataset / 1e9:.3g} GB; MLPerf Storage asks at least {MEMORY_MULTIPLE}x "
            f"the memory of the {hosts} client node(s), {memory / 1e9:.4g} GB",
        ),
        Rule(
            "steps",
            steps >= MIN_STEPS_PER_EPOCH,
            f"{steps} steps per epoch for each of {accelerators} accelerator(s) at batch "
            f"{w.batch_size}; MLPerf Storage asks at least {MIN_STEPS_PER_EPOCH}",
        ),
    ]
