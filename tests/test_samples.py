"""Decoding and transforms: boxes follow the image through resize and flip; bad images count."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from pipelines.access.map_style import MapStyleDataset
from pipelines.formats.records import DatasetError, DetectionRecord
from pipelines.formats.voc import load_voc_split
from pipelines.samples import collate, decode, detection_transform, make_sample
from pipelines.storage.base import CallStats
from pipelines.storage.filesystem import FileSystemStorage


def white_box_jpeg(width=200, height=100, box=(20, 30, 60, 90)) -> bytes:
    image = Image.new("RGB", (width, height), "black")
    image.paste((255, 255, 255), box)
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless so that pixel checks are exact
    return buf.getvalue()


RECORD = DetectionRecord("x", "x.png", ((20.0, 30.0, 60.0, 90.0),), ("cell",), 200, 100)


@pytest.mark.parametrize("seed", range(6))  # p=0.5 flip: both branches are taken
def test_box_covers_the_same_pixels_after_resize_and_flip(seed):
    torch.manual_seed(seed)
    sample = make_sample(
        RECORD,
        white_box_jpeg(),
        read=CallStats(nbytes=1),
        transform=detection_transform(True, 50),
        class_to_index={"cell": 1},
    )
    image, boxes = sample.image, sample.target["boxes"]
    assert image.shape == (3, 50, 100) and image.dtype == torch.float32
    x1, y1, x2, y2 = boxes[0].round().int().tolist()
    assert (x2 - x1, y2 - y1) == (20, 30)  # scaled by 0.5
    inside = image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
    assert inside.min() > 0.9  # the box still frames the white rectangle
    outside = image.clone()
    outside[:, y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = 0
    assert outside.max() < 0.1  # and nothing white lies outside it


def test_flip_is_applied_to_image_and_box_together():
    flips = set()
    for seed in range(10):
        torch.manual_seed(seed)
        sample = make_sample(
            RECORD,
            white_box_jpeg(),
            read=CallStats(nbytes=1),
            transform=detection_transform(True, 100),
            class_to_index={"cell": 1},
        )
        x1 = int(sample.target["boxes"][0, 0].round())
        assert x1 in (20, 140)  # original, or mirrored: 200 - 60
        assert sample.image[:, 50, x1 + 2].min() > 0.9
        flips.add(x1)
    assert flips == {20, 140}


def test_decode_accepts_jpeg_and_png_and_refuses_other_bytes():
    jpeg = open("data/bccd/JPEGImages/BloodImage_00007.jpg", "rb").read()
    assert decode(jpeg).shape == (3, 480, 640)
    assert decode(white_box_jpeg()).shape == (3, 100, 200)
    with pytest.raises(ValueError, match="not a decodable JPEG/PNG image"):
        decode(b"GIF89a not really")
    with pytest.raises(ValueError, match="empty file"):
        decode(b"")


def test_unknown_class_is_refused_with_the_image_named():
    with pytest.raises(
        DatasetError, match=r"image x: class 'cell' is not one of the configured classes"
    ):
        make_sample(
            RECORD,
            white_box_jpeg(),
            read=CallStats(nbytes=1),
            transform=detection_transform(False, 50),
            class_to_index={"RBC": 1},
        )


def test_corrupt_jpeg_is_skipped_and_counted_not_fatal(voc_root):
    storage = FileSystemStorage(voc_root)
    records, _ = load_voc_split(storage, "train", limit=3)
    victim = voc_root / records[1].image_key
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    dataset = MapStyleDataset(
        storage, records, detection_transform(False, 64), {"RBC": 1, "WBC": 2, "Platelets": 3}
    )
    batch = collate([dataset[i] for i in range(3)])
    assert batch.ids == [records[0].id, records[2].id]
    assert [i for i, _ in batch.errors] == [records[1].id]
    assert records[1].image_key in batch.errors[0][1]
    assert batch.nbytes == sum(
        storage.size(r.image_key) for r in records
    )  # the bad read counts too


def test_the_dataloader_pins_a_batch_through_its_pin_memory(monkeypatch):
    """``loader.pin_memory: true`` reaches the tensors of our Batch. Pinning needs an
    accelerator, so ``Tensor.pin_memory`` is replaced by a stand-in that marks what it saw."""
    import torch
    from torch.utils.data._utils.pin_memory import pin_memory

    from pipelines.samples import Batch

    seen = []

    def fake_pin(tensor, device=None):
        seen.append(tensor.shape)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = Batch(
        images=[torch.zeros(3, 4, 5)],
        targets=[{"boxes": torch.zeros(2, 4), "labels": torch.ones(2, dtype=torch.int64)}],
        ids=["a"],
        nbytes=7,
    )
    pinned = pin_memory(batch)
    assert isinstance(pinned, Batch) and pinned.ids == ["a"] and pinned.nbytes == 7
    assert sorted(seen) == sorted([torch.Size([3, 4, 5]), torch.Size([2, 4]), torch.Size([2])])
