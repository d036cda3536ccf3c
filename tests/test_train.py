"""Real training runs on a few BCCD images: outputs, metrics, resume, user errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from models.detector import build_detector
from scripts.train import main as train_main
from training import detection
from training.run import METRICS_COLUMNS

pytestmark = pytest.mark.integration


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train(voc_root, out, *extra):
    return train_main(
        [
            "--data",
            str(voc_root),
            "--out",
            str(out),
            "--limit",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--no-pretrained",
            "--set",
            "model.image_size=160",
            *extra,
        ]
    )


@pytest.mark.parametrize("access", ["random", "shards", "objects"])
def test_one_epoch_writes_every_output_with_consistent_metrics(voc_root, tmp_path, access):
    out = tmp_path / "out"
    assert train(voc_root, out, "--access", access) == 0
    for name in (
        "model.pt",
        "index_to_name.json",
        "model.json",
        "metrics.csv",
        "steps.csv",
        "benchmark.log",
        "checkpoint.pt",
        "config.yaml",
    ):
        assert (out / name).is_file(), name
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == 1 and list(rows[0]) == METRICS_COLUMNS + detection.quality_columns([])
    text = ("task", "access", "storage", "errors", "pretrained")
    row = {k: (v if k in text else float(v)) for k, v in rows[0].items()}
    assert (row["task"], row["access"]) == ("detection", access)
    assert row["pretrained"] == "False"  # --no-pretrained: a result judged knowing it
    assert row["storage"] == "fs" and row["errors"] == "" and row["retries"] == 0
    assert row["samples"] == 4 and row["skipped"] == 0
    # one read per shard (4 images of ~23 kB: 2 shards, sized for 2 readers), or per image
    shard_files = list((voc_root / "shards").glob("train-first4-for2/*.tar"))
    assert row["requests"] == (len(shard_files) if access == "shards" else 4)
    assert (len(shard_files) >= 2) == (access == "shards")
    assert row["bytes_per_request"] == pytest.approx(row["bytes_read"] / row["requests"], rel=1e-4)
    assert 0 < row["ttfb_p50_ms"] <= row["ttfb_p99_ms"]
    if access in ("random", "objects"):
        ids = (voc_root / "ImageSets/Main/train.txt").read_text().split()[:4]
        assert row["bytes_read"] == sum(
            (voc_root / f"JPEGImages/{i}.jpg").stat().st_size for i in ids
        )
    else:
        assert row["bytes_read"] == sum(p.stat().st_size for p in shard_files)
    assert row["read_mbps"] == pytest.approx(row["bytes_read"] / row["read_s"] / 1e6, rel=1e-3)
    assert row["au"] == pytest.approx(row["compute_s"] / row["wall_s"], rel=1e-3)
    assert 0 < row["au"] <= 1
    assert row["data_wait_s"] + row["compute_s"] <= row["wall_s"] * 1.001
    assert 0 <= row["map_50"] <= 1 and 0 <= row["map"] <= row["map_50"]
    steps = read_rows(out / "steps.csv")
    assert sum(int(s["bytes_read"]) for s in steps) == row["bytes_read"]
    assert json.loads((out / "index_to_name.json").read_text()) == {
        "0": "__background__",  # --data: the classes are read from the data, sorted
        "1": "Platelets",
        "2": "RBC",
        "3": "WBC",
    }
    info = json.loads((out / "model.json").read_text())
    model = build_detector(info["arch"], info["num_classes"], frozen_bn=info["frozen_bn"])
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))  # state_dict only
    assert "summary: detection" in (out / "benchmark.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == row["requests"] and summary["bytes_read"] == row["bytes_read"]
    assert summary["last_epoch"]["epoch"] == 1
    assert summary["pretrained"] is False and info["pretrained"] is False
    assert "trained from scratch (model.pretrained false)" in (out / "benchmark.log").read_text()


def test_resume_continues_from_the_checkpoint(voc_root, tmp_path):
    out = tmp_path / "out"
    assert train(voc_root, out, "--access", "random") == 0
    assert train(voc_root, out, "--access", "random", "--epochs", "2", "--resume") == 0
    assert [r["epoch"] for r in read_rows(out / "metrics.csv")] == ["1", "2"]
    assert "resuming from" in (out / "benchmark.log").read_text()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)  # tensors and plain values only
    assert ckpt["epoch"] == 2 and ckpt["pretrained"] is False


def test_user_errors_print_one_line_and_exit_2(voc_root, tmp_path, capsys):
    assert train(voc_root, tmp_path / "o", "--access", "diagonal") == 2
    assert capsys.readouterr().err.strip() == (
        "error: access.pattern must be one of random, shards, objects; got 'diagonal'"
    )
    assert train(tmp_path / "nowhere", tmp_path / "o") == 2
    assert "nowhere: it is missing or empty; check DATA=" in capsys.readouterr().err
    assert train(voc_root, tmp_path / "fresh", "--resume") == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_an_image_missing_during_the_epoch_is_named_without_a_traceback(voc_root, tmp_path, capsys):
    ids = (voc_root / "ImageSets/Main/train.txt").read_text().split()
    (voc_root / "JPEGImages" / f"{ids[1]}.jpg").unlink()  # annotation kept, image gone
    assert train(voc_root, tmp_path / "o", "--access", "random", "--workers", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err == f"error: cannot open {voc_root}/JPEGImages/{ids[1]}.jpg: No such file or directory"
    )


def corrupt_second_image(voc_root):
    ids = (voc_root / "ImageSets/Main/train.txt").read_text().split()
    image = voc_root / "JPEGImages" / f"{ids[1]}.jpg"
    image.write_bytes(image.read_bytes()[:300])  # a truncated JPEG
    return image


@pytest.mark.parametrize("access", ["random", "shards"])
def test_corrupt_jpeg_is_skipped_and_counted(voc_root, tmp_path, access):
    corrupt_second_image(voc_root)
    out = tmp_path / "out"
    assert train(voc_root, out, "--access", access) == 0
    (row,) = read_rows(out / "metrics.csv")
    assert (row["samples"], row["skipped"]) == ("3", "1")
    assert "skipped corrupt image" in (out / "benchmark.log").read_text()


def test_corrupt_jpeg_stops_the_run_when_asked(voc_root, tmp_path, capsys):
    image = corrupt_second_image(voc_root)
    code = train(voc_root, tmp_path / "o", "--access", "random", "--set", "access.on_corrupt=stop")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: corrupt image JPEGImages/") and image.name in err
    assert err.endswith("fix or remove it, or set access.on_corrupt=skip")
