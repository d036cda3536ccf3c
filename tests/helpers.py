"""What several test modules share: paths, data builders, a storage that counts its reads,
the handlers' stand-in context, running a command with a time limit."""

from __future__ import annotations

import ctypes
import io
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from datagen.crops import write_crops
from models.classifier import build_classifier
from pipelines.formats.coco import ANNOTATIONS
from pipelines.formats.voc import load_voc_split
from pipelines.storage.filesystem import FileSystemStorage


class CountingStorage:
    """A storage that counts the reads it passes on to the one it wraps (``reads``: calls of
    ``read``, ``fetch``, ``read_range``, ``fetch_range`` and ``open``); everything else is the
    wrapped storage's. For tests that check how many objects a step reads (a manifest, no
    image), now that storages keep no shared counter."""

    def __init__(self, storage):
        self.storage = storage
        self.reads = 0

    def _counted(self, name: str):
        method = getattr(self.storage, name)

        def call(*args, **kwargs):
            self.reads += 1
            return method(*args, **kwargs)

        return call

    def __getattr__(self, name: str):
        if name in ("read", "fetch", "read_range", "fetch_range", "open"):
            return self._counted(name)
        return getattr(self.storage, name)


REPO = Path(__file__).resolve().parents[1]


BCCD = REPO / "data" / "bccd"
#: The photo the handler tests send.
JPEG = BCCD / "JPEGImages" / "BloodImage_00007.jpg"
#: index_to_name.json of the classifier written by :func:`write_classifier_output`.
CLASSIFIER_LABELS = {"0": "Platelets", "1": "RBC", "2": "WBC"}


