"""Your own model (``model.arch: path/to/file.py:function``): found, imported, called and checked
against its task's contract on a dummy batch, each failure refused with a message naming the
model reference and what was wrong. (Trained, archived and served: tests/test_serving.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from models.own_model import build, is_own_model, resolve, spec
from training.config import ConfigError, load_config

GOOD = """
from torch import nn

def build_net(num_classes, image_size, pretrained):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, num_classes))

def wrong_shape(num_classes, image_size, pretrained):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, num_classes + 1))

def raises(num_classes, image_size, pretrained):
    raise ValueError("no weights for that size")

def not_a_module(num_classes, image_size, pretrained):
    return 42

def detector(num_classes, image_size, pretrained):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    return fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes,
        min_size=image_size, max_size=image_size,
    )
"""


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_nets.py"
    path.write_text(GOOD)
    return path


def test_a_classifier_that_keeps_the_contract_is_built(models_file):
    entry = resolve(f"{models_file}:build_net")
    assert entry.function == "build_net" and entry.model_file == "my_nets.py"
    model = build(entry, "classification", 3, 16, False)
    assert isinstance(model, nn.Module)
    assert spec(entry) == {
        "reference": f"{models_file}:build_net", "model_file": "my_nets.py",
        "function": "build_net",
    }  # fmt: skip


def test_a_detector_that_keeps_torchvisions_interface_is_built(models_file):
    build(resolve(f"{models_file}:detector"), "detection", 4, 64, False)


def test_a_module_path_names_its_file():
    entry = resolve("examples.my_models:build_net")
    assert entry.source == (Path(__file__).parents[1] / "examples" / "my_models.py").resolve()


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("{dir}/nowhere.py:build_net", "no file .*nowhere.py"),
        ("{file}:", "expected path/to/file.py:function or package.module:function"),
        ("no_such_package.module:build", "no_such_package.module"),
        ("{file}:nope", "my_nets.py defines no function 'nope'"),
        ("{broken}:build_net", r"importing .*broken.py failed: SyntaxError"),
        ("{file}:raises", r"raises\(3, 16, False\) raised ValueError: no weights for that size"),
        ("{file}:not_a_module", "returned int, not a torch.nn.Module"),
        ("{file}:wrong_shape", r"breaks the classification contract: .*\(2, 4\), not \(2, 3\)"),
        ("{reserved}:build_net", "may not be called base_handler.py"),
    ],
)
def test_each_broken_model_reference_is_refused_naming_it(models_file, tmp_path, arch, message):
    (tmp_path / "broken.py").write_text("def build_net(:\n")
    (tmp_path / "reserved").mkdir()
    (tmp_path / "reserved" / "base_handler.py").write_text(GOOD)
    text = arch.format(
        dir=tmp_path, file=models_file, broken=tmp_path / "broken.py",
        reserved=tmp_path / "reserved" / "base_handler.py",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=message) as caught:
        build(resolve(text), "classification", 3, 16, False)
    assert f"model.arch {text!r}" in str(caught.value)


def test_a_classifier_is_refused_as_a_detector(models_file):
    with pytest.raises(ConfigError, match="breaks the detection contract"):
        build(resolve(f"{models_file}:build_net"), "detection", 3, 16, False)


def test_the_config_takes_a_model_reference_for_either_task_and_names_the_choices():
    for task in ("detection", "classification"):
        cfg = load_config(None, [f"task={task}", "model.arch=my.py:build"])
        assert is_own_model(cfg.model.arch)
    with pytest.raises(ConfigError, match="or your own model as path/to/file.py:function"):
        load_config(None, ["model.arch=resnet9000"])


# -- your own dataset reader -----------------------------------------------------------------------

READERS = """
from pipelines.formats.records import ClassificationRecord, DetectionRecord

def boxes(storage, root, split):
    return [DetectionRecord("a", "a.jpg", ((1, 1, 5, 5), (3, 3, 3, 9)), ("cat", "dog"), 10, 10)]

def not_a_list(storage, root, split):
    return "a.jpg"

def wrong_kind(storage, root, split):
    return [ClassificationRecord("a", "a.jpg", "cat")]

def twice(storage, root, split):
    return [DetectionRecord("a", "a.jpg", (), (), 9, 9)] * 2

def raises(storage, root, split):
    raise KeyError("labels")

def no_boxes(storage, root, split):
    return [DetectionRecord("a", "a.jpg", None, (), 9, 9)]
"""


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("not_a_list", "returned str, not a list"),
        ("wrong_kind", "record 0 of wrong_kind.* is malformed: a ClassificationRecord, not a "),
        ("twice", "returned id 'a' twice"),
        ("raises", r"raises\(storage, '', 'train'\) raised KeyError: 'labels'"),
        ("no_boxes", "record 0 of no_boxes.* is malformed: "),
    ],
)
def test_a_reader_breaking_its_contract_is_refused_naming_it(tmp_path, function, message):
    from pipelines.formats.records import DatasetError
    from pipelines.storage.filesystem import FileSystemStorage
    from training.data import read_own

    (tmp_path / "my_reader.py").write_text(READERS)
    with pytest.raises(DatasetError, match=message):
        read_own(f"{tmp_path}/my_reader.py:{function}", FileSystemStorage(tmp_path), "", "train",
                 "detection")  # fmt: skip


def test_a_readers_degenerate_boxes_are_dropped_and_counted(tmp_path):
    from pipelines.storage.filesystem import FileSystemStorage
    from training.data import read_own

    (tmp_path / "my_reader.py").write_text(READERS)
    (record,), counts = read_own(
        f"{tmp_path}/my_reader.py:boxes", FileSystemStorage(tmp_path), "", "train", "detection"
    )
    assert record.boxes == ((1, 1, 5, 5),) and record.labels == ("cat",)
    assert (counts.kept, counts.dropped, counts.dropped_where) == (1, 1, ["a box 1"])


@pytest.mark.integration
def test_your_own_reader_and_model_train_together_from_shards(tmp_path):
    """examples/my_reader.py reads a TSV listing of cell crops; examples/my_models.py learns
    them; sequential access writes and reads the shards of the reader's records."""
    import csv

    from scripts import train as train_cli
    from tests.helpers import make_cells, make_voc_subset

    voc = make_voc_subset(tmp_path / "bccd", {"train": 2, "test": 2})
    cells = make_cells(tmp_path / "cells", voc, {"train": 2, "test": 2})
    for split in ("train", "test"):
        crops = sorted((cells / split).rglob("*.jpg"))
        lines = [f"{p.relative_to(cells)}\t{p.parent.name}" for p in crops]
        (cells / f"{split}.tsv").write_text("# path, class\n" + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = train_cli.main([
        "--config", "configs/classification.yaml", "--data", str(cells), "--out", str(out),
        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--access", "shards",
        "--format", "examples/my_reader.py:read_split",
        "--arch", "examples/my_models.py:build_net", "--set", "model.image_size=32",
        "--set", "output.tensorboard=true",
    ])  # fmt: skip
    assert code == 0
    for name in ("loss.png", "quality.png", "data_wait.png", "throughput.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/step", "time/data_wait_s", "time/compute_s", "loss/epoch",
            "quality/top1", "quality/balanced_acc", "throughput/samples_per_s",
            "throughput/delivered_mbps", "throughput/au"} <= tags  # fmt: skip
    assert [e.step for e in events.Scalars("quality/top1")] == [1]
    with open(out / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    train_lines = (cells / "train.tsv").read_text().count("\t")
    assert int(row["samples"]) == train_lines  # every listed crop read once, from shards
    assert list((cells / "shards").rglob("*.tar"))
