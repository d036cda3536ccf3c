"""Training data over S3 (a real local S3-protocol server): same samples as the filesystem,
clear errors for wrong credentials, a server that goes away mid-epoch, and a truncated shard."""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections import Counter

import pytest

from datagen.upload import upload_tree
from local_s3.server import local_s3
from pipelines.access.loaders import LoaderSettings, build_loader
from pipelines.formats.voc import load_voc_split, read_split_ids
from pipelines.samples import detection_transform
from pipelines.shards.manifest import ShardError, read_manifest
from pipelines.shards.reader import iter_shard
from pipelines.shards.writer import ensure_shards
from pipelines.storage.base import StorageError
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from pipelines.storage.s3dlio_storage import S3dlioStorage
from scripts import train as train_cli
from tests.helpers import CountingStorage, make_voc_subset

pytestmark = pytest.mark.integration

CLASSES = {"RBC": 1, "WBC": 2, "Platelets": 3}
_numbers = itertools.count()


def upload_voc(tmp_path, endpoint: str, train: int = 12) -> tuple[str, object]:
    """A new bucket holding a small BCCD VOC tree (with its train shards) under ``bccd/``."""
    voc = make_voc_subset(tmp_path / f"bccd{next(_numbers)}", {"train": train, "test": 4})
    fs = FileSystemStorage(voc)
    records, _ = load_voc_split(fs, "train")
    ensure_shards(fs, records, "shards/train", target_bytes=60_000)
    bucket = f"bench-{os.getpid()}-{next(_numbers)}"
    S3Storage(bucket, endpoint_url=endpoint).client().create_bucket(Bucket=bucket)
    upload_tree(voc, S3Storage(bucket, "bccd", endpoint_url=endpoint), progress=False)
    return bucket, voc


def epoch(storage, root: str, access: str, workers: int = 2):
    """One training epoch's ids and storage requests through ``build_loader``."""
    records, _ = load_voc_split(storage, "train", root=root)
    shards = None
    if access == "shards":
        shards = read_manifest(storage, f"{root}/shards/train" if root else "shards/train").shards
    loader = build_loader(
        storage, records, access=access, transform=detection_transform(True, 64),
        class_to_index=CLASSES, settings=LoaderSettings(batch_size=3, num_workers=workers),
        shuffle=True, seed=0, shards=shards, shuffle_buffer=4, concurrency=4,
    )  # fmt: skip
    loader.set_epoch(1)
    ids, requests = [], 0
    for batch in loader:
        ids.extend(batch.ids)
        requests += batch.requests.requests
    return ids, requests, shards


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
@pytest.mark.parametrize("client", ["boto3", "s3dlio"])
def test_each_access_mode_over_s3_reads_the_filesystem_sample_set(
    s3_server, tmp_path, access, client
):
    """With 2 DataLoader workers: forked (boto3), or started by a fork server (s3dlio)."""
    bucket, voc = upload_voc(tmp_path, s3_server.endpoint)
    if client == "s3dlio":
        s3 = S3dlioStorage(bucket, endpoint_url=s3_server.endpoint, max_attempts=2)
    else:
        s3 = S3Storage(bucket, endpoint_url=s3_server.endpoint, max_attempts=2)
    s3_ids, s3_requests, shards = epoch(s3, "bccd", access)
    fs_ids, _, _ = epoch(FileSystemStorage(voc), "", access)
    assert (
        Counter(s3_ids)
        == Counter(fs_ids)
        == Counter(read_split_ids(FileSystemStorage(voc), "train"))
    )
    assert s3_requests == (len(shards) if access == "shards" else len(s3_ids))  # GETs


