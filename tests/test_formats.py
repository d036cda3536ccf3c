"""COCO (Roboflow export) and Open Images (OIDv4 toolkit) readers, on BCCD images converted from
their VOC annotations: same boxes back, degenerate boxes, malformed files, wiring."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from datagen.upload import upload_tree
from pipelines.formats.coco import ANNOTATIONS, load_coco_split
from pipelines.formats.oid import HEADER_BYTES, image_size, load_oid_split
from pipelines.formats.records import DatasetError
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from scripts.train import main as train_main
from tests.helpers import (
    BCCD,
    CountingStorage,
    voc_records,
    write_coco,
)
from training.config import load_config
from training.data import load_split
from training.source import DataSource

#: OID class names have spaces in labels and underscores in folder names (toolkit style).
OID_NAME = {"RBC": "Red blood cell", "WBC": "White blood cell", "Platelets": "Platelets"}


def write_oid(dest: Path, split: str, records) -> None:
    """OIDv4 toolkit layout: each image in the folder of every class it holds, with a label
    file listing that class's boxes."""
    for r in records:
        for voc_name in sorted(set(r.labels)):
            folder = dest / split / OID_NAME[voc_name].replace(" ", "_")
            (folder / "Label").mkdir(parents=True, exist_ok=True)
            shutil.copy(BCCD / r.image_key, folder)
            lines = [
                f"{OID_NAME[name]} {x1} {y1} {x2} {y2}"
                for (x1, y1, x2, y2), name in zip(r.boxes, r.labels, strict=True)
                if name == voc_name
            ]
            (folder / "Label" / f"{r.id}.txt").write_text("\n".join(lines) + "\n")


def box_set(record, rename=lambda name: name) -> list:
    """The record's (label, box) pairs, sorted: OID merging does not keep the VOC order."""
    return sorted((rename(n), b) for b, n in zip(record.boxes, record.labels, strict=True))


# --- COCO ----------------------------------------------------------------------------------


@pytest.fixture
def coco_root(tmp_path: Path):
    root = tmp_path / "coco"
    return root, write_coco(root, {"train": 4, "test": 3})


def test_coco_gives_back_the_voc_boxes_in_image_order(coco_root):
    root, sources = coco_root
    records, counts = load_coco_split(FileSystemStorage(root), "train")
    voc = sources["train"]
    assert [r.id for r in records] == [r.id for r in voc]
    assert [r.image_key for r in records] == [f"train/{r.id}.jpg" for r in voc]
    for got, want in zip(records, voc, strict=True):
        assert got.labels == want.labels  # annotation order kept
        assert got.boxes == want.boxes  # integer pixels: exact through xywh and back
        assert (got.width, got.height) == (want.width, want.height)
    assert counts.kept == sum(len(r.boxes) for r in voc) and counts.dropped == 0
    assert "cells" not in {n for r in records for n in r.labels}  # unused category 0


def test_coco_root_prefix_and_limit(coco_root):
    root, sources = coco_root
    records, _ = load_coco_split(FileSystemStorage(root.parent), "test", limit=2, root="coco")
    assert [r.image_key for r in records] == [f"coco/test/{r.id}.jpg" for r in sources["test"][:2]]


def edit_doc(root: Path, split: str, change) -> Path:
    path = root / split / ANNOTATIONS
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def test_coco_degenerate_boxes_dropped_clipped_and_images_without_boxes_kept(coco_root):
    root, _ = coco_root

    def change(doc):
        doc["annotations"] += [
            {"id": 900, "image_id": 1, "category_id": 2, "bbox": [10, 10, 0, 5]},  # zero width
            {"id": 901, "image_id": 1, "category_id": 2, "bbox": [700, 10, 5, 5]},  # outside
            {"id": 902, "image_id": 1, "category_id": 3, "bbox": [630, 470, 20, 20]},  # clipped
        ]
        doc["images"].append({"id": 99, "file_name": "empty.jpg", "width": 64, "height": 48})

    path = edit_doc(root, "train", change)
    records, counts = load_coco_split(FileSystemStorage(root), "train")
    assert (counts.dropped, counts.clipped) == (2, 1)
    assert f"{path} annotation id 900 RBC" in counts.dropped_where[0]
    assert records[0].boxes[-1] == (630.0, 470.0, 640.0, 480.0)
    assert records[-1].id == "empty" and records[-1].boxes == () and records[-1].labels == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("categories"), r": top-level key 'categories' is missing$"),
        (lambda d: d["images"][1].pop("file_name"), r": images\[1\] has no 'file_name'$"),
        (
            lambda d: d["annotations"][2].update(image_id=77),
            r": annotation id 2: unknown image_id 77 \(not in 'images'\)$",
        ),
        (
            lambda d: d["annotations"][3].update(category_id=9),
            r": annotation id 3: unknown category_id 9 \(not in 'categories'\)$",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[1, 2, 3]),
            r": annotation id 0: bbox \[1, 2, 3\] is not \[x, y, width, height\] numbers$",
        ),
    ],
)
def test_coco_malformed_document_names_file_and_item(coco_root, change, message):
    root, _ = coco_root
    path = edit_doc(root, "train", change)
    with pytest.raises(DatasetError, match=rf"^{path}{message}"):
        load_coco_split(FileSystemStorage(root), "train")


