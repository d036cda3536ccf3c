"""Archive and serve a detector and a classifier with the real ``torch-model-archiver`` and
TorchServe.

The integration tests start one TorchServe, serving both archives, on free loopback ports with a
runtime dir (config, logs, TMPDIR with its pid file) under pytest's tmp dir, so they can run next
to a user's server; the server is always stopped at teardown. The first tests are fast checks of
the same modules without a server.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import torch
from torchvision.io import decode_jpeg
from torchvision.transforms.v2.functional import resize, to_dtype

from common.process import free_ports
from models.classifier import load_trained_classifier
from models.detector import build_detector
from models.own_model import load_trained as load_own_model
from scripts import archive as archive_cli
from scripts import serve as serve_cli
from scripts import train as train_cli
from serve.archive import (
    ArchiveError,
    archived_task,
    build_archive,
    check_training_output,
    human_size,
)
from serve.preflight import list_models
from serve.properties import (
    BASE_CONFIG,
    ServeError,
    derive_properties,
    listeners_from_properties,
    read_properties,
)
from serve.torchserve import RuntimeDir, running_pid, start_server, stop_server
from tests.helpers import REPO, cell_crop, make_voc_subset, write_classifier_output

JPEG = REPO / "data" / "bccd" / "JPEGImages" / "BloodImage_00007.jpg"
ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
LABELS = {"0": "__background__", "1": "Platelets", "2": "RBC", "3": "WBC"}
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def write_untrained_output(out: Path) -> Path:
    """Write what a training run leaves in OUT, from an untrained model."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_detector(ARCH, num_classes=4).state_dict(), out / "model.pt")
    (out / "index_to_name.json").write_text(json.dumps(LABELS))
    spec = {"task": "detection", "arch": ARCH, "num_classes": 4, "frozen_bn": False}
    (out / "model.json").write_text(json.dumps(spec))
    return out


# ---------------------------------------------------------------------- without a server


