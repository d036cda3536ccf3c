"""MLPerf Storage v3.0's training workloads: what one simulated accelerator asks of storage.

Every value is the DLIO workload file's, repository ``mlcommons/storage``, release tag ``v3.0``
(``ce28a98``, named in ``mlpstorage_py/rules/editions.yaml``), folder ``configs/dlio/workload/``;
the commit in each profile's ``source`` is the stored version of the file the values were read from.
Sizes are bytes (MB = 10^6 bytes); times are seconds. Closed and open results may emulate ``b200``
and ``mi355`` running ``retinanet`` or ``unet3d`` (``mlpstorage_py/config.py``: ``MODELS_CLOSED``,
``ACCELERATORS_CLOSED``); the others are "whatif" profiles only. ``unet3d`` on ``mi355`` has no
profile (:data:`MISSING`).
"""

from __future__ import annotations

from dataclasses import dataclass

from training.config import ConfigError

#: Where every profile's file lives (the release tag, then the folder).
RELEASE = "mlcommons/storage v3.0 (ce28a98) configs/dlio/workload/"

#: Profiles the release names but does not ship, with why there is none.
MISSING = {
    "unet3d_mi355": (
        "MLPerf Storage v3.0 lists unet3d on mi355 as a closed workload "
        "(mlpstorage_py/rules/editions.yaml) but ships no configs/dlio/workload/"
        "unet3d_mi355.yaml: there are no values to emulate; use ACCELERATOR=b200"
    )
}


@dataclass(frozen=True)
class Workload:
    """One MLPerf Storage training workload on one kind of accelerator.

    Attributes:
        name: ``retinanet``, ``unet3d``, ``resnet50``, ``cosmoflow`` (or ``bccd``, this
            tool's own).
        accelerator: the simulated accelerator (``b200``, ``mi355``, ``h100``, ``a100``).
        division: ``closed`` (closed and open results may use it) or ``whatif``.
        source: the file the values come from (release, path, stored commit).
        file_format: the files' format in MLPerf's dataset (``jpeg``, ``npz``, ``tfrecord``).
        sample_bytes: mean size of one sample (``record_length_bytes``).
        sample_stdev_bytes: its standard deviation (``record_length_bytes_stdev``; 0: none).
        samples_per_file: samples in one file (``num_samples_per_file``).
        batch_size: samples per step per accelerator (``reader.batch_size``).
        read_threads: reader threads per accelerator (``reader.read_threads``: DataLoader
            workers).
        computation_time_s: seconds of computation per step (``train.computation_time``;
            None: measured on this machine).
        au_threshold: the AU a run must keep, 0 to 1 (``metric.au``).
        mlperf_files: ``num_files_train`` of the file.
        epochs: ``train.epochs`` of the file.
    """

    name: str
    accelerator: str
    division: str
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
    epochs: int

    @property
    def key(self) -> str:
        """``<name>_<accelerator>``, as MLPerf names its workload files."""
        return f"{self.name}_{self.accelerator}"


def _v3(name: str, accelerator: str, division: str, commit: str, *values) -> Workload:
    """A v3.0 release profile; ``values`` in :class:`Workload`'s order from ``file_format``."""
    source = f"{RELEASE}{name}_{accelerator}.yaml (read at {commit})"
    return Workload(name, accelerator, division, source, *values)


#: The profiles, by ``<name>_<accelerator>``. Columns: format, bytes, stdev, samples per file,
#: batch, read threads, computation time, AU, files, epochs.
WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (
        _v3("retinanet", "b200", "closed", "11460d00",
            "jpeg", 322_957, 0, 1, 24, 8, 0.04755, 0.85, 1_170_301, 8),
        _v3("retinanet", "mi355", "closed", "76f45459",
            "jpeg", 322_957, 0, 1, 32, 8, 0.0634, 0.85, 1_170_301, 8),
        _v3("retinanet", "h100", "whatif", "fa240126",
            "jpeg", 153_600, 51_200, 1, 16, 8, 0.180, 0.85, 1_743_042, 5),
        _v3("retinanet", "a100", "whatif", "c8d70b66",
            "jpeg", 153_600, 51_200, 1, 16, 8, 0.210, 0.85, 1_743_042, 5),
        _v3("unet3d", "b200", "closed", "0d75b417",
            "npz", 146_600_628, 68_341_808, 1, 7, 4, 0.162, 0.90, 7200, 5),
        _v3("unet3d", "h100", "whatif", "7e73663b",
            "npz", 146_600_628, 68_341_808, 1, 7, 4, 0.323, 0.90, 168, 5),
        _v3("unet3d", "a100", "whatif", "d70e0b6f",
            "npz", 146_600_628, 68_341_808, 1, 7, 4, 0.636, 0.90, 168, 5),
        _v3("resnet50", "h100", "whatif", "ac0424fa",
            "tfrecord", 114_660.07, 0, 1251, 400, 8, 0.224, 0.90, 1024, 5),
        _v3("resnet50", "a100", "whatif", "be18c3e5",
            "tfrecord", 114_660.07, 0, 1251, 400, 8, 0.435, 0.90, 1024, 5),
        _v3("cosmoflow", "h100", "whatif", "c25079c2",
            "tfrecord", 2_828_486, 71_311, 1, 1, 4, 0.00350, 0.70, 524_288, 5),
        _v3("cosmoflow", "a100", "whatif", "e3ffed05",
            "tfrecord", 2_828_486, 71_311, 1, 1, 4, 0.00551, 0.70, 524_288, 5),
        Workload(
            name="bccd",
            accelerator="here",
            division="whatif",
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
            epochs=1,
        ),
    )
}  # fmt: skip


def workload(name: str, accelerator: str = "b200") -> Workload:
    """The profile ``name`` (``retinanet``, ``unet3d``, ``resnet50``, ``cosmoflow``, ``bccd``).

    Raises:
        ConfigError: no such profile for ``accelerator``; the message says why (the release ships
            none) or lists the profiles there are.
    """
    if name == "bccd":
        return WORKLOADS["bccd_here"]
    key = f"{name}_{accelerator}"
    if key in MISSING:
        raise ConfigError(f"no workload profile {key}: {MISSING[key]}")
    found = WORKLOADS.get(key)
    if found is None:
        raise ConfigError(
            f"no workload profile {name!r} for accelerator {accelerator!r}; profiles: "
            + ", ".join(sorted(WORKLOADS))
        )
    return found