def test_coco_invalid_json_names_file_line_and_column(coco_root):
    root, _ = coco_root
    path = root / "train" / ANNOTATIONS
    path.write_text('{\n  "images": [\n    {"id": 1,, }\n')
    with pytest.raises(DatasetError, match=rf"^{path}:3:14: not valid JSON \(Expecting"):
        load_coco_split(FileSystemStorage(root), "train")


def test_coco_missing_split_lists_the_split_folders(coco_root):
    root, _ = coco_root
    with pytest.raises(
        DatasetError,
        match=rf"^split 'valid' not found: {root}/valid/{ANNOTATIONS} is missing; "
        rf"split folders with {ANNOTATIONS}: test, train$",
    ):
        load_coco_split(FileSystemStorage(root), "valid")


# --- Open Images (OIDv4 toolkit) -----------------------------------------------------------


@pytest.fixture
def oid_root(tmp_path: Path):
    root = tmp_path / "OID" / "Dataset"
    records = voc_records("train", 3)
    write_oid(root, "train", records)
    return root, records


def test_oid_merges_class_folders_into_the_voc_boxes(oid_root):
    root, voc = oid_root
    records, counts = load_oid_split(FileSystemStorage(root), "train")
    # every BCCD image holds RBC and WBC boxes: it sits in two or three class folders
    assert all(len({n for n in r.labels}) >= 2 for r in voc)
    by_id = {r.id: r for r in records}
    assert sorted(by_id) == sorted(r.id for r in voc) and len(records) == len(voc)
    for want in voc:
        got = by_id[want.id]
        assert box_set(got) == box_set(want, OID_NAME.get)
        assert (got.width, got.height) == (want.width, want.height) == (640, 480)
        first = sorted(OID_NAME[n].replace(" ", "_") for n in set(want.labels))[0]
        assert got.image_key == f"train/{first}/{want.id}.jpg"
    assert "Red blood cell" in records[0].labels  # class names with spaces
    assert counts.kept == sum(len(r.boxes) for r in voc) and counts.dropped == 0


def test_oid_limit_and_root_prefix(oid_root):
    root, voc = oid_root
    records, _ = load_oid_split(FileSystemStorage(root.parents[1]), "train", 2, "OID/Dataset")
    assert len(records) == 2
    assert all(r.image_key.startswith("OID/Dataset/train/") for r in records)
    # order: (first class folder, id)
    first = {r.id: sorted(OID_NAME[n].replace(" ", "_") for n in r.labels)[0] for r in voc}
    assert [r.id for r in records] == sorted(first, key=lambda i: (first[i], i))[:2]


def test_oid_degenerate_box_dropped_with_file_and_line(oid_root):
    root, voc = oid_root
    label = root / "train" / "White_blood_cell" / "Label" / f"{voc[0].id}.txt"
    label.write_text(label.read_text() + "White blood cell 50 60 50 90\n\n")
    lineno = label.read_text().count("\n") - 1
    _, counts = load_oid_split(FileSystemStorage(root), "train")
    assert counts.dropped == 1
    assert counts.dropped_where == [f"{label}:{lineno} White blood cell (50.0, 60.0, 50.0, 90.0)"]


@pytest.mark.parametrize(
    "line",
    ["Red blood cell 1 2 three 4", "1 2 3 4", "Red blood cell 1 2 nan 4"],
)
def test_oid_bad_label_line_names_file_and_line(oid_root, line):
    root, voc = oid_root
    label = root / "train" / "Red_blood_cell" / "Label" / f"{voc[1].id}.txt"
    lines = label.read_text().splitlines()
    lines.insert(1, line)
    label.write_text("\n".join(lines))
    with pytest.raises(
        DatasetError,
        match=rf"^{label}:2: expected '<class name> x_min y_min x_max y_max' \(pixels\), "
        rf"got '{line}'$",
    ):
        load_oid_split(FileSystemStorage(root), "train")


def test_oid_missing_label_folder_or_file_is_an_error(oid_root):
    root, voc = oid_root
    (root / "train" / "White_blood_cell" / "Label" / f"{voc[2].id}.txt").unlink()
    with pytest.raises(
        DatasetError,
        match=rf"^label file missing for image '{voc[2].id}': "
        rf"{root}/train/White_blood_cell/Label/{voc[2].id}\.txt$",
    ):
        load_oid_split(FileSystemStorage(root), "train")
    shutil.rmtree(root / "train" / "White_blood_cell" / "Label")
    with pytest.raises(
        DatasetError,
        match=rf"^class folder {root}/train/White_blood_cell has images but no Label/ folder",
    ):
        load_oid_split(FileSystemStorage(root), "train")


