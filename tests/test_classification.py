"""Classification: folder-per-class data (cell crops), format detection, the task's metrics, and
real training runs through both access patterns, on the filesystem and over S3."""

from __future__ import annotations

import csv
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from cli.args import data_overrides
from models.classifier import ARCHITECTURES, build_classifier, load_trained_classifier
from pipelines.access.loaders import LoaderSettings, build_loader
from pipelines.formats.folders import load_folder_split
from pipelines.formats.records import ClassificationRecord, DatasetError, record_from_json
from pipelines.samples import Batch, classification_transform, make_sample
from pipelines.shards.writer import ensure_shards
from pipelines.storage.base import CallStats
from pipelines.storage.filesystem import FileSystemStorage
from scripts.train import main as train_main
from tests.helpers import make_cells, make_voc_subset
from training import classification
from training.config import CLASSIFIER_ARCHS, DETECTOR_ARCHS, ConfigError, load_config
from training.data import detect_format, load_split
from training.source import DataSource

CLASSES = ["Platelets", "RBC", "WBC"]


@pytest.fixture
def cells_root(voc_root, tmp_path) -> Path:
    """Cell crops of 3 train and 2 test BCCD images (~40 and ~25 crops, all three classes)."""
    return make_cells(tmp_path / "cells", voc_root, {"train": 3, "test": 2})


# --- the folder reader and format detection ------------------------------------------------


def test_folder_reader_takes_classes_in_turn_so_a_limit_keeps_every_class(cells_root):
    storage = FileSystemStorage(cells_root)
    records, counts = load_folder_split(storage, "train")
    on_disk = Counter(p.parent.name for p in (cells_root / "train").glob("*/*.jpg"))
    assert Counter(r.label for r in records) == on_disk and len(on_disk) == 3
    assert counts.kept == 0  # no boxes in this format
    first, _ = load_folder_split(storage, "train", limit=6)
    assert [r.label for r in first] == CLASSES * 2  # sorted classes, one image each in turn
    assert all(r.image_key == f"train/{r.id}.jpg" for r in first)


def test_folder_reader_ignores_stray_files_and_names_a_missing_split(tmp_path):
    (tmp_path / "train" / "RBC").mkdir(parents=True)
    (tmp_path / "train" / "RBC" / "x.JPG").write_bytes(b"jpeg")
    (tmp_path / "train" / "RBC" / "notes.txt").write_text("not a sample")
    (tmp_path / "train" / "README.md").write_text("beside the class folders")
    records, _ = load_folder_split(FileSystemStorage(tmp_path), "train")
    assert [(r.id, r.label) for r in records] == [("RBC/x", "RBC")]
    with pytest.raises(DatasetError, match=r"split 'val' not found: .*<split>/<Class>/\*\.jpg"):
        load_folder_split(FileSystemStorage(tmp_path), "val")


def test_detect_format_tells_the_four_layouts_apart(voc_root, cells_root, tmp_path):
    assert detect_format(FileSystemStorage(voc_root), "", "train") == "voc"
    assert detect_format(FileSystemStorage(cells_root), "", "train") == "folder"
    coco = tmp_path / "coco" / "train"
    coco.mkdir(parents=True)
    (coco / "_annotations.coco.json").write_text("{}")
    assert detect_format(FileSystemStorage(tmp_path), "coco", "train") == "coco"
    oid = tmp_path / "oid" / "train" / "Red blood cell"
    (oid / "Label").mkdir(parents=True)
    (oid / "0a1b.jpg").write_bytes(b"jpeg")
    (oid / "Label" / "0a1b.txt").write_text("Red blood cell 1 2 3 4\n")
    assert detect_format(FileSystemStorage(tmp_path), "oid", "train") == "oid"
    (tmp_path / "other" / "valid").mkdir(parents=True)
    (tmp_path / "other" / "valid" / "x.jpg").write_bytes(b"jpeg")
    with pytest.raises(DatasetError, match=r"cannot tell the format of split 'train'.*FORMAT="):
        detect_format(FileSystemStorage(tmp_path), "other", "train")
    with pytest.raises(DatasetError, match=r"no dataset at .*empty: it is missing or empty"):
        detect_format(FileSystemStorage(tmp_path), "empty", "train")


