"""Unit tests of the TorchServe handler, without a server.

The model is an untrained ``build_detector`` whose box classifier is rigged so that every region
proposal becomes a confident "RBC" (score ~0.9999) with the proposal's own box: the handler then
always has detections to format, whatever the random backbone does, and the assertions on
labels, boxes and thresholds mean something.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from ts.context import Context

from handlers.base_handler import NoImageError, request_body
from handlers.detector_handler import DetectorHandler
from models.detector import build_detector
from tests.helpers import FakeContext, jpeg_bytes, png_bytes

REPO = Path(__file__).resolve().parents[1]
JPEG = REPO / "data" / "bccd" / "JPEGImages" / "BloodImage_00007.jpg"
ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
LABELS = {"0": "__background__", "1": "Platelets", "2": "RBC", "3": "WBC"}


def write_rigged_model_dir(model_dir: Path) -> Path:
    """Lay out an extracted archive: detector.py, model.pt, index_to_name.json, model.json."""
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "models" / "detector.py", model_dir / "detector.py")
    torch.manual_seed(0)
    model = build_detector(ARCH, num_classes=4)
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))  # every region: RBC
        predictor.bbox_pred.weight.zero_()  # no box regression: boxes are the proposals
        predictor.bbox_pred.bias.zero_()
    torch.save(model.state_dict(), model_dir / "model.pt")
    (model_dir / "index_to_name.json").write_text(json.dumps(LABELS))
    spec = {"task": "detection", "arch": ARCH, "num_classes": 4, "frozen_bn": False}
    (model_dir / "model.json").write_text(json.dumps(spec))
    return model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extracted-archive dir holding the rigged model."""
    return write_rigged_model_dir(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def handler(model_dir: Path) -> DetectorHandler:
    """A handler initialized with the default knobs (score_threshold 0.5)."""
    h = DetectorHandler()
    h.initialize(FakeContext(model_dir))
    return h


def make_handler(model_dir: Path, **knobs) -> DetectorHandler:
    """A handler whose model-config YAML ``handler:`` section is ``knobs``."""
    h = DetectorHandler()
    h.initialize(FakeContext(model_dir, knobs))
    return h


def assert_detections(dets: list, width: int, height: int, threshold: float = 0.5) -> None:
    """Object-detector convention: [{"<label>": [x1, y1, x2, y2], "score": s}], best first."""
    assert isinstance(dets, list) and dets, "the rigged model always detects something"
    for det in dets:
        assert set(det) == {"RBC", "score"}, det
        x1, y1, x2, y2 = det["RBC"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height, det
        assert threshold <= det["score"] <= 1.0
    scores = [det["score"] for det in dets]
    assert scores == sorted(scores, reverse=True)
    json.dumps(dets)  # what TorchServe does with it


def test_jpeg_gives_labelled_boxes_in_image_pixels(handler: DetectorHandler, model_dir: Path):
    context = FakeContext(model_dir)
    (dets,) = handler.handle([{"body": jpeg_bytes()}], context)
    assert_detections(dets, 640, 480)
    assert context.statuses == {}  # 200 by default
    assert context.content_types == {0: "application/json"}
    assert context.timings and context.timings[0][0] == "HandlerTime"


def test_png_gives_the_same_detections_as_the_jpeg(handler: DetectorHandler, model_dir: Path):
    (from_jpeg,) = handler.handle([{"body": jpeg_bytes()}], FakeContext(model_dir))
    (from_png,) = handler.handle([{"data": png_bytes()}], FakeContext(model_dir))
    assert from_png == from_jpeg


def test_boxes_are_in_the_coordinates_of_the_image_as_sent(handler: DetectorHandler, model_dir):
    """The model resizes to 320 px internally; boxes must come back in the sent image's pixels."""
    (big,) = handler.handle([{"body": png_bytes((960, 720))}], FakeContext(model_dir))
    (small,) = handler.handle([{"body": png_bytes((200, 150))}], FakeContext(model_dir))
    assert_detections(big, 960, 720)
    assert_detections(small, 200, 150)
    assert max(det["RBC"][2] for det in big) > 640  # not clipped to a 640 or 320 px frame
    assert max(det["RBC"][3] for det in big) > 480


def test_bad_body_in_a_batch_gets_its_own_400(handler: DetectorHandler, model_dir: Path):
    context = FakeContext(model_dir)
    batch = [{"body": jpeg_bytes()}, {"body": b"not an image"}, {"body": png_bytes()}]
    responses = handler.handle(batch, context)
    assert len(responses) == 3
    assert_detections(responses[0], 640, 480)
    assert_detections(responses[2], 640, 480)
    assert context.statuses == {1: (400, "Bad Request")}
    assert set(responses[1]) == {"error"}
    assert "not a decodable image" in responses[1]["error"]
    assert context.content_types == {i: "application/json" for i in range(3)}
    json.dumps(responses)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({}, "empty request body"),
        ({"body": b""}, "empty request body"),
        ({"body": {"image": "x"}}, "JSON body is not an image"),
        ({"not an image": b"", "x": b""}, "only form fields"),
        ({"body": "not base64!"}, "not base64"),
        ({"body": b"GIF89a" + bytes(64)}, "not a decodable image"),
        ({"body": jpeg_bytes()[:2000]}, "could not decode the JPEG image: Image is incomplete"),
        ({"body": png_bytes()[:2000]}, "could not decode the PNG image"),
    ],
    ids=[
        "no-body",
        "empty",
        "json",
        "form",
        "text",
        "garbage-gif",
        "truncated-jpeg",
        "truncated-png",
    ],
)
def test_each_bad_body_is_explained(handler: DetectorHandler, model_dir: Path, row, expected):
    context = FakeContext(model_dir)
    (response,) = handler.handle([row], context)
    assert context.statuses == {0: (400, "Bad Request")}
    assert expected in response["error"]