def test_oid_label_without_image_is_skipped_with_a_warning(oid_root, caplog):
    root, voc = oid_root
    (root / "train" / "Red_blood_cell" / f"{voc[0].id}.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="pipelines.formats.oid"):
        records, counts = load_oid_split(FileSystemStorage(root), "train")
    assert "skipped 1 label file(s) without their image" in caplog.text
    got = next(r for r in records if r.id == voc[0].id)
    assert "Red blood cell" not in got.labels and "White blood cell" in got.labels
    assert counts.dropped == 0


def test_oid_missing_split_lists_the_folders(oid_root):
    root, _ = oid_root
    with pytest.raises(
        DatasetError, match=r"^split 'validation' not found: .* folders found: train$"
    ):
        load_oid_split(FileSystemStorage(root), "validation")


def test_image_size_reads_the_whole_file_when_the_header_is_large(tmp_path):
    path = tmp_path / "big_header.jpg"
    Image.new("RGB", (33, 21)).save(path, icc_profile=b"\0" * (HEADER_BYTES + 1000))
    storage = CountingStorage(FileSystemStorage(tmp_path))
    assert image_size(storage, "big_header.jpg") == (33, 21)
    assert storage.reads == 2  # header, then the whole file
    shutil.copy(BCCD / "JPEGImages" / "BloodImage_00000.jpg", tmp_path / "small.jpg")
    assert image_size(storage, "small.jpg") == (640, 480)
    assert storage.reads == 3
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"junk\.jpg: not a readable image"):
        image_size(storage, "junk.jpg")


@pytest.mark.integration
def test_both_formats_read_the_same_records_over_s3(s3_server, tmp_path):
    coco, oid = tmp_path / "coco", tmp_path / "oid"
    write_coco(coco, {"train": 3})
    write_oid(oid, "train", voc_records("train", 3))
    bucket = f"formats-{os.getpid()}"
    S3Storage(bucket, endpoint_url=s3_server.endpoint).client().create_bucket(Bucket=bucket)
    upload_tree(
        tmp_path, S3Storage(bucket, "data", endpoint_url=s3_server.endpoint), progress=False
    )
    s3 = S3Storage(bucket, endpoint_url=s3_server.endpoint)
    for reader, local, root in (
        (load_coco_split, coco, "data/coco"),
        (load_oid_split, oid, "data/oid"),
    ):
        want, _ = reader(FileSystemStorage(local), "train")
        got, _ = reader(s3, "train", root=root)
        assert [r.image_key for r in got] == [f"{root}/{r.image_key}" for r in want]
        assert [(r.boxes, r.labels, r.width, r.height) for r in got] == [
            (r.boxes, r.labels, r.width, r.height) for r in want
        ]
    with pytest.raises(DatasetError, match=r"folders found: coco, oid$"):
        load_oid_split(s3, "validation", root="data")


# --- wiring --------------------------------------------------------------------------------


def test_load_split_dispatches_on_dataset_format(coco_root, oid_root):
    root, sources = coco_root
    cfg = load_config(None, ["dataset.format=coco", f"storage.root={root}"])
    records, _ = load_split(DataSource(FileSystemStorage(root), ("",), "fs"), cfg, "test")
    assert [r.id for r in records] == [r.id for r in sources["test"]]
    oid, voc = oid_root
    cfg = load_config(None, ["dataset.format=oid", "dataset.limit=2"])
    records, _ = load_split(DataSource(FileSystemStorage(oid), ("",), "fs"), cfg, "train")
    assert len(records) == 2


@pytest.mark.integration
@pytest.mark.parametrize(("fmt", "access"), [("coco", "random"), ("oid", "shards")])
def test_one_epoch_trains_on_each_format(tmp_path, fmt, access):
    root = tmp_path / fmt
    if fmt == "coco":
        write_coco(root, {"train": 4, "test": 2})
        classes = "[RBC, WBC, Platelets]"
    else:
        write_oid(root, "train", voc_records("train", 4))
        write_oid(root, "test", voc_records("test", 2))
        classes = "[Red blood cell, White blood cell, Platelets]"
    out = tmp_path / "out"
    args = [
        *("--set", f"dataset.format={fmt}", "--set", f"storage.root={root}"),
        *("--set", "storage.prefixes=['']"),
        *("--set", "dataset.train_split=train", "--set", "dataset.eval_split=test"),
        *("--set", f"dataset.classes={classes}", "--set", "model.image_size=128"),
        *("--limit", "4", "--epochs", "1", "--batch-size", "2", "--workers", "0"),
        *("--no-pretrained", "--access", access, "--out", str(out)),
    ]
    assert train_main(args) == 0
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["samples"]) == 4 and rows[0]["errors"] == ""
    assert rows[0]["access"] == access
