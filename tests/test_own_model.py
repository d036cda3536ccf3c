"""Your own model (``model.arch: path/to/file.py:function``): found, imported, called and checked
against its task's contract on a dummy batch, each failure refused with a message naming the
entry point and what was wrong. (Trained, archived and served: tests/test_serving.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from models.entry_point import build, is_entry_point, resolve
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
    assert entry.spec() == {
        "entry_point": f"{models_file}:build_net", "model_file": "my_nets.py",
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
        ("{reserved}:build_net", "may not be called image_request.py"),
    ],
)
def test_each_broken_entry_point_is_refused_naming_it(models_file, tmp_path, arch, message):
    (tmp_path / "broken.py").write_text("def build_net(:\n")
    (tmp_path / "reserved").mkdir()
    (tmp_path / "reserved" / "image_request.py").write_text(GOOD)
    text = arch.format(
        dir=tmp_path, file=models_file, broken=tmp_path / "broken.py",
        reserved=tmp_path / "reserved" / "image_request.py",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=message) as caught:
        build(resolve(text), "classification", 3, 16, False)
    assert f"model.arch {text!r}" in str(caught.value)


def test_a_classifier_is_refused_as_a_detector(models_file):
    with pytest.raises(ConfigError, match="breaks the detection contract"):
        build(resolve(f"{models_file}:build_net"), "detection", 3, 16, False)


def test_the_config_takes_an_entry_point_for_either_task_and_names_the_choices():
    for task in ("detection", "classification"):
        cfg = load_config(None, [f"task={task}", "model.arch=my.py:build"])
        assert is_entry_point(cfg.model.arch)
    with pytest.raises(ConfigError, match="or your own model as path/to/file.py:function"):
        load_config(None, ["model.arch=resnet9000"])