def test_auto_format_refuses_a_dataset_without_the_task_labels(voc_root, cells_root):
    cfg = load_config("configs/classification.yaml", ["dataset.format=auto"])
    source = DataSource(FileSystemStorage(voc_root), ("",), "fs")
    with pytest.raises(DatasetError, match=r"holds a voc dataset.*task classification"):
        load_split(source, cfg, "train")
    cfg = load_config("configs/detection.yaml", ["dataset.format=auto"])
    source = DataSource(FileSystemStorage(cells_root), ("",), "fs")
    with pytest.raises(DatasetError, match=r"holds a folder dataset.*TASK=classification"):
        load_split(source, cfg, "train")


def test_two_sources_with_the_same_classes_are_read_as_one_dataset(voc_root, tmp_path):
    root = tmp_path / "flowers"
    make_cells(root / "part1", voc_root, {"train": 2})
    (root / "part2").mkdir()
    for path in sorted((root / "part1" / "train").glob("*/*.jpg"))[::2]:  # half moves over
        dest = root / "part2" / path.relative_to(root / "part1")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, dest)
    overrides = data_overrides(f"{root / 'part1'},{root / 'part2'}")
    cfg = load_config("configs/classification.yaml", overrides)
    assert (cfg.storage.root, cfg.storage.prefixes) == (str(root), ["part1", "part2"])
    assert cfg.dataset.format == "auto" and cfg.dataset.classes == []
    source = DataSource(FileSystemStorage(root), ("part1", "part2"), "fs")
    records, _ = load_split(source, cfg, "train")
    keys = {r.image_key for r in records}
    on_disk = {str(p.relative_to(root)) for p in root.glob("*/train/*/*.jpg")}
    assert keys == on_disk and {k.split("/")[0] for k in keys} == {"part1", "part2"}


def test_data_overrides_for_s3_urls_and_refusals():
    assert data_overrides("s3://bkt/a,s3://bkt/b/")[:3] == [
        "storage.type=s3",
        'storage.bucket="bkt"',
        'storage.prefixes=["a", "b"]',
    ]
    with pytest.raises(ConfigError, match="same bucket"):
        data_overrides("s3://one/a,s3://two/b")
    with pytest.raises(ConfigError, match="mixes directories and s3:// URLs"):
        data_overrides("data/a,s3://bkt/b")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.arch=fasterrcnn_resnet50_fpn"], "model.arch 'fasterrcnn_resnet50_fpn' cannot"),
        (["dataset.format=voc"], "dataset.format 'voc' has no labels for task classification"),
        (["model.arch=convnet", "model.image_size=64"], "model.image_size must be 32"),
    ],
)
def test_config_refuses_what_the_task_cannot_use(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/classification.yaml", overrides)


def test_config_and_model_agree_on_the_architectures():
    from models.detector import ARCHITECTURES as DETECTORS

    assert CLASSIFIER_ARCHS == ARCHITECTURES
    assert DETECTOR_ARCHS == tuple(DETECTORS)


# --- samples, shards and the task's metrics -------------------------------------------------


def test_a_classification_sample_is_a_square_image_and_its_class_index(cells_root):
    storage = FileSystemStorage(cells_root)
    record = load_folder_split(storage, "train")[0][1]  # an RBC
    sample = make_sample(
        record,
        storage.read(record.image_key),
        read=CallStats(nbytes=0),
        transform=classification_transform(True, 48),
        class_to_index={name: i for i, name in enumerate(CLASSES)},
    )
    assert sample.image.shape == (3, 48, 48) and sample.image.dtype == torch.float32
    assert sample.target.dtype == torch.int64 and int(sample.target) == 1
    with pytest.raises(DatasetError, match=r"class 'RBC' is not one of the configured classes"):
        make_sample(record, b"", read=CallStats(), transform=None, class_to_index={"WBC": 0})


def test_record_json_round_trip_picks_the_record_kind():
    record = ClassificationRecord("RBC/x_01", "train/RBC/x_01.jpg", "RBC")
    assert record_from_json(record.to_json(), record.image_key) == record


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
def test_each_access_pattern_reads_every_crop_once_with_its_label(cells_root, access):
    storage = FileSystemStorage(cells_root)
    records, _ = load_folder_split(storage, "train")
    shards, _ = ensure_shards(storage, records, "shards/train", target_bytes=100_000)
    loader = build_loader(
        storage, records, access=access, transform=classification_transform(True, 32),
        class_to_index={name: i for i, name in enumerate(CLASSES)},
        settings=LoaderSettings(batch_size=8, num_workers=2), shuffle=True, seed=0,
        shards=shards, shuffle_buffer=16, concurrency=4,
    )  # fmt: skip
    loader.set_epoch(1)
    seen = {}
    for batch in loader:
        for image_id, image, target in zip(batch.ids, batch.images, batch.targets, strict=True):
            assert image.shape == (3, 32, 32)
            seen[image_id] = CLASSES[int(target)]
    assert seen == {r.id: r.label for r in records}


class Always(torch.nn.Module):
    """A rigged classifier: always the same class, whatever the image."""

    def __init__(self, index: int, num_classes: int):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(index), num_classes).float()

    def forward(self, images):
        return self.logits.expand(len(images), -1)


