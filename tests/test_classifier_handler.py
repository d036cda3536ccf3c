"""Unit tests of the classifier's TorchServe handler, without a server.

Most tests use an untrained ``convnet`` whose last layer is rigged (zero weights, chosen bias) so
that every image gets the same known logits: the expected probabilities and their order are
then exact. The batching tests use unrigged random weights, where each image gets its own
answer.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from ts.utils.util import list_classes_from_module

from handlers.classifier_handler import ClassifierHandler
from tests.helpers import FakeContext, cell_crop, jpeg_bytes, png_bytes, write_classifier_output

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO / "data" / "bccd"
LABELS = {"0": "Platelets", "1": "RBC", "2": "WBC"}


def make_handler(model_dir: Path, **knobs) -> ClassifierHandler:
    """A handler whose model-config YAML ``handler:`` section is ``knobs``."""
    h = ClassifierHandler()
    h.initialize(FakeContext(model_dir, knobs, name="classifier"))
    return h


def context(model_dir: Path) -> FakeContext:
    """A fresh per-batch context."""
    return FakeContext(model_dir, name="classifier")


def softmax(logits: list[float]) -> list[float]:
    """Reference softmax in plain Python."""
    exps = [math.exp(v) for v in logits]
    return [v / sum(exps) for v in exps]


@pytest.fixture(scope="module")
def rigged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes; every image: logits (0, 1, 2) -> WBC, RBC, Platelets in that order."""
    root = tmp_path_factory.mktemp("rigged")
    return write_classifier_output(root, logits=[0.0, 1.0, 2.0], model_file=True)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, seeded random ResNet-18 weights at 64 px: each image its own answer."""
    root = tmp_path_factory.mktemp("random")
    return write_classifier_output(root, arch="resnet18", image_size=64, model_file=True)


def test_three_classes_give_all_three_highest_first(rigged_dir: Path):
    ctx = context(rigged_dir)
    (answer,) = make_handler(rigged_dir).handle([{"body": cell_crop()}], ctx)
    assert list(answer) == ["WBC", "RBC", "Platelets"]  # highest first
    expected = softmax([0.0, 1.0, 2.0])  # Platelets, RBC, WBC
    assert answer == pytest.approx(dict(zip(LABELS.values(), expected, strict=True)), abs=1e-4)
    assert sum(answer.values()) == pytest.approx(1.0, abs=1e-3)
    assert ctx.statuses == {} and ctx.content_types == {0: "application/json"}
    assert ctx.timings and ctx.timings[0][0] == "HandlerTime"
    json.dumps(answer)


def test_seven_classes_give_the_five_most_probable(tmp_path: Path):
    labels = {str(i): f"class{i}" for i in range(7)}
    logits = [0.5, 3.0, -1.0, 2.0, 1.0, 0.0, 4.0]
    model_dir = write_classifier_output(tmp_path, labels=labels, logits=logits, model_file=True)
    (answer,) = make_handler(model_dir).handle([{"body": jpeg_bytes()}], context(model_dir))
    assert list(answer) == ["class6", "class1", "class3", "class4", "class0"]
    probs = softmax(logits)
    assert answer == pytest.approx({f"class{i}": probs[i] for i in (6, 1, 3, 4, 0)}, abs=1e-4)
    assert sum(answer.values()) < 1.0  # two classes left out

    (top2,) = make_handler(model_dir, topk=2).handle([{"body": jpeg_bytes()}], context(model_dir))
    assert list(top2) == ["class6", "class1"]


def test_images_of_any_size_are_resized_to_the_model_input(rigged_dir: Path):
    h = make_handler(rigged_dir)
    assert h.image_size == 32
    bodies = [jpeg_bytes(), png_bytes((7, 5)), cell_crop("BloodImage_00007", "RBC")]
    answers = h.handle([{"body": body} for body in bodies], context(rigged_dir))
    assert all(list(answer) == ["WBC", "RBC", "Platelets"] for answer in answers), answers
    # 16-bit PNG (uint16 after decoding) and 8-bit images alike: float32 [3, 32, 32] in [0, 1]
    wide = torch.full((3, 10, 300), 65535, dtype=torch.uint16)
    wide[:, :, :150] = 0
    for raw in (torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8), wide):
        prepared = h.prepare_image(raw)
        assert prepared.shape == (3, 32, 32) and prepared.dtype == torch.float32
        assert 0.0 <= prepared.min() and prepared.max() <= 1.0
    # antialiased: a 1-px checkerboard shrinks to flat grey, not to aliased black/white
    checker = ((torch.arange(300)[:, None] + torch.arange(300)[None, :]) % 2 * 255).to(torch.uint8)
    prepared = h.prepare_image(checker.expand(3, 300, 300))
    assert prepared.sub(0.5).abs().max() < 0.05


def test_batch_answers_each_image_as_if_alone(random_dir: Path):
    h = make_handler(random_dir)
    bodies = [cell_crop("BloodImage_00007", "WBC"), cell_crop("BloodImage_00007", "RBC")]
    alone = [h.handle([{"body": body}], context(random_dir))[0] for body in bodies]
    assert alone[0] != alone[1], "random weights: two different cells, two different answers"
    ctx = context(random_dir)
    batch = h.handle([{"body": bodies[0]}, {"body": b"not an image"}, {"data": bodies[1]}], ctx)
    assert batch[0] == pytest.approx(alone[0], abs=2e-4)
    assert batch[2] == pytest.approx(alone[1], abs=2e-4)
    for answer in (batch[0], batch[2]):
        assert set(answer) == {"Platelets", "RBC", "WBC"}
        assert list(answer.values()) == sorted(answer.values(), reverse=True)
        assert sum(answer.values()) == pytest.approx(1.0, abs=1e-3)
    assert ctx.statuses == {1: (400, "Bad Request")}
    assert set(batch[1]) == {"error"} and "not a decodable image" in batch[1]["error"]
    assert ctx.content_types == {i: "application/json" for i in range(3)}


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({}, "empty request body"),
        ({"body": "not base64!"}, "not base64"),
        ({"body": jpeg_bytes()[:2000]}, "could not decode the JPEG image"),
    ],
    ids=["no-body", "text", "truncated-jpeg"],
)
def test_bad_bodies_get_400_like_the_detector(rigged_dir: Path, row, expected):
    ctx = context(rigged_dir)
    (response,) = make_handler(rigged_dir).handle([row], ctx)
    assert ctx.statuses == {0: (400, "Bad Request")}
    assert expected in response["error"]


def test_max_image_pixels_knob(rigged_dir: Path):
    ctx = context(rigged_dir)
    (response,) = make_handler(rigged_dir, max_image_pixels=1000).handle(
        [{"body": jpeg_bytes()}], ctx
    )
    assert ctx.statuses == {0: (400, "Bad Request")} and "640x480" in response["error"]


@pytest.mark.parametrize("topk", [0, -1, 2.5, "five"])
def test_invalid_topk_fails_initialize(rigged_dir: Path, topk):
    with pytest.raises(ValueError, match=r"handler\.topk=.* must be a positive integer"):
        make_handler(rigged_dir, topk=topk)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"task": "detection"}, "task='detection'; this handler serves classification"),
        ({"task": None}, "task=None; this handler serves classification"),
        ({"image_size": None}, "model.json lacks image_size"),
        ({"arch": "vgg16"}, "unknown classifier arch 'vgg16'"),
        ({"image_size": 64}, "convnet takes 32x32 inputs; got image_size 64"),
        ({"image_size": 0}, "model.json image_size=0 must be a positive integer"),
        ({"num_classes": 4}, r"needs exactly 0..3"),
    ],
    ids=["detection", "null-task", "no-image-size", "arch", "size", "zero-size", "classes"],
)
def test_bad_model_json_is_refused_with_a_clear_message(
    tmp_path: Path, rigged_dir: Path, change: dict, expected: str
):
    broken = tmp_path / "archive"
    shutil.copytree(rigged_dir, broken)
    spec = json.loads((broken / "model.json").read_text())
    for key, value in change.items():
        if value is None and key != "task":
            del spec[key]
        else:
            spec[key] = value
    (broken / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=expected):
        make_handler(broken)


def test_unreadable_or_missing_archive_files_are_named(tmp_path: Path, rigged_dir: Path):
    broken = tmp_path / "archive"
    shutil.copytree(rigged_dir, broken)
    (broken / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json in the model archive is not valid JSON"):
        make_handler(broken)
    (broken / "model.json").write_text(json.dumps(["a", "list"]))
    with pytest.raises(ValueError, match="model.json in the model archive is not a JSON object"):
        make_handler(broken)
    shutil.copy(rigged_dir / "model.json", broken / "model.json")
    (broken / "classifier.py").unlink()
    with pytest.raises(FileNotFoundError, match="model file classifier.py is missing"):
        make_handler(broken)
    shutil.copy(rigged_dir / "classifier.py", broken / "classifier.py")
    (broken / "index_to_name.json").write_text(json.dumps({"0": "RBC", "1": "RBC", "2": "WBC"}))
    with pytest.raises(ValueError, match="names a class twice"):
        make_handler(broken)


@pytest.fixture()
def flat_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Both handlers and their shared module flat in one dir on sys.path, as TorchServe
    extracts an archive and imports its handler (``importlib.import_module(name)``)."""
    for name in ("classifier_handler.py", "detector_handler.py", "base_handler.py"):
        shutil.copy(REPO / "handlers" / name, tmp_path / name)
    monkeypatch.syspath_prepend(str(tmp_path))
    flat = ("classifier_handler", "detector_handler", "base_handler")
    yield tmp_path
    for name in flat:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("module_name", "class_name"),
    [("classifier_handler", "ClassifierHandler"), ("detector_handler", "DetectorHandler")],
)
def test_flat_handler_module_imports_and_defines_exactly_one_class(
    flat_handlers: Path, module_name: str, class_name: str
):
    module = importlib.import_module(module_name)
    assert Path(module.__file__).parent == flat_handlers
    assert sys.modules["base_handler"].__file__ == str(flat_handlers / "base_handler.py")
    classes = list_classes_from_module(module)  # TorchServe's own check
    assert [cls.__name__ for cls in classes] == [class_name]
