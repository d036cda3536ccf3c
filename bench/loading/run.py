"""`make bench`: run the matrix on the filesystem and S3, with baselines and peers, then report.

The data is prepared on every storage (:mod:`bench.storages`), then each configuration runs
``bench.passes`` passes (the first cold), each ``read`` pass ``bench.repeats`` times, each time
followed by its raw baseline (:func:`run_pass`) and, for a warm read pass of one rank, its peer
(:func:`measure_peer`): A B C A B C, so that both sides of every ratio see the same state of the
machine (:mod:`bench.ratios`). With ``bench.ranks`` the run is one torchrun launch of the largest
count: every configuration runs at each rank count, its row the pass over all its ranks
(:func:`bench.loading.case.combine`); what is done once is rank 0's (:mod:`bench.ranks`). The tables
are written again after every pass. A configuration that fails gets a row with its ``error``;
``bench.on_error: continue`` (the default) goes on with the next, ``stop`` ends there.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.loading.baselines import BaselineResult, fs_read_baseline, s3_get_baseline
from bench.loading.case import (
    Case,
    case_steps,
    combine,
    expand_matrix,
    pass_repeat,
    rank_samples,
    run_case,
)
from bench.loading.config import BenchConfig
from bench.loading.diagnosis import MIN_BASELINE_S
from bench.loading.report import BASELINE_CPU_COLUMNS, write_tables
from bench.page_cache import EvictBeforeRead
from bench.ranks import (
    BenchRanks,
    agree_on_errors,
    attempt,
    check_counts,
    drop_group,
    error_text,
    everywhere,
    gather_agreed,
    with_fresh_group,
)
from bench.ratios import summarize
from bench.resources import ResourceSampler
from bench.storages import (
    PreparedStorage,
    Storages,
    case_files,
    case_keys,
    cold_dir,
)
from training import distributed
from training.config import ConfigError
from training.data import class_names
from training.distributed import ONE_RANK, Ranks
from training.meter import gc_frozen
from training.outputs import write_yaml
from training.tasks import class_to_index, load_task

if TYPE_CHECKING:
    from bench.loading.peers import PeerResult
    from pipelines.storage.s3 import S3Storage

log = logging.getLogger(__name__)

#: Most times a pass's objects are read over to make its raw baseline last
#: :data:`bench.loading.diagnosis.MIN_BASELINE_S` (:func:`measure_baseline`): 1,000 times the
#: embedded dataset's 4 MB is a few hundred milliseconds from the page cache.
MAX_BASELINE_ROUNDS = 1000


def measure_baseline(
    prepared: PreparedStorage,
    s3_storage: S3Storage | None,
    storage_kind: str,
    access: str,
    cfg: BenchConfig,
    *,
    repeat: int,
    evict_dir: Path | None,
    ranks: int = 1,
) -> BaselineResult | None:
    """The raw read of the same objects, ``repeat`` times over, at the pass's total concurrency.

    ``cat`` over the files (fs; one reading thread per rank) or a boto3 GET pool of ``ranks x
    access.concurrency`` threads (s3, through ``s3_storage``: the pass's own storage, or the boto3
    one over the same bucket for s3torchconnector passes; None: not measured). With ``evict_dir``
    every read is cold. It runs on rank 0's machine alone. A read over in less than
    :data:`bench.loading.diagnosis.MIN_BASELINE_S` is no measurement: the objects are read over
    again, as many more times as should last about twice that (at most :data:`MAX_BASELINE_ROUNDS`),
    until one lasts long enough.
    """
    if storage_kind == "fs":
        files = case_files(prepared, access)

        def read(rounds: int):
            return fs_read_baseline(files * rounds, cold=evict_dir is not None, threads=ranks)

    elif s3_storage is None:
        return None
    else:
        threads = ranks * cfg.access.concurrency
        keys = case_keys(prepared, access)
        client = s3_storage.with_connections(max(threads, s3_storage.max_pool_connections))

        def read(rounds: int):  # one client for every round: making one takes ~0.3 s
            return s3_get_baseline(client, keys * rounds, threads=threads, evict_dir=evict_dir)

    rounds = repeat
    with gc_frozen():  # one collection for every round (0.2 s with torch loaded)
        base = read(rounds)
        while base.seconds < MIN_BASELINE_S and rounds < MAX_BASELINE_ROUNDS:
            more = math.ceil(2 * MIN_BASELINE_S / max(base.seconds, 1e-3) * rounds)
            rounds = min(MAX_BASELINE_ROUNDS, max(more, 2 * rounds))
            base = read(rounds)
    return base


def run_pass(
    case: Case,
    pass_index: int,
    target: PreparedStorage,
    s3_storage: S3Storage | None,
    cfg: BenchConfig,
    classes: list[str],
    bench_ranks: BenchRanks,
) -> tuple[dict, list[dict], BaselineResult | None] | None:
    """One pass of one configuration on its ranks, then its raw baseline over as many bytes.

    Pass 0 is cold: with the files on this machine, every read evicts its file first and the pass
    lasts as many steps as a warm one; otherwise it reads one epoch. The baseline is measured right
    after the pass (same objects, epochs, cold or warm reads and total concurrency). Every rank
    calls it; the ranks of ``case.ranks`` read (:mod:`bench.ranks`), the others wait.

    Returns:
        On rank 0, ``(results row, step rows of every rank, baseline or None)``; None on the others.

    Raises:
        Exception: on every rank when the pass or the baseline failed on any.
    """
    subset = bench_ranks.subset(case.ranks)
    if case.mode == "train" or (case.mode == "emulate" and cfg.bench.sync == "step"):
        subset = with_fresh_group(subset)  # DDP's gradient exchange, or the per-step barrier
    try:
        return _run_pass(case, pass_index, target, s3_storage, cfg, classes, bench_ranks, subset)
    finally:
        drop_group(subset, bench_ranks.ranks.rank)


def _run_pass(case, pass_index, target, s3_storage, cfg, classes, bench_ranks, subset):
    """:func:`run_pass` on the ``subset`` of ranks that reads it."""
    part = subset.part(bench_ranks.ranks.rank)
    # one rank per node drops the node's page cache; cold only when every node's was dropped
    evicting = pass_index == 0 and subset.first_on_node(bench_ranks.ranks.rank, bench_ranks.node_of)
    dropped, error = None, None
    if evicting:
        dropped, error = attempt(lambda: cold_dir(target, case.access) is not None)
    evicted = gather_agreed(dropped, error)
    cold = pass_index == 0 and all(e for e in evicted if e is not None)
    evict_dir = target.local_dir if cold else None  # then every read evicts its file first
    if pass_index > 0:
        cache = "warm"
    elif evict_dir is not None:
        cache = "cold (each file evicted before it is read)"
    else:
        cache = "cold (first pass; cache not evicted)"
    shards = target.shards if case.access == "shards" else None
    repeat = pass_repeat(
        cfg, case_steps(case, cfg), rank_samples(target.records, shards, subset.size),
        single_epoch=pass_index == 0 and evict_dir is None,
    )  # fmt: skip
    storage = target.source.storage
    mine, error = None, None
    if part is not None:
        mine, error = attempt(lambda: run_case(
            case, cfg, EvictBeforeRead(storage, evict_dir) if evict_dir else storage,
            target.records, shards, classes, pass_index=pass_index, repeat=repeat, subset=subset,
            part=part, local_dir=target.local_dir,
        ))  # fmt: skip
    parts = [p for p in gather_agreed(mine, error) if p is not None]
    result, error = None, None
    if bench_ranks.ranks.main:
        result, error = attempt(lambda: pass_row(
            case, pass_index, parts, cache, target, s3_storage, cfg, repeat, evict_dir
        ))  # fmt: skip
    agree_on_errors(error)  # the others waited here while rank 0 measured the baseline
    return result


def pass_row(
    case: Case,
    pass_index: int,
    parts: list,
    cache: str,
    target: PreparedStorage,
    s3_storage: S3Storage | None,
    cfg: BenchConfig,
    repeat: int,
    evict_dir: Path | None,
) -> tuple[dict, list[dict], BaselineResult | None]:
    """Rank 0's side of :func:`run_pass`: the row from the ranks' parts, and the baseline."""
    row = combine(parts)
    steps = [{**s, "pass": pass_index} for p in parts for s in p.steps]
    base = None
    if cfg.bench.baselines:
        base = measure_baseline(
            target, s3_storage, case.storage, case.access, cfg, repeat=repeat, evict_dir=evict_dir,
            ranks=case.ranks,
        )  # fmt: skip
    row.update(
        config=case.name, mode=case.mode, access=case.access, storage=case.storage,
        client_lib=case.client_lib, workers=case.workers, cache=cache,
        baseline_mbps=getattr(base, "mbps", float("nan")),
        baseline_objects_per_s=getattr(base, "objects_per_s", float("nan")),
        baseline_s=getattr(base, "seconds", float("nan")),
    )  # fmt: skip
    row.update(
        base.cpu.figures(base.bytes, "baseline_")
        if base is not None
        else dict.fromkeys(BASELINE_CPU_COLUMNS, float("nan"))
    )
    row["pass"] = pass_index
    return row, steps, base


def error_row(case: Case, pass_index: int, exc: Exception) -> dict:
    """The results row of a configuration (pass) that failed: what it was, and its error."""
    return {
        "config": case.name, "mode": case.mode, "access": case.access, "storage": case.storage,
        "client_lib": case.client_lib, "workers": case.workers, "ranks": case.ranks,
        "pass": pass_index, "cache": "-", "error": error_text(exc),
    }  # fmt: skip


def run_bench(
    cfg: BenchConfig, out: Path, ranks: Ranks = ONE_RANK
) -> tuple[list[dict], list[dict], dict]:
    """Run the whole matrix; returns ``(results rows, step rows, extras)``.

    ``extras`` holds the baselines and peers measured, for the report, and ``peer_errors`` (peer
    name → error). Every rank calls it (in a process group when there are several); rank 0 alone
    writes into ``out`` and gets the rows, the other ranks get empty ones.

    Raises:
        ConfigError: ``bench.ranks`` does not fit the launch (:func:`bench.ranks.check_counts`), or
            train mode without decoding.
        Exception: the first failure, with ``bench.on_error: stop`` (a failed pass's row is written
            first; a storage that cannot be prepared has no row yet), on every rank.
    """
    if "train" in cfg.bench.modes and not cfg.bench.decode:
        raise ConfigError(
            "bench.modes has train but bench.decode is false: training needs decoded images"
        )
    check_counts(cfg.bench.ranks, ranks.world_size)
    run = _BenchRun(cfg, out, BenchRanks(ranks, cfg.bench.ranks))
    cases = expand_matrix(cfg)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(out / "config.yaml", cfg.to_dict())
    with contextlib.ExitStack() as stack:
        libs = [c.client_lib for c in cases if c.storage == "s3"]
        storages = Storages(
            cfg, out, run.bench_ranks, stack, cfg.bench.storages, libs, stop=run.stop
        )
        for case in cases:
            run.run_configuration(case, storages)
        distributed.barrier(long=True)  # every rank is done with the local server
    summarize(run.results)
    if ranks.main:
        write_tables(out, run.results, run.steps)
    return run.results, run.steps, run.extras()


@dataclass
class _BenchRun:
    """One :func:`run_bench` as it goes: its settings and what rank 0 has measured so far.

    The other ranks' lists stay empty; rank 0 writes them out after every pass.
    """

    cfg: BenchConfig
    out: Path
    bench_ranks: BenchRanks
    classes: list[str] | None = None
    results: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    baselines: list[tuple[str, int, BaselineResult]] = field(default_factory=list)
    peers: dict[str, list[PeerResult]] = field(default_factory=dict)
    peer_errors: dict[str, str] = field(default_factory=dict)

    @property
    def stop(self) -> bool:
        """Whether the first failure ends the run (``bench.on_error: stop``)."""
        return self.cfg.bench.on_error == "stop"

    def extras(self) -> dict:
        """The baselines, peers and peer errors measured, for the report."""
        return {"baselines": self.baselines, "peers": self.peers, "peer_errors": self.peer_errors}

    def run_configuration(self, case: Case, storages: Storages) -> None:
        """Run every pass of ``case`` on every rank, each followed by its peer.

        Each read pass runs ``bench.repeats`` times; a failure gets its row and ends the
        configuration (:meth:`failed`).
        """
        cfg = self.cfg
        try:
            target = storages.get(case.storage, case.client_lib)
        except Exception as exc:
            if self.stop:
                raise  # a storage that cannot be prepared has no row
            self.failed(case, 0, exc)
            return
        try:
            self.classes = self.classes or everywhere(lambda: class_names(cfg, target.records))
        except Exception as exc:
            self.failed(case, 0, exc)
            return
        repeats = cfg.bench.repeats if case.mode == "read" else 1  # the rows with ratios
        for pass_index, repeat in itertools.product(range(cfg.bench.passes), range(repeats)):
            try:
                measured = run_pass(
                    case, pass_index, target, storages.boto3(), cfg, self.classes,
                    self.bench_ranks,
                )  # fmt: skip
            except Exception as exc:
                self.failed(case, pass_index, exc)
                break  # the next passes of a failed configuration would fail alike
            peer = self.peer_of_pass(case, pass_index, storages)
            if measured is not None:  # rank 0
                self.add_pass(case, pass_index, repeat, measured, peer)

    def peer_of_pass(self, case: Case, pass_index: int, storages: Storages) -> PeerResult | None:
        """Measure on rank 0 the peer of the pass just run (:func:`peer_name`); others wait.

        Returns:
            The peer, or None when the pass has none, it failed, or on the other ranks.
        """
        name = peer_name(case, pass_index, self.cfg)
        if name is None:
            return None
        peer, error = None, None
        if self.bench_ranks.ranks.main:
            peer, error = attempt(
                functools.partial(
                    measure_peer, name, self.cfg, storages.prepared, self.classes, case.workers
                )
            )
            if error is not None:
                self.peer_errors[name] = error_text(error)
                log.error("peer %s failed: %s", name, self.peer_errors[name])
        agree_on_errors(error if self.stop else None)  # the others wait meanwhile
        if peer is not None:
            self.peers.setdefault(f"{name}, {case.workers} workers", []).append(peer)
        return peer

    def add_pass(
        self,
        case: Case,
        pass_index: int,
        repeat: int,
        measured: tuple[dict, list[dict], BaselineResult | None],
        peer: PeerResult | None,
    ) -> None:
        """Keep on rank 0 a pass's repeat (row with ratios, steps, baseline); write the tables."""
        row, pass_steps, base = measured
        row["repeat"] = repeat
        add_ratios(row, peer)
        self.results.append(row)
        self.steps.extend({**s, "repeat": repeat} for s in pass_steps)
        if base is not None:
            self.baselines.append((case.name, pass_index, base))
        write_tables(self.out, self.results, self.steps)

    def failed(self, case: Case, pass_index: int, exc: Exception) -> None:
        """Keep a failed configuration's error row and write the tables (rank 0).

        Raises:
            Exception: ``exc`` on every rank, with ``bench.on_error: stop``.
        """
        if self.bench_ranks.ranks.main:
            log.error("%s (pass %d) failed: %s", case.name, pass_index, error_text(exc))
            self.results.append(error_row(case, pass_index, exc))
            write_tables(self.out, self.results, self.steps)
        if self.stop:
            raise exc


