"""Cell crops from BCCD (the classification dataset) and the folder-per-class reader."""

from __future__ import annotations

from collections import Counter

from datagen.crops import write_crops
from pipelines.formats.folders import load_folder_split
from pipelines.formats.voc import load_voc_split
from pipelines.samples import decode
from pipelines.storage.filesystem import FileSystemStorage
from scripts import make_crops


def test_one_crop_per_box_with_the_box_size_and_split_carried_over(voc_root, tmp_path):
    source = FileSystemStorage(voc_root)
    records, _ = load_voc_split(source, "train", limit=3)
    target = FileSystemStorage(tmp_path / "cells")
    counts = write_crops(source, records, target, "train")
    assert +counts == Counter(label for r in records for label in r.labels)
    crops, _ = load_folder_split(target, "train")
    assert Counter(c.label for c in crops) == +counts
    first = records[0]
    x1, y1, x2, y2 = first.boxes[0]
    crop = decode(target.read(f"train/{first.labels[0]}/{first.id}_00.jpg"))
    assert crop.shape[-2:] == (round(y2) - int(y1), round(x2) - int(x1))


def test_crops_are_deterministic(voc_root, tmp_path):
    source = FileSystemStorage(voc_root)
    records, _ = load_voc_split(source, "test", limit=2)
    a, b = FileSystemStorage(tmp_path / "a"), FileSystemStorage(tmp_path / "b")
    write_crops(source, records, a, "test")
    write_crops(source, records, b, "test")
    keys = list(a.list("test"))
    assert keys == list(b.list("test")) and all(a.read(k) == b.read(k) for k in keys)


def test_make_crops_cli_keeps_an_existing_split(voc_root, tmp_path, capsys):
    out = tmp_path / "cells"
    assert make_crops.main(["--src", str(voc_root), "--out", str(out), "--splits", "test"]) == 0
    assert "test: " in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert make_crops.main(["--src", str(voc_root), "--out", str(out), "--splits", "test"]) == 0
    assert "exists: kept" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == before


def test_make_crops_cli_names_a_missing_source(tmp_path, capsys):
    assert make_crops.main(["--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "c" / "train").exists()
