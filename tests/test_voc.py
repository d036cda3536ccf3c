"""Pascal VOC reading: real BCCD annotations, degenerate boxes, malformed files."""

from __future__ import annotations

import pytest

from pipelines.formats.records import DatasetError, sanitize_box
from pipelines.formats.voc import load_voc_split, parse_voc_xml, read_split_ids
from pipelines.storage.filesystem import FileSystemStorage
from tests.helpers import BCCD


def test_bccd_splits_have_the_documented_sizes():
    storage = FileSystemStorage(BCCD)
    assert [len(read_split_ids(storage, s)) for s in ("train", "val", "test")] == [205, 87, 72]


def test_real_degenerate_box_is_dropped_and_counted():
    # BloodImage_00343.xml holds a zero-area RBC box (xmin == xmax, ymin == ymax).
    data = (BCCD / "Annotations" / "BloodImage_00343.xml").read_bytes()
    width, height, boxes, names, counts = parse_voc_xml(data, "BloodImage_00343.xml")
    assert (width, height) == (640, 480)
    assert counts.dropped == 1
    assert "(181.0, 329.0, 181.0, 329.0)" in counts.dropped_where[0]
    assert counts.kept == len(boxes) == len(names) == data.count(b"<object>") - 1
    assert all(x2 > x1 and y2 > y1 for x1, y1, x2, y2 in boxes)


def test_whole_dataset_drops_exactly_the_two_known_boxes():
    storage = FileSystemStorage(BCCD)
    dropped = kept = 0
    for split in ("train", "val", "test"):
        _, counts = load_voc_split(storage, split)
        dropped += counts.dropped
        kept += counts.kept
    assert dropped == 2
    assert kept + dropped == 4888


def test_records_use_pixel_xyxy_and_class_names():
    records, _ = load_voc_split(FileSystemStorage(BCCD), "test", limit=3)
    assert [r.id for r in records] == read_split_ids(FileSystemStorage(BCCD), "test")[:3]
    record = records[0]
    assert record.image_key == f"JPEGImages/{record.id}.jpg"
    assert set(record.labels) <= {"RBC", "WBC", "Platelets"}
    assert all(0 <= b[0] < b[2] <= 640 and 0 <= b[1] < b[3] <= 480 for b in record.boxes)


XML = b"""<annotation><size><width>100</width><height>50</height></size>
<object><name>cell</name><bndbox><xmin>-5</xmin><ymin>10</ymin><xmax>20</xmax><ymax>60</ymax></bndbox></object>
<object><name>cell</name><bndbox><xmin>120</xmin><ymin>10</ymin><xmax>130</xmax><ymax>20</ymax></bndbox></object>
<object><name>cell</name><bndbox><xmin>30</xmin><ymin>10</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>
</annotation>"""


def test_boxes_outside_the_image_are_clipped_or_dropped():
    _, _, boxes, names, counts = parse_voc_xml(XML, "x.xml")
    assert boxes == [(0.0, 10.0, 20.0, 50.0)]  # clipped to the 100x50 image
    assert (counts.kept, counts.clipped, counts.dropped) == (1, 1, 2)  # outside + negative width


def test_sanitize_box_keeps_an_inside_box_unchanged():
    assert sanitize_box((1.0, 2.0, 3.0, 4.0), 10, 10) == ((1.0, 2.0, 3.0, 4.0), False)


def test_malformed_xml_names_file_and_line():
    with pytest.raises(DatasetError, match=r"^bad\.xml:2:\d+: not valid XML"):
        parse_voc_xml(b"<annotation>\n<size><width>1</size>", "bad.xml")


def test_non_numeric_coordinate_is_refused():
    bad = XML.replace(b"<xmin>-5</xmin>", b"<xmin>left</xmin>")
    with pytest.raises(
        DatasetError, match=r"x\.xml: <object> #0 \(cell\) has a missing or non-numeric"
    ):
        parse_voc_xml(bad, "x.xml")


def test_missing_split_lists_the_available_ones(voc_root):
    with pytest.raises(
        DatasetError, match=r"split 'val' not found: .* available splits: test, train"
    ):
        read_split_ids(FileSystemStorage(voc_root), "val")


def test_missing_annotation_names_the_file(voc_root):
    victim = read_split_ids(FileSystemStorage(voc_root), "train")[2]
    (voc_root / "Annotations" / f"{victim}.xml").unlink()
    with pytest.raises(
        DatasetError, match=rf"annotation missing for image '{victim}'.*{victim}\.xml"
    ):
        load_voc_split(FileSystemStorage(voc_root), "train")