def test_a_form_encoded_request_without_an_image_is_explained_as_such():
    form = "application/x-www-form-urlencoded; charset=utf-8"
    for row in ({}, {"not an image": b"", "x": b""}):
        with pytest.raises(NoImageError, match="sent form-encoded.*curl -T"):
            request_body(row, form)
        with pytest.raises(NoImageError, match="empty request body|only form fields"):
            request_body(row, "image/jpeg")
    assert request_body({"body": b"bytes"}, form) == b"bytes"  # a body that is there is kept


def test_unsupported_format_is_refused(handler: DetectorHandler, model_dir: Path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="BMP")
    context = FakeContext(model_dir)
    (response,) = handler.handle([{"body": buffer.getvalue()}], context)
    assert context.statuses[0][0] == 400
    assert "unsupported image format BMP" in response["error"]


def test_base64_text_and_other_multipart_names_are_accepted(handler: DetectorHandler, model_dir):
    text = base64.b64encode(jpeg_bytes()).decode("ascii")
    batch = [{"body": text}, {"file": jpeg_bytes()}]
    for dets in handler.handle(batch, FakeContext(model_dir)):
        assert_detections(dets, 640, 480)


def test_knobs_come_from_the_model_yaml(model_dir: Path):
    strict = make_handler(model_dir, score_threshold=0.99995)  # above every rigged score
    assert strict.score_threshold == 0.99995
    assert strict.handle([{"body": jpeg_bytes()}], FakeContext(model_dir)) == [[]]

    tiny = make_handler(model_dir, max_image_pixels=1000)
    context = FakeContext(model_dir)
    (response,) = tiny.handle([{"body": jpeg_bytes()}], context)
    assert context.statuses == {0: (400, "Bad Request")}
    assert "640x480" in response["error"]


def test_invalid_knob_fails_initialize(model_dir: Path):
    with pytest.raises(ValueError, match="score_threshold"):
        make_handler(model_dir, score_threshold=2)


def test_missing_archive_file_is_named(tmp_path: Path, model_dir: Path):
    broken = tmp_path / "archive"
    shutil.copytree(model_dir, broken)
    (broken / "index_to_name.json").unlink()
    with pytest.raises(FileNotFoundError, match="index_to_name.json"):
        DetectorHandler().initialize(FakeContext(broken))


def test_fake_context_matches_ts_context():
    """The fake's methods have the signatures of TorchServe's own Context."""
    for name in ("set_response_status", "set_response_content_type"):
        fake = inspect.signature(getattr(FakeContext, name))
        real = inspect.signature(getattr(Context, name))
        assert list(fake.parameters) == list(real.parameters), name
    real_init = inspect.signature(Context.__init__).parameters
    assert {"model_dir", "manifest", "model_yaml_config", "metrics"} <= set(real_init)