def read_metrics(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("client", ["boto3", "s3dlio"])
def test_train_over_s3_writes_missing_shards_and_reports_requests(
    s3_server, tmp_path, client, caplog
):
    bucket, _ = upload_voc(tmp_path, s3_server.endpoint, train=6)
    out = tmp_path / "out"
    code = train_cli.main([
        "--storage", "s3", "--s3-endpoint", s3_server.endpoint, "--s3-bucket", bucket,
        "--s3-prefix", "bccd", "--access", "shards", "--limit", "4", "--epochs", "1",
        "--batch-size", "2", "--workers", "1" if client == "boto3" else "0",  # s3dlio's workers:
        "--no-pretrained", "--out", str(out),  # the access tests above (a fork server each)
        "--set", "model.image_size=128", "--set", f"storage.client_lib={client}",
    ])  # fmt: skip
    assert code == 0
    (row,) = read_metrics(out)
    assert (row["storage"], row["access"], row["samples"]) == ("s3", "shards", "4")
    shards = S3Storage(bucket, endpoint_url=s3_server.endpoint)
    # written to S3 on first use, 2 or more (sized for 2 readers, where 1 MB would hold them all)
    assert shards.exists("bccd/shards/train-first4-for2/manifest.json")
    assert int(row["requests"]) >= 1
    if client == "s3dlio":  # s3dlio does not expose a request's time to first byte
        assert row["ttfb_p50_ms"] == row["ttfb_p99_ms"] == "nan"
        assert "TTFB not exposed by the client" in caplog.text
    else:
        assert float(row["ttfb_p50_ms"]) > 0
    assert row["errors"] == ""


def test_wrong_secret_names_bucket_and_credentials_without_leaking_them(
    s3_server, tmp_path, monkeypatch, capsys
):
    bucket, _ = upload_voc(tmp_path, s3_server.endpoint, train=2)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x" * 40)
    code = train_cli.main([
        "--storage", "s3", "--s3-endpoint", s3_server.endpoint, "--s3-bucket", bucket,
        "--s3-prefix", "bccd", "--epochs", "1", "--no-pretrained", "--out", str(tmp_path / "o"),
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert f"s3://{bucket}/bccd/ImageSets/Main/train.txt" in line
    assert s3_server.endpoint in line and "AWS_SECRET_ACCESS_KEY" in line
    assert "x" * 40 not in err and s3_server.secret_key not in err
    assert "Traceback" not in err


def test_missing_bucket_is_named(s3_server, tmp_path, capsys):
    code = train_cli.main([
        "--storage", "s3", "--s3-endpoint", s3_server.endpoint, "--s3-bucket", "no-such-bucket",
        "--epochs", "1", "--no-pretrained", "--out", str(tmp_path / "o"),
    ])  # fmt: skip
    assert code == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


def test_server_stopped_mid_epoch_is_retried_then_reported(tmp_path):
    with local_s3(tmp_path / "s3") as srv, pytest.MonkeyPatch.context() as mp:
        for name, value in srv.env("own").items():
            mp.setenv(name, value)
        bucket, _ = upload_voc(tmp_path, srv.endpoint)
        storage = S3Storage(
            bucket, endpoint_url=srv.endpoint, max_attempts=3, connect_timeout_s=1,
            read_timeout_s=2,
        )  # fmt: skip
        records, _ = load_voc_split(storage, "train", root="bccd")
        loader = build_loader(
            storage, records, access="random", transform=detection_transform(True, 64),
            class_to_index=CLASSES, settings=LoaderSettings(batch_size=2, num_workers=0),
            shuffle=True, seed=0,
        )  # fmt: skip
        loader.set_epoch(1)
        batches = iter(loader)
        assert len(next(batches).ids) == 2
        srv.stop()
        unreachable = rf"{srv.endpoint}.*endpoint unreachable after 3"
        with pytest.raises(StorageError, match=unreachable) as e:
            next(batches)
    stats = e.value.stats  # the failed read's own figures
    assert stats.requests == 1 and stats.retries == 2 and dict(stats.errors) == {"unreachable": 1}


def test_truncated_shard_on_s3_is_named(s3_server, tmp_path):
    bucket, _ = upload_voc(tmp_path, s3_server.endpoint)
    storage = S3Storage(bucket, endpoint_url=s3_server.endpoint, max_attempts=2)
    shards = read_manifest(storage, "bccd/shards/train").shards
    whole = storage.read(shards[0].key)
    storage.write(shards[0].key, whole[: len(whole) // 2])
    with pytest.raises(ShardError, match=rf"shard s3://{bucket}/{shards[0].key} .* is truncated"):
        list(iter_shard(storage, shards[0]))


def test_shards_written_on_the_filesystem_and_uploaded_are_reused_over_s3(s3_server, tmp_path):
    """The manifest records each image's MD5; an S3 ETag of a single-part upload is that MD5,
    so uploaded shards match the uploaded images although their versions differ."""
    bucket, _ = upload_voc(tmp_path, s3_server.endpoint)
    storage = S3Storage(bucket, endpoint_url=s3_server.endpoint, max_attempts=2)
    records, _ = load_voc_split(storage, "train", root="bccd")
    uploaded = read_manifest(storage, "bccd/shards/train").shards
    counted = CountingStorage(storage)
    shards, written = ensure_shards(counted, records, "bccd/shards/train", target_bytes=60_000)
    assert counted.reads == 1  # the manifest: images are listed, not read
    assert not written and shards == uploaded


def test_changed_annotation_on_s3_rewrites_the_shards_in_the_bucket(s3_server, tmp_path, caplog):
    bucket, voc = upload_voc(tmp_path, s3_server.endpoint)
    storage = S3Storage(bucket, endpoint_url=s3_server.endpoint, max_attempts=2)
    records, _ = load_voc_split(storage, "train", root="bccd")
    key = f"bccd/Annotations/{records[1].id}.xml"
    storage.write(key, storage.read(key).replace(b"<name>RBC</name>", b"<name>WBC</name>", 1))
    fixed, _ = load_voc_split(storage, "train", root="bccd")
    shards, written = ensure_shards(storage, fixed, "bccd/shards/train", target_bytes=60_000)
    assert written and f"{records[1].id}: annotation changed" in caplog.text
    labels = {
        json.loads(s["json"])["id"]: json.loads(s["json"])["labels"]
        for shard in shards
        for s, _ in iter_shard(storage, shard)
    }
    assert labels[records[1].id] == list(fixed[1].labels) != list(records[1].labels)