def batch_of(labels: list[int]) -> Batch:
    return Batch(
        images=[torch.zeros(3, 8, 8) for _ in labels],
        targets=[torch.tensor(label) for label in labels],
        ids=[str(i) for i in range(len(labels))],
    )


def test_evaluate_reports_top1_per_class_and_balanced_accuracy():
    labels = [1] * 8 + [0, 2]  # the majority class dominates, as RBC does
    result = classification.evaluate(
        Always(1, 3), [batch_of(labels[:6]), batch_of(labels[6:])], torch.device("cpu"),
        num_samples=10, classes=CLASSES,
    )  # fmt: skip
    assert result["top1"] == pytest.approx(0.8)
    assert (result["acc_Platelets"], result["acc_RBC"], result["acc_WBC"]) == (0.0, 1.0, 0.0)
    assert result["balanced_acc"] == pytest.approx(1 / 3)
    assert math.isnan(result["top5"])  # 3 classes: top-5 would always be right
    assert result["eval_samples"] == 10 and result["eval_loss"] > 0


def test_evaluate_reports_top5_with_more_classes_and_nan_for_an_absent_class():
    names = [f"c{i}" for i in range(7)]
    result = classification.evaluate(
        Always(0, 7), [batch_of([0, 1, 2, 3])], torch.device("cpu"), num_samples=4, classes=names
    )
    assert result["top1"] == pytest.approx(0.25)
    # ties among the six zero logits: top-5 holds class 0 and four others, never all of 1-3
    assert 0.25 <= result["top5"] < 1.0
    assert math.isnan(result["acc_c6"]) and result["acc_c0"] == 1.0


def test_convnet_is_the_original_two_conv_three_linear_layout():
    model = build_classifier("convnet", 3, grayscale=True, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.in_channels for c in convs] == [1, 6] and len(linears) == 3
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="takes 32x32 inputs"):
        build_classifier("convnet", 3, image_size=64)


# --- real training runs ---------------------------------------------------------------------


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_cells(data: str, out: Path, *extra: str) -> int:
    return train_main([
        "--config", "configs/classification.yaml", "--data", data, "--out", str(out),
        "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-pretrained",
        "--arch", "convnet", "--set", "model.image_size=32", *extra,
    ])  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("access", ["random", "shards"])
def test_one_epoch_of_classification_writes_accuracy_beside_throughput(
    cells_root, tmp_path, access
):
    out = tmp_path / "out"
    assert train_cells(str(cells_root), out, "--access", access) == 0
    (row,) = read_rows(out / "metrics.csv")
    assert list(row)[:3] == ["epoch", "task", "access"]
    assert (row["task"], row["access"]) == ("classification", access)
    train_crops = len(list((cells_root / "train").glob("*/*.jpg")))
    assert int(row["samples"]) == train_crops and row["skipped"] == "0"
    assert float(row["samples_per_s"]) > 0 and 0 < float(row["au"]) <= 1
    assert float(row["bytes_read"]) > 0 and float(row["requests"]) > 0
    assert 0 <= float(row["top1"]) <= 1 and row["top5"] == "nan"
    assert {f"acc_{c}" for c in CLASSES} <= set(row)
    assert int(row["eval_samples"]) == len(list((cells_root / "test").glob("*/*.jpg")))
    model, names = load_trained_classifier(out)
    assert names == {"0": "Platelets", "1": "RBC", "2": "WBC"}
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    assert "top-1" in (out / "benchmark.log").read_text()


@pytest.mark.integration
def test_classification_over_s3_reads_the_same_crops(s3_server, cells_root, tmp_path, monkeypatch):
    from datagen.upload import upload_tree
    from pipelines.storage.s3 import S3Storage

    bucket = "cells"
    S3Storage(bucket, endpoint_url=s3_server.endpoint).client().create_bucket(Bucket=bucket)
    upload_tree(cells_root, S3Storage(bucket, "bccd_cells", endpoint_url=s3_server.endpoint),
                progress=False)  # fmt: skip
    monkeypatch.setenv("S3_ENDPOINT", s3_server.endpoint)
    out = tmp_path / "out"
    assert train_cells(f"s3://{bucket}/bccd_cells", out, "--access", "random") == 0
    (row,) = read_rows(out / "metrics.csv")
    train_crops = list((cells_root / "train").glob("*/*.jpg"))
    assert row["storage"] == "s3" and int(row["samples"]) == len(train_crops)
    assert int(row["requests"]) == len(train_crops)  # one GET per crop
    assert int(row["bytes_read"]) == sum(p.stat().st_size for p in train_crops)