def peer_name(case: Case, pass_index: int, cfg: BenchConfig) -> str | None:
    """The peer a pass is compared with (:data:`PEERS`), or None.

    Peers are single-process loaders that decode, compared with warm ``read`` passes of one rank
    that decode too; on S3 with the same client library (s3torchconnector's datasets, s3dlio's), so
    the ratio compares the loaders, not the clients.
    """
    if not (cfg.bench.peers and cfg.bench.decode) or case.mode != "read" or case.ranks != 1:
        return None
    if pass_index == 0:  # cold: the peer's reads would be warm
        return None
    lib = f"{case.client_lib}/" if case.storage == "s3" else ""
    name = f"{case.storage}/{lib}{case.access}"
    return name if name in PEERS else None


#: The comparisons that have a peer, and the peer (:func:`measure_peer`). s3dlio's iterable
#: dataset streams a whole prefix and takes no list of keys: objects over s3dlio have none.
PEERS = {
    "fs/random": "ImageFolder-style (PIL, a shuffled DataLoader)",
    "fs/shards": "webdataset.WebDataset over the same shards",
    "s3/s3torchconnector/random": "s3torchconnector S3MapDataset",
    "s3/s3torchconnector/objects": "s3torchconnector S3IterableDataset",
    "s3/s3dlio/random": "s3dlio ObjectStoreMapDataset",
}


