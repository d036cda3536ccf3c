"""make predict: local files, .txt lists, S3 URIs; drawn images and detections.json."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.io import decode_jpeg

from models.detector import build_detector
from scripts import predict as predict_cli
from tests.helpers import BCCD
from training.predict import expand_inputs

IMAGE = BCCD / "JPEGImages" / "BloodImage_00007.jpg"


@pytest.fixture
def trained_out(tmp_path):
    """A training output dir holding an untrained model (the format is what matters here)."""
    out = tmp_path / "out"
    out.mkdir()
    torch.manual_seed(0)
    model = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 4)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "model.json").write_text(
        json.dumps({"arch": "fasterrcnn_mobilenet_v3_large_320_fpn", "num_classes": 4})
    )
    labels = {"0": "__background__", "1": "RBC", "2": "WBC", "3": "Platelets"}
    (out / "index_to_name.json").write_text(json.dumps(labels))
    return out


def test_expand_inputs_reads_lists_and_refuses_nothing(tmp_path):
    listing = tmp_path / "l.txt"
    listing.write_text("# images\na.jpg\n\ns3://b/k.jpg\n")
    assert expand_inputs(str(listing), lambda p: open(p).read()) == ["a.jpg", "s3://b/k.jpg"]
    assert expand_inputs("x.png", None) == ["x.png"]
    with pytest.raises(ValueError, match="no input"):
        expand_inputs("", None)


def test_predict_draws_every_image_and_reports_the_bad_ones(trained_out, tmp_path, capsys):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{IMAGE}\n{tmp_path / 'missing.jpg'}\n")
    code = predict_cli.main(
        ["--out", str(trained_out), "--input", str(listing), "--threshold", "0.0"]
    )
    assert code == 1  # one input failed
    result = json.loads((trained_out / "predicted_images" / "detections.json").read_text())
    (prediction,) = result["predictions"]
    assert prediction["input"] == str(IMAGE)
    assert result["failures"][0]["input"].endswith("missing.jpg")
    drawn = decode_jpeg(
        torch.frombuffer(bytearray(open(prediction["image_path"], "rb").read()), dtype=torch.uint8)
    )
    assert drawn.shape == (3, 480, 640)  # the original image size
    for det in prediction["detections"]:
        assert det["label"] in {"RBC", "WBC", "Platelets"} and len(det["box"]) == 4
    assert "1 images, 1 failed" in capsys.readouterr().out


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert predict_cli.main(["--out", str(tmp_path), "--input", str(IMAGE)]) == 2
    assert "model.json is missing: train first" in capsys.readouterr().err


@pytest.mark.integration
def test_predict_reads_an_s3_uri(trained_out, s3_server, tmp_path):
    from pipelines.storage.s3 import S3Storage

    storage = S3Storage("predict-bucket", endpoint_url=s3_server.endpoint)
    storage.client().create_bucket(Bucket="predict-bucket")
    storage.write("imgs/a.jpg", IMAGE.read_bytes())
    code = predict_cli.main([
        "--out", str(trained_out), "--input", "s3://predict-bucket/imgs/a.jpg",
        "--s3-endpoint", s3_server.endpoint, "--output-dir", str(tmp_path / "pred"),
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert result["predictions"][0]["input"] == "s3://predict-bucket/imgs/a.jpg"


def test_predict_with_a_classifier_lists_the_top_classes(tmp_path, capsys):
    from models.classifier import build_classifier

    out = tmp_path / "cls"
    out.mkdir()
    torch.save(build_classifier("convnet", 3, image_size=32).state_dict(), out / "model.pt")
    spec = {"task": "classification", "arch": "convnet", "num_classes": 3, "image_size": 32}
    (out / "model.json").write_text(json.dumps(spec))
    (out / "index_to_name.json").write_text(json.dumps({"0": "Platelets", "1": "RBC", "2": "WBC"}))
    assert predict_cli.main(["--out", str(out), "--input", str(IMAGE)]) == 0
    result = json.loads((out / "predicted_images" / "detections.json").read_text())
    classes = result["predictions"][0]["detections"]
    assert sorted(c["label"] for c in classes) == ["Platelets", "RBC", "WBC"]  # k = min(5, 3)
    scores = [c["score"] for c in classes]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-3)
    assert "1 images, 0 failed" in capsys.readouterr().out