def make_voc_subset(dest: Path, splits: dict[str, int]) -> Path:
    """Copy the first ``n`` ids of each BCCD split (images, annotations, split file) to ``dest``."""
    (dest / "ImageSets" / "Main").mkdir(parents=True)
    (dest / "Annotations").mkdir()
    (dest / "JPEGImages").mkdir()
    for split, n in splits.items():
        ids = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
        (dest / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for image_id in ids:
            shutil.copy(BCCD / "Annotations" / f"{image_id}.xml", dest / "Annotations")
            shutil.copy(BCCD / "JPEGImages" / f"{image_id}.jpg", dest / "JPEGImages")
    return dest


def resident_fraction(path: Path) -> float:
    """The share of the file's pages in the page cache, from Linux ``mincore(2)``."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        del address  # release the buffer export before the mmap closes
    return sum(v & 1 for v in vector) / pages


def write_classifier_output(
    out: Path,
    *,
    arch: str = "convnet",
    image_size: int = 32,
    labels: dict[str, str] = CLASSIFIER_LABELS,
    logits: list[float] | None = None,
    model_file: bool = False,
) -> Path:
    """Write what a classification training run leaves in OUT, from an untrained model.

    Args:
        logits: rig the last layer so that every image gets these logits; None keeps the
            (seeded) random weights.
        model_file: also copy ``models/classifier.py`` as ``classifier.py``, as in an
            extracted archive.
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_classifier(arch, len(labels), image_size=image_size)
    if logits is not None:
        last = model.network.fc if arch == "resnet18" else model.network.classifier[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor(logits))
    torch.save(model.state_dict(), out / "model.pt")
    (out / "index_to_name.json").write_text(json.dumps(labels))
    spec = {
        "task": "classification",
        "arch": arch,
        "num_classes": len(labels),
        "image_size": image_size,
        "grayscale": False,
    }
    (out / "model.json").write_text(json.dumps(spec))
    if model_file:
        shutil.copy(REPO / "models" / "classifier.py", out / "classifier.py")
    return out


def cell_crop(image_id: str = "BloodImage_00007", label: str = "WBC") -> bytes:
    """JPEG bytes of the first ``label`` cell of a real BCCD photo, cut at its annotated box."""
    root = ET.parse(BCCD / "Annotations" / f"{image_id}.xml").getroot()
    for obj in root.iter("object"):
        if obj.findtext("name") == label:
            box = obj.find("bndbox")
            xyxy = [int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")]
            break
    else:
        raise AssertionError(f"no {label} in {image_id}")
    buffer = io.BytesIO()
    with Image.open(BCCD / "JPEGImages" / f"{image_id}.jpg") as photo:
        photo.convert("RGB").crop(xyxy).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class FakeContext:
    """Stand-in for ``ts.context.Context`` with what the project's handlers use.

    It carries the model dir, manifest and model-config YAML the way TorchServe's worker fills
    them, and records the per-request HTTP statuses and content types the handler sets.
    ``name`` is the archive's model name: ``detector`` (model file ``detector.py``, handler
    ``detector_handler.py``) or ``classifier``.
    """

    def __init__(
        self, model_dir: Path, handler_config: dict | None = None, name: str = "detector"
    ) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 4}
        self.manifest = {
            "model": {
                "modelName": name,
                "modelFile": f"{name}.py",
                "serializedFile": "model.pt",
                "handler": f"{name}_handler.py",
            }
        }
        self.model_yaml_config = {"handler": handler_config} if handler_config else {}
        self.timings: list[tuple] = []
        self.metrics = SimpleNamespace(add_time=lambda *args: self.timings.append(args))
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Record the status of request ``idx``."""
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Record the content type of request ``idx``."""
        self.content_types[idx] = value


def jpeg_bytes() -> bytes:
    """The real 640x480 BCCD photo."""
    return JPEG.read_bytes()


def png_bytes(size: tuple[int, int] | None = None) -> bytes:
    """The same photo as PNG (pixels as torchvision decodes the JPEG), optionally resized."""
    pixels = decode_jpeg(torch.frombuffer(bytearray(jpeg_bytes()), dtype=torch.uint8))
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    if size is not None:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_coco(dest: Path, splits: dict[str, int]) -> dict[str, list]:
    """A Roboflow-style export of the first ``n`` BCCD images of each split; the VOC records."""
    sources = {}
    for split, n in splits.items():
        records = voc_records(split, n)
        (dest / split).mkdir(parents=True)
        for r in records:
            shutil.copy(BCCD / r.image_key, dest / split)
        (dest / split / ANNOTATIONS).write_text(json.dumps(coco_doc(records), indent=1))
        sources[split] = records
    return sources


def make_cells(dest: Path, voc: Path, splits: dict[str, int]) -> Path:
    """Crop the cells of the first ``n`` images of each VOC split into ``dest/<split>/<Class>``."""
    source = FileSystemStorage(voc)
    for split, n in splits.items():
        records, _ = load_voc_split(source, split, limit=n)
        write_crops(source, records, FileSystemStorage(dest), split)
    return dest


#: Seconds a test run may take before it counts as a hang.
RUN_LIMIT_S = 240


def run_command(module: str, *args: str) -> tuple[int, str]:
    """Run ``python -m module args`` in the repository (a command that starts its own ranks),
    without S3 settings from this environment (it starts its own local server); its exit status
    and output (see :func:`finish`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    return finish(proc)


def finish(proc: subprocess.Popen, limit_s: float = RUN_LIMIT_S) -> tuple[int, str]:
    """Wait for the run; kill its whole process group if it runs past ``limit_s``."""
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun ran past {limit_s} s:\n{out[-3000:]}")
    return proc.returncode, out


#: Roboflow-style categories: a supercategory-only category 0 that no box uses.
CATEGORIES = [
    {"id": 0, "name": "cells", "supercategory": "none"},
    {"id": 1, "name": "Platelets", "supercategory": "cells"},
    {"id": 2, "name": "RBC", "supercategory": "cells"},
    {"id": 3, "name": "WBC", "supercategory": "cells"},
]


CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


def voc_records(split: str, n: int):
    records, _ = load_voc_split(FileSystemStorage(BCCD), split, limit=n)
    return records


def coco_doc(records) -> dict:
    """A COCO detection document for VOC records (bbox = [x, y, width, height] in pixels)."""
    images, annotations = [], []
    for image_id, r in enumerate(records, 1):
        images.append(
            {"id": image_id, "file_name": f"{r.id}.jpg", "width": r.width, "height": r.height}
        )
        for (x1, y1, x2, y2), name in zip(r.boxes, r.labels, strict=True):
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": CATEGORY_ID[name],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


#: The objects of :func:`small_bucket`, by key.
SMALL_BUCKET = {"d/a.jpg": b"first object", "d/b.jpg": b"second", "e/c": b"x"}


def small_bucket(endpoint: str, name: str):
    """A new bucket ``name`` on ``endpoint`` holding :data:`SMALL_BUCKET`; its boto3 storage."""
    from pipelines.storage.s3 import S3Storage

    boto = S3Storage(name, endpoint_url=endpoint)
    boto.client().create_bucket(Bucket=name)
    for key, data in SMALL_BUCKET.items():
        boto.write(key, data)
    return boto


def stop_at_first_checkpoint(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    """Read the run's output until rank 0 logs its first step checkpoint, then send ``signum``
    to the run's first process (SIGTERM to torchrun: a scheduler's preemption, which torchrun
    passes on to the ranks); return its exit status and output."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "step checkpoint" in line:
            break
    else:
        pytest.fail("the run ended without a step checkpoint:\n" + "".join(seen)[-3000:])
    proc.send_signal(signum)
    code, rest = finish(proc)
    return code, "".join(seen) + rest
