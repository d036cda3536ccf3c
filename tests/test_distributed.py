"""Several ranks for real: torchrun (``python -m torch.distributed.run``) as a subprocess on a
free port, gloo on the CPU, ResNet-18 (BatchNorm) on a few BCCD cell crops, 2 DataLoader
workers per rank.

Each run checks what the issue asks of the scale-out: every rank runs the same number of
steps; the ranks together train on the split once, less a remainder that is counted; the
epoch's row is exactly the sum / mean / max of the per-rank rows; DDP kept the replicas
identical; distributed evaluation equals a single-process evaluation of the same weights; a
failing rank stops every rank within the timeout. The random and shards runs are preempted by a
SIGTERM to torchrun and resumed, so all of it holds for an epoch in two parts. (The benchmark on
1 and 2 ranks: ``test_bench_ranks.py``.)
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch

from common.process import free_ports
from models.classifier import load_trained_classifier
from pipelines.access.loaders import LoaderSettings, build_loader
from pipelines.formats.folders import load_folder_split
from pipelines.samples import classification_transform
from pipelines.storage.filesystem import FileSystemStorage
from scripts.train import main as train_main
from tests.helpers import REPO, RUN_LIMIT_S, finish, stop_at_first_checkpoint
from training import classification

pytestmark = [pytest.mark.integration, pytest.mark.distributed]


def torchrun(data, out: Path, *extra: str, nproc: int = 2, nodes: tuple = (), port=None, env=None):
    """Start ``scripts.train`` under torchrun (``scripts.launch``, as ``make train NPROC=``
    does) with ``nproc`` ranks on a free port, training on ``data`` (a folder, or an
    ``s3://`` URL with ``S3_ENDPOINT`` in ``env``); ``nodes``: ``(nnodes, node_rank,
    timeout_s)`` for one node of several."""
    launch = ["--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1"]
    launch += ["--master-port", str(port or free_ports(1)[0])]
    if nodes:
        nnodes, node_rank, timeout_s = nodes
        launch += ["--nnodes", str(nnodes), "--node-rank", str(node_rank)]
        launch += ["--rdzv-conf", f"timeout={timeout_s}"]
    command = [
        sys.executable, "-m", "scripts.launch", *launch,
        "-m", "scripts.train", "--config", "configs/classification.yaml",
        "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4",
        "--workers", "2", "--no-pretrained", "--arch", "resnet18",
        "--set", "model.image_size=64", "--set", "dataset.shard_size_mb=0.03",
        "--set", "train.dist_timeout_s=20", "--set", "output.trace=true", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    from tests.helpers import make_cells, make_voc_subset

    root = tmp_path_factory.mktemp("dist")
    voc = make_voc_subset(root / "bccd", {"train": 2, "test": 2})
    cells = make_cells(root / "cells", voc, {"train": 2, "test": 2})
    corrupt = sorted((cells / "train" / "RBC").glob("*.jpg"))[0]
    corrupt.write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 10)  # skipped, on one rank
    return cells


@pytest.fixture(scope="module")
def s3_cells(cells, s3_server):
    """The crops uploaded to the local S3 server: ``(data URL, environment for the run)``."""
    from datagen.upload import upload_tree
    from pipelines.storage.s3 import S3Storage

    bucket = "dist"
    S3Storage(bucket, endpoint_url=s3_server.endpoint).client().create_bucket(Bucket=bucket)
    upload_tree(cells, S3Storage(bucket, "cells", endpoint_url=s3_server.endpoint),
                progress=False)  # fmt: skip
    return f"s3://{bucket}/cells", {"S3_ENDPOINT": s3_server.endpoint}


@pytest.fixture(scope="module")
def random_run(cells, tmp_path_factory):
    """One 2-rank run of random access, one epoch, shared by the tests that only read it.
    Batches of one image: the corrupt crop makes an empty batch on one rank, a step that
    every rank must skip together. The run is preempted and resumed (:func:`preempted`): every
    check below holds for its epoch of two parts."""
    out = tmp_path_factory.mktemp("random") / "out"
    log = preempted(cells, out, "--access", "random", "--batch-size", "1", "--epochs", "1")
    return out, log


def preempted(data, out: Path, *args: str, env=None) -> str:
    """Run ``args`` on 2 ranks, SIGTERM torchrun once rank 0 wrote its first step checkpoint
    (every 4 steps), then ``--resume``; check that both ranks stopped after the same step and
    that the resumed run started from it; return both runs' output. The preemption test of
    random and shards access on two ranks: the callers' checks then hold for an epoch in two
    parts (no sample twice, every one of the split trained on or counted)."""
    every = ("--set", "train.checkpoint_every_steps=4")
    code, stopped = stop_at_first_checkpoint(
        torchrun(data, out, *args, *every, env=env), signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM, stopped[-3000:]
    stops = [line for line in stopped.splitlines() if "preempted (SIGTERM) at epoch 1 step" in line]
    assert {line.split("[rank ")[1][0] for line in stops} == {"0", "1"}, stops
    (step,) = {line.split("step ")[1].split(";")[0] for line in stops}  # the same on both
    code, log = finish(torchrun(data, out, *args, "--resume", env=env))  # no periodic ones
    assert code == 0, log[-3000:]
    assert f"at epoch 1 step {step} (a step checkpoint)" in log  # resumed from it
    assert float(read_rows(out / "metrics.csv")[0]["restart_gap_s"]) > 0
    return stopped + log


def test_two_ranks_train_in_step_on_the_split_once_random_fs(cells, random_run):
    out, log = random_run
    check_in_step(cells, out, log, "random")


def test_two_ranks_train_in_step_on_the_split_once_shards_s3(cells, s3_cells, tmp_path):
    """Shards over the local S3 server, 2 ranks x 2 DataLoader workers; rank 0 writes the
    shards into the bucket while rank 1 waits, as many as the 4 readers need although the
    split fits one 1 MB shard (no size named). Preempted and resumed (:func:`preempted`):
    shards partly read at the stop are streamed again less what was trained on. The small
    ConvNet (the random run checks ResNet-18's BatchNorm statistics). (Objects: the two-node
    test.)"""
    data, env = s3_cells
    out = tmp_path / "out"
    extra = ["--epochs", "1", "--batch-size", "1", "--set", "dataset.shard_size_mb=null",
             "--arch", "convnet", "--set", "model.image_size=32"]  # fmt: skip
    log = preempted(data, out, "--access", "shards", *extra, env=env)
    said = [line for line in log.splitlines() if "split train: shards of up to 1 MB" in line]
    assert len(said) == 1 and "[rank 0]" in said[0] and "4 reader(s)" in said[0], said  # once
    check_in_step(cells, out, log, "shards")
    rows = read_rows(out / "metrics.csv")
    assert rows[0]["storage"] == "s3"


def check_in_step(cells: Path, out: Path, log: str, access: str) -> None:
    """The run in ``out`` (two ranks) trained in step on the split once: the same number of
    steps on both ranks, samples + skipped + dropped = the split (dropped = the remainder
    except for shards), each epoch row exactly the sum / max / mean of its rank rows, the same
    weights and BatchNorm statistics (ResNet-18) on both ranks."""
    split = len(load_folder_split(FileSystemStorage(cells), "train")[0])
    rows, by_rank = read_rows(out / "metrics.csv"), read_rows(out / "metrics_by_rank.csv")
    assert len(by_rank) == 2 * len(rows) and rows
    steps = Counter((s["epoch"], s["rank"]) for s in read_rows(out / "steps.csv"))
    for row in rows:
        mine = [r for r in by_rank if r["epoch"] == row["epoch"]]
        assert [r["rank"] for r in mine] == ["0", "1"] and row["ranks"] == "2"
        assert steps[(row["epoch"], "0")] == steps[(row["epoch"], "1")] > 0  # in step

        def total(key, mine=mine):
            return sum(float(r[key]) for r in mine)

        for key in ("samples", "skipped", "samples_dropped", "bytes_read", "requests"):
            assert float(row[key]) == total(key), key
        assert int(row["samples"]) + int(row["skipped"]) + int(row["samples_dropped"]) == split
        if access != "shards":
            assert int(row["samples_dropped"]) == split % 2
        assert float(row["wall_s"]) == max(float(r["wall_s"]) for r in mine)
        assert float(row["au"]) == pytest.approx(total("au") / 2, rel=1e-5)
        assert float(row["au_min"]) == min(float(r["au"]) for r in mine)
        assert float(row["data_wait_max_s"]) == max(float(r["data_wait_s"]) for r in mine)
        assert float(row["throughput_mbps"]) == pytest.approx(
            float(row["bytes_read"]) / float(row["wall_s"]) / 1e6, rel=1e-4
        )
    trace = read_rows(out / "trace.csv")  # one row per sample the ranks trained on
    records = load_folder_split(FileSystemStorage(cells), "train")[0]
    split_ids = {r.id for r in records}
    if access != "shards":  # one read per image: its bytes are the file's (here or uploaded)
        size = {r.id: (cells / r.image_key).stat().st_size for r in records}
        assert all(int(t["bytes"]) == size[t["id"]] for t in trace)
    for row in rows:
        ids = [t["id"] for t in trace if t["epoch"] == row["epoch"]]
        read = int(row["samples"]) + int(row["skipped"])
        assert len(ids) == len(set(ids)) == read, "a sample read twice"
        assert set(ids) <= split_ids
        by_rank_bytes = Counter()
        for t in trace:
            if t["epoch"] == row["epoch"]:
                by_rank_bytes[t["rank"]] += int(t["bytes"])
                assert float(t["read_start_s"]) <= float(t["read_end_s"])
        assert sum(by_rank_bytes.values()) == int(row["bytes_read"])
    digests = {line.split()[-1] for line in log.splitlines() if "weights digest" in line}
    assert len(digests) == 1, "the ranks' weights differ after training"
    assert "[rank 1]" in log and "[rank 0]" in log


def test_distributed_evaluation_equals_one_process(cells, random_run):
    out, _ = random_run
    row = read_rows(out / "metrics.csv")[-1]  # evaluated with the weights model.pt holds
    model, names = load_trained_classifier(out)
    storage = FileSystemStorage(cells)
    records, _ = load_folder_split(storage, "test")
    classes = [names[str(i)] for i in range(len(names))]
    loader = build_loader(
        storage, records, access="random", transform=classification_transform(False, 64),
        class_to_index={c: i for i, c in enumerate(classes)},
        settings=LoaderSettings(batch_size=4, num_workers=0), shuffle=False, seed=0,
    )  # fmt: skip
    loader.set_epoch(1)
    alone = classification.evaluate(
        model, loader, torch.device("cpu"), num_samples=len(records), classes=classes
    )
    assert int(row["eval_samples"]) == alone["eval_samples"] == len(records)
    for key in ("top1", "balanced_acc", "eval_loss", *(f"acc_{c}" for c in classes)):
        assert float(row[key]) == pytest.approx(alone[key], rel=1e-4, nan_ok=True), key


def test_resume_refuses_another_world_size(cells, random_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(random_run[0], out)
    code = train_main([
        "--config", "configs/classification.yaml", "--data", str(cells), "--out", str(out),
        "--epochs", "3", "--arch", "resnet18", "--set", "model.image_size=64", "--resume",
        "--access", "random", "--no-pretrained",
    ])  # fmt: skip
    assert code == 2
    assert "was written by a run of 2 rank(s), this one has 1" in capsys.readouterr().err


def test_a_failing_rank_stops_every_rank(cells, tmp_path):
    """Rank 1 is killed (SIGKILL) mid-run: torchrun stops rank 0 too and exits non-zero,
    naming the rank that failed, and no process of the run is left."""
    out = tmp_path / "out"
    proc = torchrun(cells, out, "--access", "random", "--epochs", "50", "--workers", "0")
    deadline = time.monotonic() + RUN_LIMIT_S
    log = out / "benchmark.log"
    while "epoch 1, this rank" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached its first epoch"
        time.sleep(0.2)
    run = psutil.Process(proc.pid).children(recursive=True)
    victim = next(p for p in run if p.environ().get("LOCAL_RANK") == "1")
    started = time.monotonic()
    victim.kill()
    code, text = finish(proc, limit_s=60)
    assert code == 1 and time.monotonic() - started < 60
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 (local rank 1) failed first, signal SIGKILL"), text
    assert "any other rank still running was stopped" in last
    gone, alive = psutil.wait_procs(run, timeout=10)
    assert not alive, f"processes of the run left: {alive}"


def test_two_nodes_on_this_machine_finish_a_run_together(cells, s3_cells, tmp_path):
    """Two torchrun launches, one rank each, meet at a rendezvous on 127.0.0.1 (as two
    machines would at MASTER_ADDR) and train together, here with the objects pattern over
    the local S3 server (the same bucket for both nodes)."""
    data, env = s3_cells
    port = free_ports(1)[0]
    runs = [
        torchrun(data, tmp_path / f"node{n}", "--access", "objects", "--epochs", "1",
                 "--workers", "0", nproc=1, nodes=(2, n, 60), port=port, env=env)
        for n in (0, 1)
    ]  # fmt: skip
    results = [finish(run) for run in runs]
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert not (tmp_path / "node1" / "metrics.csv").exists()  # rank 0 (node 0) writes
    check_in_step(cells, tmp_path / "node0", results[0][1] + results[1][1], "objects")
    assert read_rows(tmp_path / "node0" / "metrics.csv")[0]["storage"] == "s3"


def test_a_node_that_never_joins_ends_the_run_with_what_is_missing(cells, tmp_path):
    proc = torchrun(cells, tmp_path / "out", "--access", "random", nproc=1, nodes=(2, 0, 5))
    code, text = finish(proc, limit_s=90)
    assert code == 2
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: the nodes did not all join the rendezvous")
    assert "1/2 clients joined" in last and "NODE_RANK" in last
