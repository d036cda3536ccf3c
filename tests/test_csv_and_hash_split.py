"""The TF Object Detection API / Roboflow CSV format, and the hash split of datasets that come
without split files (a VOC folder without ImageSets/Main, one CSV or COCO split)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from datagen.upload import upload_tree
from pipelines.formats.csv_boxes import COLUMNS, load_csv_split
from pipelines.formats.hash_split import split_of
from pipelines.formats.records import DatasetError
from pipelines.formats.voc import load_voc_split
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from scripts import train as train_cli
from training.config import ConfigError, load_config
from training.data import detect_format, load_split, resolve_split
from training.source import DataSource

HEADER = ",".join(COLUMNS)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_rows_become_one_record_per_image_with_boxes_clipped_and_dropped(tmp_path):
    write(
        tmp_path / "train_labels.csv",
        f"{HEADER},extra\n"
        "a.jpg,100,80,cat,10,10,50,40,x\n"
        "b.jpg,60,60,dog,0,0,70,30,x\n"  # past the right edge: clipped
        "a.jpg,100,80,dog,20,20,20,30,x\n"  # zero width: dropped, counted
        "a.jpg,100,80,cat,60,5,90,70,x\n",  # a's rows need not be adjacent
    )
    records, counts = load_csv_split(FileSystemStorage(tmp_path), "train")
    assert [r.id for r in records] == ["a", "b"]
    a, b = records
    assert a.image_key == "images/a.jpg" and (a.width, a.height) == (100, 80)
    assert a.boxes == ((10, 10, 50, 40), (60, 5, 90, 70)) and a.labels == ("cat", "cat")
    assert b.boxes == ((0, 0, 60, 30),)
    assert (counts.kept, counts.clipped, counts.dropped) == (3, 1, 1)
    assert counts.dropped_where == [f"{tmp_path / 'train_labels.csv'}:4"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("filename,width,class\na.jpg,1,c\n", "header lacks height, xmin, ymin, xmax, ymax"),
        (f"{HEADER}\na.jpg,abc,80,cat,1,1,5,5\n", r"_labels.csv:2: width 'abc' is not a number"),
        (f"{HEADER}\na.jpg,100,80,,1,1,5,5\n", r"_labels.csv:2: empty class"),
        (f"{HEADER}\na.jpg,100,80,c,1,1,5,inf\n", r"_labels.csv:2: ymax is inf"),
        (f"{HEADER}\na.jpg,100.5,80,c,1,1,5,5\n", "not a positive whole number"),
        (f"{HEADER}\n../a.jpg,100,80,c,1,1,5,5\n", "must be relative, inside the folder"),
        (
            f"{HEADER}\na.jpg,100,80,c,1,1,5,5\na.jpg,90,80,c,1,1,5,5\n",
            r"_labels.csv:3: a.jpg is 90x80 here but 100x80 on an earlier line",
        ),
    ],
)
def test_a_malformed_csv_is_refused_naming_file_and_line(tmp_path, text, message):
    write(tmp_path / "train_labels.csv", text)
    with pytest.raises(DatasetError, match=message):
        load_csv_split(FileSystemStorage(tmp_path), "train")


def test_both_csv_layouts_are_detected_and_a_missing_split_named(tmp_path):
    write(tmp_path / "tf" / "train_labels.csv", f"{HEADER}\na.jpg,9,9,c,1,1,5,5\n")
    write(tmp_path / "rf" / "train" / "_annotations.csv", f"{HEADER}\na.jpg,9,9,c,1,1,5,5\n")
    storage = FileSystemStorage(tmp_path)
    assert detect_format(storage, "tf", "train") == detect_format(storage, "rf", "train") == "csv"
    (record,), _ = load_csv_split(storage, "train", root="rf")
    assert record.image_key == "rf/train/a.jpg"
    with pytest.raises(DatasetError, match="found neither tf/valid_labels.csv nor"):
        load_csv_split(storage, "valid", root="tf")


def test_the_hash_split_is_the_documented_hash():
    """SHA-256 of the id, first 8 bytes big-endian over 2^64: the same split on every machine."""
    import hashlib

    point = int.from_bytes(hashlib.sha256(b"BloodImage_00007").digest()[:8], "big") / 2**64
    expected = 0 if point < 0.8 else 1 if point < 0.9 else 2
    assert split_of("BloodImage_00007", (0.8, 0.1, 0.1)) == expected
    assert [split_of(f"id{i}", (0.5, 0.25, 0.25)) for i in range(8)] == [1, 2, 1, 0, 0, 0, 0, 0]


def test_an_explicit_hash_split_splits_a_voc_tree_that_has_split_files(voc_root):
    cfg = load_config(None, [f"storage.root={voc_root.parent}", "storage.prefixes=[bccd]",
                             "dataset.split=hash"])  # fmt: skip
    source = DataSource(FileSystemStorage(voc_root.parent), ("bccd",), "fs")
    train = [r.id for r in load_split(source, cfg, "train")[0]]
    assert train and all(split_of(i, (0.8, 0.1, 0.1)) == 0 for i in train)
    classification = load_config(
        None,
        [f"storage.root={voc_root.parent}", "task=classification", "model.arch=convnet",
         "model.image_size=32", "storage.prefixes=[bccd]",
         "dataset.split=hash"],
    )  # fmt: skip
    with pytest.raises(DatasetError, match="holds no classification dataset"):
        load_split(source, classification, "train")
    with pytest.raises(ConfigError, match="your reader .* makes its own splits"):
        resolve_split(load_config(None, ["dataset.split=hash", "dataset.format=r.py:read"]))


def test_the_hash_split_is_deterministic_disjoint_and_follows_the_ratios():
    ids = [f"image_{i:05d}" for i in range(4000)]
    ratios = (0.8, 0.1, 0.1)
    parts = [split_of(i, ratios) for i in ids]
    assert parts == [split_of(i, ratios) for i in ids]  # the same on every call
    shares = [parts.count(k) / len(ids) for k in range(3)]
    assert shares == pytest.approx(list(ratios), abs=0.02)
    assert split_of("image_00001", (1.0, 0.0, 0.0)) == 0
    with pytest.raises(ConfigError, match="summing to 1"):
        load_config(None, ["dataset.split_ratios=[0.5, 0.2]"])


def voc_without_splits(voc_root: Path) -> Path:
    shutil.rmtree(voc_root / "ImageSets")
    return voc_root


def test_a_voc_folder_without_split_files_is_split_by_hash_alike_on_fs_and_s3(
    voc_root, s3_server, tmp_path
):
    voc_without_splits(voc_root)  # 18 annotated images, no ImageSets/Main
    cfg = load_config(None, ["storage.root=" + str(voc_root.parent), "storage.prefixes=[bccd]"])
    resolved = resolve_split(cfg)
    assert resolved.dataset.split == "hash" and cfg.dataset.split == "auto"
    fs = DataSource(FileSystemStorage(voc_root.parent), ("bccd",), "fs")
    bucket = "hash-split"
    s3 = S3Storage(bucket, endpoint_url=s3_server.endpoint)
    s3.client().create_bucket(Bucket=bucket)
    upload_tree(voc_root, S3Storage(bucket, "bccd", endpoint_url=s3_server.endpoint))
    on_s3 = DataSource(s3, ("bccd",), "s3")
    splits = {}
    for name in ("train", "val", "test"):
        fs_ids = [r.id for r in load_split(fs, resolved, name)[0]]
        assert fs_ids == [r.id for r in load_split(on_s3, resolved, name)[0]], name
        splits[name] = set(fs_ids)
    assert sum(len(s) for s in splits.values()) == 18  # every image, once
    assert not (splits["train"] & splits["test"]) and not (splits["train"] & splits["val"])
    with pytest.raises(DatasetError, match="into train, val, valid, validation, test"):
        load_split(fs, resolved, "holdout")


def test_a_dataset_with_its_splits_keeps_them(voc_root):
    cfg = load_config(None, ["storage.root=" + str(voc_root.parent), "storage.prefixes=[bccd]"])
    assert resolve_split(cfg).dataset.split == "files"


@pytest.mark.integration
def test_a_csv_export_of_one_split_trains_with_a_recorded_hash_split(voc_root, tmp_path):
    """A TF OD API CSV of 6 BCCD training images (only train_labels.csv: no test split):
    training reads it, splits it by hash, and config.yaml says so."""
    records, _ = load_voc_split(FileSystemStorage(voc_root), "train", limit=6)
    root = tmp_path / "signs"
    (root / "images").mkdir(parents=True)
    with open(root / "train_labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in records:
            shutil.copy(voc_root / r.image_key, root / "images" / f"{r.id}.jpg")
            for box, label in zip(r.boxes, r.labels, strict=True):
                writer.writerow([f"{r.id}.jpg", r.width, r.height, label, *box])
    out = tmp_path / "out"
    code = train_cli.main([
        "--data", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "2",
        "--workers", "0", "--no-pretrained", "--access", "random",
        "--set", "model.image_size=128", "--set", "dataset.split_ratios=[0.75, 0, 0.25]",
    ])  # fmt: skip
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())["dataset"]
    assert saved["split"] == "hash" and saved["format"] == "auto"
    parts = [split_of(r.id, (0.75, 0, 0.25)) for r in records]
    log = (out / "benchmark.log").read_text()
    assert "split by a hash of its id" in log
    assert f"split train: {parts.count(0)} images" in log
    assert f"split test: {parts.count(2)} images" in log


def test_a_coco_export_of_one_split_is_split_by_hash(tmp_path):
    from tests.helpers import write_coco

    write_coco(tmp_path / "export", {"train": 12})  # only train/_annotations.coco.json
    cfg = load_config(None, [f"storage.root={tmp_path}", "storage.prefixes=[export]"])
    resolved = resolve_split(cfg)
    assert resolved.dataset.split == "hash"
    source = DataSource(FileSystemStorage(tmp_path), ("export",), "fs")
    ids = {n: [r.id for r in load_split(source, resolved, n)[0]] for n in ("train", "test")}
    assert len(ids["train"]) >= 6 and len(ids["train"]) + len(ids["test"]) <= 12
    assert not set(ids["train"]) & set(ids["test"])
    assert all(split_of(i, (0.8, 0.1, 0.1)) == 2 for i in ids["test"])
