"""The synthetic dataset generator (datagen/synthetic.py, scripts/synth.py) and a smoke run of
the memory benchmark (scripts/bench_memory.py)."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from datagen.images import (
    KB,
    LARGEST_JPEG_BYTES,
    PADDED_JPEG_BYTES,
    PRESETS,
    SynthError,
    SynthSpec,
    generate_sample,
    image_id,
    spec_from_preset,
    target_size,
)
from datagen.synthetic import generate_dataset, split_mask
from pipelines.formats.voc import load_voc_split
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage
from scripts import synth as cli

REPO = Path(__file__).resolve().parents[1]
_buckets = itertools.count()


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_dataset_reads_back_with_the_target_mean_size(tmp_path: Path):
    spec = spec_from_preset(mean_kb=30, seed=3)
    storage = FileSystemStorage(tmp_path / "ds")
    report = generate_dataset(storage, spec, 50, test_fraction=0.2, progress=False)

    mask = split_mask(50, 0.2, 3)
    expected_test = [image_id(i, 50) for i in range(50) if mask[i]]
    expected_train = [image_id(i, 50) for i in range(50) if not mask[i]]
    assert (report.images, report.train, report.test) == (50, 40, 10)
    assert report.objects == 2 * 50 + 2

    records = {}
    for split, expected in (("train", expected_train), ("test", expected_test)):
        recs, counts = load_voc_split(storage, split)
        assert [r.id for r in recs] == expected
        assert counts.dropped == 0 and counts.clipped == 0
        records.update({r.id: r for r in recs})
    assert sum(len(r.boxes) for r in records.values()) == report.boxes

    sizes = []
    for record in records.values():
        data = storage.read(record.image_key)
        sizes.append(len(data))
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.size == (record.width, record.height)
        assert 1 <= len(record.boxes) <= spec.max_boxes
        assert set(record.labels) <= set(spec.classes)
        for x1, y1, x2, y2 in record.boxes:
            assert 0 <= x1 < x2 <= record.width and 0 <= y1 < y2 <= record.height
    mean = sum(sizes) / len(sizes)
    assert sum(sizes) == report.image_bytes
    assert abs(mean / 30_000 - 1) <= 0.15, f"mean {mean:.0f} bytes, target 30000"
    assert max(sizes) > 1.5 * min(sizes), "sizes spread (lognormal, std = mean / 2)"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_target_sizes_have_the_preset_mean(preset: str):
    spec = spec_from_preset(preset, seed=11)
    targets = [target_size(spec, i) for i in range(50)]
    assert abs(sum(targets) / 50 / PRESETS[preset].mean_bytes - 1) <= 0.05
    assert min(targets) > 0


def test_generated_sizes_follow_their_targets():
    spec = spec_from_preset("flowers", seed=5)
    samples = [generate_sample(spec, i, 50) for i in range(0, 50, 5)]
    for s in samples:
        assert abs(len(s.jpeg) / s.target_bytes - 1) <= 0.15, (s.target_bytes, len(s.jpeg))
    normal = SynthSpec(mean_bytes=20 * KB, std_bytes=40 * KB, distribution="normal")
    assert min(target_size(normal, i) for i in range(200)) >= 2 * KB  # clipped


def test_a_sample_larger_than_a_drawn_jpeg_is_a_jpeg_padded_to_its_size():
    spec = SynthSpec(mean_bytes=LARGEST_JPEG_BYTES + 1_000_000, std_bytes=0)
    sample = generate_sample(spec, 0, 1)
    assert len(sample.jpeg) == sample.target_bytes == spec.mean_bytes  # exactly the profile's
    assert sample.padding > 0 and len(sample.jpeg) - sample.padding < 2 * PADDED_JPEG_BYTES
    with Image.open(io.BytesIO(sample.jpeg)) as image:  # decoders stop at the end marker
        assert image.convert("RGB").size == (sample.width, sample.height)
    assert generate_sample(spec, 0, 1).jpeg == sample.jpeg  # the padding is seeded too
    assert generate_sample(spec_from_preset("mlperf"), 0, 1).padding == 0


def test_same_arguments_same_bytes(tmp_path: Path):
    spec = spec_from_preset(mean_kb=10, seed=1, max_boxes=3)
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        generate_dataset(
            FileSystemStorage(tmp_path / name), spec, 6, workers=workers, progress=False
        )
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert len(a) == 2 * 6 + 2 and a == b == c
    generate_dataset(
        FileSystemStorage(tmp_path / "d"),
        spec_from_preset(mean_kb=10, seed=2, max_boxes=3),
        6,
        progress=False,
    )
    assert _files(tmp_path / "d")["JPEGImages/synth_000000.jpg"] != a["JPEGImages/synth_000000.jpg"]


def test_refuses_an_existing_dataset(tmp_path: Path, capsys):
    root = tmp_path / "ds"
    spec = spec_from_preset(mean_kb=5, seed=0)
    generate_dataset(FileSystemStorage(root), spec, 3, progress=False)
    before = _files(root)
    with pytest.raises(SynthError, match="already holds a dataset.*--overwrite"):
        generate_dataset(FileSystemStorage(root), spec, 3, progress=False)
    assert _files(root) == before

    assert cli.main(["--out", str(root), "--count", "3", "--mean-kb", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synth: error:") and "--overwrite" in err and "\n" not in err
    assert _files(root) == before

    assert cli.main(["--out", str(root), "--count", "3", "--overwrite", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 images" in out and "objects/s" in out
    assert _files(root) != before


def test_cli_user_errors_are_one_line(tmp_path: Path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        ["--out", str(afile), "--count", "3"],
        ["--out", str(tmp_path / "x"), "--count", "3", "--test-fraction", "1.5"],
        ["--out", str(tmp_path / "x"), "--count", "1"],
        ["--out", str(tmp_path / "x"), "--count", "3", "--classes", "a,,b"],
        ["--out", "s3:///prefix", "--count", "3"],
    ]
    for argv in cases:
        assert cli.main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("synth: error:") and "\n" not in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_s3_dataset_reads_back(s3_server, capsys):
    bucket = f"synth-{os.getpid()}-{next(_buckets)}"
    S3Storage(bucket, endpoint_url=s3_server.endpoint).client().create_bucket(Bucket=bucket)
    storage = S3Storage(bucket, "synth", endpoint_url=s3_server.endpoint)
    spec = spec_from_preset(mean_kb=20, seed=4)
    report = generate_dataset(storage, spec, 10, test_fraction=0.3, progress=False)
    assert (report.train, report.test) == (7, 3)

    records, counts = load_voc_split(storage, "train")
    records += load_voc_split(storage, "test")[0]
    assert sorted(r.id for r in records) == [image_id(i, 10) for i in range(10)]
    assert counts.dropped == 0
    local = generate_sample(spec, 0, 10)
    assert storage.read("JPEGImages/synth_000000.jpg") == local.jpeg
    for record in records:
        assert Image.open(io.BytesIO(storage.read(record.image_key))).size == (
            record.width,
            record.height,
        )
    with pytest.raises(SynthError, match="already holds a dataset"):
        generate_dataset(storage, spec, 10, progress=False)

    argv = ["--out", f"s3://{bucket}/cli", "--count", "4", "--mean-kb", "8"]
    assert cli.main([*argv, "--endpoint", s3_server.endpoint, "--no-progress"]) == 0
    assert f"s3://{bucket}/cli" in capsys.readouterr().out
    assert len(
        load_voc_split(S3Storage(bucket, "cli", endpoint_url=s3_server.endpoint), "train")[0]
    )


@pytest.mark.integration
def test_bench_memory_smoke(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench_memory",
            "--shard-gb",
            "0.01",
            "--listing-keys",
            "500",
            "--tmp-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("(a) shard over") for line in lines) == 4  # fs, boto3, CRT, s3dlio
    assert any("over s3 s3torchconnector" in line for line in lines)
    assert any("over s3 s3dlio" in line for line in lines)
    assert sum(line.startswith("(b) list workers=") for line in lines) == 4
    assert sum(line.startswith("(b) list s3dlio keep keys  500 keys") for line in lines) == 1
    assert "verdict (a) streaming a shard: PASS" in lines
    assert "verdict (b) listing keys: PASS" in lines
    assert "verdict overall: PASS" in lines
    assert list(tmp_path.iterdir()) == [], "temporary data removed"