def measure_peer(
    name: str,
    cfg: BenchConfig,
    prepared: dict[tuple[str, str], PreparedStorage],
    classes: list[str],
    workers: int,
) -> PeerResult | None:
    """Measure the peer loader of ``name`` (:data:`PEERS`) once over the prepared storage's objects.

    With the run's batch size, image size and classes, the compared pass's DataLoader ``workers``,
    and ``bench.read_steps`` batches (:mod:`bench.loading.peers`).

    Raises:
        ConfigError: the storage the peer reads was not prepared, or s3torchconnector cannot be
            imported.
        Exception: what the peer raised.
    """
    from bench.loading.peers import (
        imagefolder_peer,
        s3torchconnector_peer,
        s3torchconnector_reason,
        webdataset_peer,
    )

    lib = name.split("/")[1] if name.startswith("s3/") else "-"
    if name.startswith("fs/"):
        target = prepared[("fs", "-")]
    else:
        target = prepared.get(("s3", lib))
        if target is None:
            raise ConfigError(f"peer {name}: {lib} is not in bench.client_libs")
        if lib == "s3torchconnector" and s3torchconnector_reason() is not None:
            raise ConfigError(f"not measured: {s3torchconnector_reason()}")
    common = dict(
        batch_size=cfg.loader.batch_size, num_workers=workers, image_size=cfg.model.image_size,
        class_to_index=class_to_index(load_task(cfg), classes), task=cfg.task,
        # the epochs of the warm read pass it is compared with, read back to back as there
        epochs=pass_repeat(cfg, cfg.bench.read_steps, len(target.records), single_epoch=False),
        shuffle_buffer=cfg.access.shuffle_buffer,
        max_batches=cfg.bench.read_steps, warmup_batches=cfg.bench.warmup_steps,
    )  # fmt: skip
    # under the same sampler as our passes (bench.loading.case.run_case): its thread takes the
    # same share of this process's CPU on both sides
    with ResourceSampler():
        if name == "fs/shards":
            return webdataset_peer(case_files(target, "shards"), **common)
        if name == "fs/random":
            common.pop("shuffle_buffer")  # map-style: the sampler shuffles
            return imagefolder_peer(case_files(target, "random"), target.records, **common)
        storage = target.source.storage
        kind = "map" if name.endswith("/random") else "iterable"
        if kind == "map":
            common.pop("shuffle_buffer")
        if lib == "s3dlio":
            from bench.loading.s3dlio_peer import s3dlio_peer

            return s3dlio_peer(storage, [r.image_key for r in target.records], target.records,
                               **common)  # fmt: skip
        return s3torchconnector_peer(
            kind, storage.bucket, [r.image_key for r in target.records], target.records,
            endpoint=storage.endpoint_url, region=storage.region, **common,
        )  # fmt: skip


def add_ratios(row: dict, peer: PeerResult | None) -> None:
    """Set the row's own ``ratio_to_baseline`` and ``ratio_to_peer``.

    ``ratio_to_baseline``: MB/s over its baseline's; ``ratio_to_peer``: samples/s over ``peer``'s
    (NaN without a peer), both sides timed from the end of the warm-up
    (``samples_per_s_after_warmup``). :func:`bench.ratios.summarize` then gives each pass's median
    and spread over its repeats.
    """
    base = row.get("baseline_mbps", float("nan"))
    row["ratio_to_baseline"] = (
        row["throughput_mbps"] / base if base and base == base else float("nan")
    )
    row["peer_samples_per_s"] = peer.samples_per_s if peer is not None else float("nan")
    ours = row.get("samples_per_s_after_warmup", row["samples_per_s"])  # the peer's clock
    row["ratio_to_peer"] = (
        ours / peer.samples_per_s if peer is not None and peer.samples_per_s > 0 else float("nan")
    )