@pytest.mark.integration
def test_make_crops_then_train_from_a_fresh_voc_copy(tmp_path):
    voc = make_voc_subset(tmp_path / "voc", {"train": 2, "test": 1})
    from scripts import make_crops

    cells = tmp_path / "cells"
    assert make_crops.main(["--src", str(voc), "--out", str(cells), "--splits", "train,test"]) == 0
    assert not list(cells.glob(".*"))  # no partial folder left behind
    assert train_cells(str(cells), tmp_path / "out", "--access", "random") == 0


@pytest.mark.integration
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_resumes_and_keeps_float32_weights(cells_root, tmp_path, precision):
    """train.precision bf16/fp16 runs the forward passes under torch.autocast (fp16 with a
    gradient scaler, checkpointed and resumed); the weights saved stay float32."""
    out = tmp_path / "out"
    mixed = ("--access", "random", "--set", f"train.precision={precision}")
    assert train_cells(str(cells_root), out, *mixed) == 0
    (row,) = read_rows(out / "metrics.csv")
    assert math.isfinite(float(row["loss"])) and 0 <= float(row["top1"]) <= 1
    assert f"precision {precision}: torch.autocast(cpu)" in (out / "benchmark.log").read_text()
    weights = torch.load(out / "model.pt", weights_only=True)
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert bool(ckpt["grad_scaler"]) == (precision == "fp16")
    assert train_cells(str(cells_root), out, *mixed, "--epochs", "2", "--resume") == 0
    assert len(read_rows(out / "metrics.csv")) == 2


@pytest.mark.integration
def test_a_training_class_of_the_users_trains_measures_and_resumes(cells_root, tmp_path):
    """``train.task: examples/my_task.py:LabelSmoothing``: its loss (with a part of its own in
    the step's error text) and its optimizer (SGD, Nesterov) train, are measured and resume."""
    out = tmp_path / "out"
    own = ("--access", "random", "--set", "train.task=examples/my_task.py:LabelSmoothing")
    assert train_cells(str(cells_root), out, *own) == 0
    (row,) = read_rows(out / "metrics.csv")
    assert math.isfinite(float(row["loss"])) and 0 <= float(row["top1"]) <= 1
    assert float(row["compute_s"]) > 0 and float(row["data_wait_s"]) >= 0
    group = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert group["nesterov"] is True and "betas" not in group  # SGD, not the default AdamW
    assert train_cells(str(cells_root), out, *own, "--epochs", "2", "--resume") == 0
    assert [r["epoch"] for r in read_rows(out / "metrics.csv")] == ["1", "2"]
    constant = tmp_path / "constant.py"  # the loss trained on is the class's: 7 at every step
    constant.write_text(
        "from training.tasks import ClassificationTask\n\n"
        "class Seven(ClassificationTask):\n"
        "    def forward_loss(self, model, batch, device):\n"
        "        loss, parts = super().forward_loss(model, batch, device)\n"
        "        return loss * 0 + 7.0, parts\n"
    )
    seven = ("--access", "random", "--set", f"train.task={constant}:Seven")
    assert train_cells(str(cells_root), tmp_path / "seven", *seven) == 0
    assert float(read_rows(tmp_path / "seven" / "metrics.csv")[0]["loss"]) == 7.0


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("examples/my_task.py:Nope", "defines no"),
        ("examples/my_models.py:build_net", "must name a class that subclasses training.tasks."
         "ClassificationTask"),
        ("examples/none.py:X", "no file examples/none.py"),
    ],
)  # fmt: skip
def test_a_training_class_that_cannot_serve_is_refused_naming_the_key(reference, message):
    from training.tasks import load_task

    cfg = load_config("configs/classification.yaml", [f"train.task={reference}"])
    with pytest.raises(ConfigError, match=rf"^train\.task .*{re.escape(message)}"):
        load_task(cfg)
    detection = load_config(
        "configs/detection.yaml", ["train.task=examples/my_task.py:LabelSmoothing"]
    )
    with pytest.raises(ConfigError, match=r"subclasses training\.tasks\.DetectionTask"):
        load_task(detection)