def test_archive_names_the_missing_file_and_the_fix(tmp_path: Path, capsys):
    out = write_untrained_output(tmp_path / "out")
    (out / "model.json").unlink()
    with pytest.raises(ArchiveError, match=r"model\.json is missing: run `make train` first"):
        check_training_output(out)
    code = archive_cli.main(["--out", str(out), "--model-store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "make train" in err and "Traceback" not in err
    assert not (tmp_path / "store" / "detector.mar").exists()


def test_unknown_task_is_refused_in_one_line(tmp_path: Path, capsys):
    out = write_classifier_output(tmp_path / "out")
    spec = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**spec, "task": "segmentation"}))
    expected = r"task='segmentation'; can archive only classification or detection"
    with pytest.raises(ArchiveError, match=expected):
        check_training_output(out)
    code = archive_cli.main(["--out", str(out), "--model-store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "segmentation" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_classifier_output_is_archived_with_the_classifier_files(tmp_path: Path, capsys):
    out = write_classifier_output(tmp_path / "out")  # ConvNet: a small archive, built quickly
    store = tmp_path / "store"
    assert archive_cli.main(["--out", str(out), "--model-store", str(store)]) == 0
    archive = store / "classifier.mar"  # the name comes from model.json's task
    assert capsys.readouterr().out.startswith(f"{archive} (")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
        for name, source in [
            ("classifier.py", REPO / "models" / "classifier.py"),
            ("classifier_handler.py", REPO / "handlers" / "classifier_handler.py"),
            ("base_handler.py", REPO / "handlers" / "base_handler.py"),
            ("classifier.yaml", REPO / "serve" / "classifier.yaml"),
            ("model.json", out / "model.json"),
            ("index_to_name.json", out / "index_to_name.json"),
        ]:
            assert zf.read(name) == source.read_bytes(), name
    assert names == {
        "MAR-INF/MANIFEST.json", "model.pt", "model.json", "index_to_name.json",
        "classifier.py", "classifier_handler.py", "base_handler.py", "classifier.yaml",
    }  # fmt: skip
    assert manifest["modelFile"] == "classifier.py"
    assert manifest["handler"] == "classifier_handler.py"
    assert manifest["configFile"] == "classifier.yaml"
    assert archived_task(archive) == "classification"

    argv = ["--out", str(out), "--model-store", str(store), "--name", "cells"]
    assert archive_cli.main(argv) == 0
    assert sorted(p.name for p in store.iterdir()) == ["cells.mar", "classifier.mar"]


def write_detection_stub(out: Path) -> Path:
    """A detection training output whose model.pt is a stub: archiving never loads it."""
    out.mkdir(parents=True)
    torch.save({}, out / "model.pt")
    (out / "index_to_name.json").write_text(json.dumps(LABELS))
    spec = {"task": "detection", "arch": ARCH, "num_classes": 4, "frozen_bn": False}
    (out / "model.json").write_text(json.dumps(spec))
    return out


def test_archive_without_out_archives_every_trained_task(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default outputs are relative to the repository root
    argv = ["--model-store", "store"]
    assert archive_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `make train` first" in err
    assert "outputs/detection" in err and "outputs/classification" in err

    write_classifier_output(tmp_path / "outputs" / "classification")
    assert archive_cli.main(argv) == 0
    size = human_size((tmp_path / "store" / "classifier.mar").stat().st_size)
    assert capsys.readouterr().out.splitlines() == [f"{Path('store', 'classifier.mar')} ({size})"]
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["classifier.mar"]

    detection = write_detection_stub(tmp_path / "outputs" / "detection")
    assert archive_cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [Path(line.split(" (")[0]).name for line in printed] == [
        "detector.mar",
        "classifier.mar",
    ]
    assert archived_task(tmp_path / "store" / "detector.mar") == "detection"

    (detection / "model.json").unlink()  # one broken output: the other is still archived
    (tmp_path / "store" / "classifier.mar").unlink()
    assert archive_cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "detection/model.json is missing" in captured.err
    assert (tmp_path / "store" / "classifier.mar").is_file()

    with pytest.raises(SystemExit) as exc:
        archive_cli.main([*argv, "--name", "x"])
    assert exc.value.code == 2 and "--name needs --out" in capsys.readouterr().err


def test_curl_hints_use_a_cell_crop_for_classifiers(tmp_path: Path, monkeypatch):
    crop = tmp_path / "cells" / "test" / "WBC" / "BloodImage_00001_00.jpg"
    monkeypatch.setattr(serve_cli, "CLASSIFICATION_EXAMPLE", crop)
    assert serve_cli.example_image("detection") == serve_cli.DETECTION_EXAMPLE
    assert serve_cli.example_image(None) == serve_cli.DETECTION_EXAMPLE
    assert "python -m scripts.make_crops" in serve_cli.example_image("classification")
    crop.parent.mkdir(parents=True)
    crop.write_bytes(cell_crop())
    assert serve_cli.example_image("classification") == str(crop)


def test_serve_bench_refuses_an_empty_store_an_unknown_model_and_bad_numbers(tmp_path, capsys):
    from scripts import serve_bench

    assert serve_bench.main(["--model-store", str(tmp_path)]) == 2
    assert "no archives in" in capsys.readouterr().err
    (tmp_path / "detector.mar").write_bytes(b"")
    assert serve_bench.main(["--model-store", str(tmp_path), "--models", "nope"]) == 2
    assert "no nope.mar in" in capsys.readouterr().err
    assert serve_bench.main(["--model-store", str(tmp_path), "--concurrency", "x"]) == 2
    assert "--concurrency 'x': whole numbers" in capsys.readouterr().err
    assert serve_bench.main(["--model-store", str(tmp_path), "--bad", "1.5"]) == 2


def test_the_bad_share_is_spread_evenly_with_each_kind_in_turn():
    from bench.serving.load import Body, schedule

    goods = [Body(b"g%d" % i, "image/jpeg", "good", 200) for i in range(3)]
    bads = [Body(b"", "x", f"bad{i}", 400) for i in range(2)]
    kinds = [b.kind for b in schedule(goods, bads, 20, 0.25)]
    assert (kinds.count("bad0"), kinds.count("bad1"), kinds.count("good")) == (3, 2, 15)
    assert kinds[3] == "bad0" and kinds[7] == "bad1"  # every fourth request
    assert [b.kind for b in schedule(goods, bads, 5, 0.0)] == ["good"] * 5


def test_serve_start_without_archives_says_make_archive(tmp_path: Path, capsys):
    (tmp_path / "store").mkdir()
    with pytest.raises(ServeError, match="make archive"):
        list_models(tmp_path / "store")
    argv = ["start", "--model-store", str(tmp_path / "store"), "--runtime-dir", str(tmp_path)]
    assert serve_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make archive" in err


def test_stop_and_status_without_a_server(tmp_path: Path, capsys):
    assert serve_cli.main(["stop", "--runtime-dir", str(tmp_path)]) == 0
    assert "nothing to stop" in capsys.readouterr().out
    assert serve_cli.main(["status", "--runtime-dir", str(tmp_path)]) == 3


def test_derived_config_loopback_and_public(tmp_path: Path):
    base = read_properties(BASE_CONFIG)
    listeners = listeners_from_properties(base)
    assert listeners.all_loopback, "the repo config must bind loopback only"
    assert base["disable_token_authorization"] == "true"
    assert base["enable_model_api"] == "false"

    store = tmp_path / "model store"
    local = derive_properties(base, listeners.override(inference=9001), store)
    assert local["inference_address"] == "http://127.0.0.1:9001"
    assert local["disable_token_authorization"] == "true"
    assert "model_store" not in local and "load_models" not in local
    # allowed_urls: Java regex for exactly the store's archives, backslashes doubled for
    # the properties format.
    regex = local["allowed_urls"].replace("\\\\", "\\")
    assert re.fullmatch(regex, f"file://{store.resolve()}/detector.mar")
    assert not re.fullmatch(regex, "file:///etc/detector.mar")
    assert not re.fullmatch(regex, "https://example.com/detector.mar")

    public = derive_properties(base, listeners.override(host="0.0.0.0"), store)
    assert "disable_token_authorization" not in public  # token authorization on
    assert public["grpc_inference_address"] == "0.0.0.0"
    forced = derive_properties(base, listeners, store, token_auth=True)
    assert "disable_token_authorization" not in forced


# ---------------------------------------------------------------------- with TorchServe


@pytest.fixture(scope="module")
def trained_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real training output: one epoch on 4 BCCD images, from scratch, as `make train` runs it."""
    root = tmp_path_factory.mktemp("train")
    voc = make_voc_subset(root / "bccd", {"train": 4, "test": 2})
    out = root / "out"
    code = train_cli.main([
        "--data", str(voc), "--out", str(out), "--epochs", "1", "--batch-size", "2",
        "--workers", "0", "--no-pretrained", "--access", "shards",
        "--set", "model.image_size=160",
    ])  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def low_threshold_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """serve/detector.yaml with score_threshold 0: a 1-epoch model's boxes all come back."""
    path = tmp_path_factory.mktemp("config") / "detector.yaml"
    text = (REPO / "serve" / "detector.yaml").read_text()
    path.write_text(text.replace("score_threshold: 0.5", "score_threshold: 0.0"))
    return path


@pytest.fixture(scope="module")
def classifier_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification training output: untrained ResNet-18 at 64 px, the 3 cell classes."""
    out = tmp_path_factory.mktemp("classification") / "out"
    return write_classifier_output(out, arch="resnet18", image_size=64)


@pytest.fixture(scope="module")
def own_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier of the user's (``examples/my_models.py:build_net``), trained for one epoch
    on cell crops of 4 BCCD images, as `make train TASK=classification` runs it."""
    from tests.helpers import make_cells

    root = tmp_path_factory.mktemp("own")
    voc = make_voc_subset(root / "bccd", {"train": 2, "test": 2})
    cells = make_cells(root / "cells", voc, {"train": 2, "test": 2})
    out = root / "out"
    code = train_cli.main([
        "--config", "configs/classification.yaml", "--data", str(cells), "--out", str(out),
        "--epochs", "1", "--batch-size", "8", "--workers", "0",
        "--arch", "examples/my_models.py:build_net", "--set", "model.image_size=48",
    ])  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def served(
    trained_out: Path,
    classifier_out: Path,
    own_out: Path,
    low_threshold_config: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """Archive ``trained_out`` and ``classifier_out`` like ``scripts/archive.py`` and serve
    both from one TorchServe on free ports.

    Yields the ``ServerInfo``; the server is stopped at teardown, also when a test failed.
    """
    root = tmp_path_factory.mktemp("serving")
    store = root / "model_store"
    archive = build_archive(trained_out, store, "detector", config_file=low_threshold_config)
    assert archive == store / "detector.mar" and archive.stat().st_size > 1_000_000
    assert build_archive(classifier_out, store) == store / "classifier.mar"  # name from the task
    assert build_archive(own_out, store, "mine") == store / "mine.mar"
    # no staging dir left
    assert sorted(p.name for p in store.iterdir()) == ["classifier.mar", "detector.mar", "mine.mar"]
    runtime = root / "run"
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    try:
        try:
            info = start_server(store, runtime, ports=ports, timeout_s=240, log=lambda _: None)
        except ServeError as exc:
            pytest.fail(f"{exc}\n{exc.details}")
        yield info
    finally:
        stop_server(runtime)
    assert running_pid(runtime) is None
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == "zombie"


@pytest.fixture()
def http() -> requests.Session:
    """HTTP session that ignores proxy settings (the server is on loopback)."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def worker_pids(http: requests.Session, info) -> list[int]:
    """Pids of the model's workers, all of which must be READY."""
    response = http.get(f"{info.management_url}/models/detector", timeout=10)
    response.raise_for_status()
    workers = response.json()[0]["workers"]
    assert workers and all(w["status"] == "READY" for w in workers), workers
    return [w["pid"] for w in workers]


def predict(http: requests.Session, info, body: bytes, content_type: str = "image/jpeg"):
    """POST one body to the detector's prediction URL."""
    return http.post(
        info.prediction_url("detector"),
        data=body,
        headers={"Content-Type": content_type},
        timeout=60,
    )


def assert_detection_list(response: requests.Response, min_score: float = 0.0) -> list:
    """200 with the object-detector JSON convention: a non-empty list of labelled boxes."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    dets = response.json()
    assert isinstance(dets, list)
    for det in dets:
        (label,) = set(det) - {"score"}
        assert label in {"Platelets", "RBC", "WBC"}
        x1, y1, x2, y2 = det[label]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 480
        assert min_score <= det["score"] <= 1.0
    assert dets, "no boxes at score_threshold 0: the model or the handler dropped them"
    return dets


@pytest.mark.integration
def test_served_model_answers_refuses_bad_input_and_keeps_working(served, http):
    rt = RuntimeDir(Path(served.runtime_dir))
    assert rt.pid_file.is_file()  # TorchServe's pid file is private to this runtime dir
    assert http.get(f"{served.inference_url}/ping", timeout=10).json() == {"status": "Healthy"}
    before = worker_pids(http, served)

    assert_detection_list(predict(http, served, JPEG.read_bytes()))

    bad = predict(http, served, b"not an image", "application/octet-stream")
    assert 400 <= bad.status_code < 500
    assert "not a decodable image" in bad.json()["error"]

    # What curl --data-binary sends without -H. TorchServe's front end parses the body as form
    # fields first: a JPEG's bytes fail there (500, "Bad end of line", see Troubleshooting);
    # a body it can parse reaches the handler without an image, which says why.
    form = predict(http, served, b"abc", "application/x-www-form-urlencoded")
    assert form.status_code == 400
    assert "sent form-encoded" in form.json()["error"] and "curl -T" in form.json()["error"]

    assert_detection_list(predict(http, served, JPEG.read_bytes()))
    assert worker_pids(http, served) == before  # the same worker, never restarted


@pytest.mark.integration
def test_concurrent_requests_each_get_their_own_answer(served, http):
    bodies = [JPEG.read_bytes(), b"", JPEG.read_bytes(), b"GIF89a-not-really"]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: predict(http, served, body), bodies))
    assert_detection_list(responses[0])
    assert_detection_list(responses[2])
    assert responses[1].status_code == 400 and "empty request body" in responses[1].json()["error"]
    assert responses[3].status_code == 400 and "error" in responses[3].json()


@pytest.mark.integration
def test_status_and_config_of_the_running_server(served, capsys):
    assert serve_cli.main(["status", "--runtime-dir", served.runtime_dir]) == 0
    out = capsys.readouterr().out
    assert f"detector: READY  POST {served.prediction_url('detector')}" in out
    assert f"classifier: READY  POST {served.prediction_url('classifier')}" in out
    config = read_properties(RuntimeDir(Path(served.runtime_dir)).config)
    assert config["inference_address"] == served.inference_url
    assert config["disable_token_authorization"] == "true"  # loopback only


@pytest.mark.integration
def test_classifier_is_served_next_to_the_detector(served, classifier_out: Path, http):
    assert served.models == ["classifier", "detector", "mine"]
    crop = cell_crop("BloodImage_00007", "WBC")  # a real cell, cut from a BCCD photo
    response = http.post(
        served.prediction_url("classifier"),
        data=crop,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert set(answer) == {"Platelets", "RBC", "WBC"}  # top-k capped at the 3 classes
    assert list(answer.values()) == sorted(answer.values(), reverse=True)
    assert sum(answer.values()) == pytest.approx(1.0, abs=1e-3)

    # The served model is the archived one, fed the way the Classifier expects: the same
    # probabilities as the training output loaded here and given the resized crop.
    model, labels = load_trained_classifier(classifier_out)
    image = decode_jpeg(torch.frombuffer(bytearray(crop), dtype=torch.uint8))
    image = resize(to_dtype(image, torch.float32, scale=True), [64, 64], antialias=True)
    with torch.inference_mode():
        probs = model(image[None]).softmax(dim=1)[0].tolist()
    assert answer == pytest.approx({labels[str(i)]: p for i, p in enumerate(probs)}, abs=1e-3)

    bad = http.post(
        served.prediction_url("classifier"),
        data=b"not an image",
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert bad.status_code == 400
    assert "not a decodable image" in bad.json()["error"]

    assert_detection_list(predict(http, served, JPEG.read_bytes()))  # the detector still answers


@pytest.mark.integration
def test_a_model_of_your_own_is_archived_served_and_predicted_like_a_built_in_one(
    served, own_out: Path, http
):
    spec = json.loads((own_out / "model.json").read_text())
    assert spec["reference"] == "examples/my_models.py:build_net"
    assert (own_out / "my_models.py").read_bytes() == (REPO / "examples/my_models.py").read_bytes()
    with zipfile.ZipFile(Path(served.runtime_dir).parent / "model_store" / "mine.mar") as zf:
        assert "my_models.py" in zf.namelist() and "classifier.py" not in zf.namelist()
    crop = cell_crop("BloodImage_00007", "WBC")
    response = http.post(
        served.prediction_url("mine"), data=crop, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    # the served model is the trained one: the probabilities `make predict` computes
    model, labels = load_own_model(own_out)
    image = decode_jpeg(torch.frombuffer(bytearray(crop), dtype=torch.uint8))
    image = resize(to_dtype(image, torch.float32, scale=True), [48, 48], antialias=True)
    with torch.inference_mode():
        probs = model(image[None]).softmax(dim=1)[0].tolist()
    assert answer == pytest.approx({labels[str(i)]: p for i, p in enumerate(probs)}, abs=1e-3)


@pytest.mark.integration
def test_serve_bench_measures_a_served_model_under_load(served, tmp_path, monkeypatch):
    """20 requests at concurrency 4 to the served detector, one in four bad: every status as
    expected, every report field there, the in-process figure measured (on 4 images here)."""
    import argparse

    from bench.serving import run as serve_run
    from bench.serving.report import COLUMNS, write_outputs
    from bench.serving.run import measure

    monkeypatch.setattr(serve_run, "IN_PROCESS_IMAGES", 4)
    store = Path(served.runtime_dir).parent / "model_store"
    args = argparse.Namespace(requests=40, bad=0.25, repeats=2)
    rows = measure(args, store / "detector.mar", "detector", served, [4], cold=12.5)
    assert [r["repeat"] for r in rows] == [0, 1]  # two runs, each followed by in-process
    for row in rows:  # 5 bad of 20: each kind once, the last too large
        assert row["statuses"] == "200:15 400:4 413:1"
        assert row["wrong"] == 0 and row["first_wrong"] == "" and row["worker_restarts"] == 0
        assert row["requests"] == 20 and row["images_per_s"] > 0
        assert row["latency_p50_ms"] <= row["latency_p90_ms"] <= row["latency_p99_ms"]
        assert row["in_process_images_per_s"] > 0 and row["served_vs_in_process"] > 0
        assert row["server_inference_ms"] > 0 and row["server_queue_ms"] >= 0
    ratios = sorted(r["served_vs_in_process"] for r in rows)
    assert rows[0]["served_vs_in_process_median"] == pytest.approx(sum(ratios) / 2)
    assert (rows[1]["served_vs_in_process_min"], rows[1]["served_vs_in_process_max"]) == (
        ratios[0], ratios[1])  # fmt: skip
    write_outputs(tmp_path, {"requests": 40}, rows)
    with open(tmp_path / "results.csv") as f:
        header, values, _ = f.read().splitlines()
    assert header.split(",") == COLUMNS and "" not in values.split(",")[:13]
    for name in ("report.md", "latency.png", "throughput.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "cold start (start to every model READY): 12.5 s" in (tmp_path / "report.md").read_text()


@pytest.mark.integration
def test_both_archives_hold_their_task_files(served):
    store = Path(served.runtime_dir).parent / "model_store"
    for name, task in (("detector", "detection"), ("classifier", "classification")):
        with zipfile.ZipFile(store / f"{name}.mar") as zf:
            names = set(zf.namelist())
        assert {f"{name}.py", f"{name}_handler.py", "base_handler.py", f"{name}.yaml"} <= names
        assert archived_task(store / f"{name}.mar") == task


@pytest.mark.integration
def test_start_prints_a_curl_hint_for_every_model(served, monkeypatch, capsys):
    store = Path(served.runtime_dir).parent / "model_store"
    monkeypatch.setattr(serve_cli, "start_server", lambda *args, **kwargs: served)
    argv = ["start", "--model-store", str(store), "--runtime-dir", served.runtime_dir]
    assert serve_cli.main(argv) == 0
    hints = [line for line in capsys.readouterr().out.splitlines() if "try: curl" in line]
    assert hints == [
        f"  try: curl {served.prediction_url('classifier')} -T "
        + serve_cli.example_image("classification"),
        f"  try: curl {served.prediction_url('detector')} -T {serve_cli.DETECTION_EXAMPLE}",
        f"  try: curl {served.prediction_url('mine')} -T "
        + serve_cli.example_image("classification"),
    ]


@pytest.mark.integration
def test_second_start_in_the_same_runtime_dir_is_refused(served):
    store = Path(served.runtime_dir).parent / "model_store"
    with pytest.raises(ServeError, match="already runs"):
        start_server(store, served.runtime_dir, log=lambda _: None)
    assert running_pid(served.runtime_dir) == served.pid  # and the running one is untouched


def test_failed_archiver_keeps_the_old_archive_and_no_staging_dir(tmp_path: Path, monkeypatch):
    out = write_untrained_output(tmp_path / "out")
    store = tmp_path / "store"
    store.mkdir()
    (store / "detector.mar").write_bytes(b"previous archive")
    monkeypatch.setattr("serve.archive.find_model_archiver", lambda: shutil.which("false"))
    with pytest.raises(ArchiveError, match=r"torch-model-archiver failed \(exit 1\)"):
        build_archive(out, store)
    assert [p.name for p in store.iterdir()] == ["detector.mar"]
    assert (store / "detector.mar").read_bytes() == b"previous archive"
