"""DIOR / DIOR-R layout reader (rsfm.data.detection.dior) on a copy of the real DIOR-R sample, in DIOR's layout."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from rsfm.data.detection import DetectionRecord
from rsfm.data.detection.dior import DIOR_CLASSES, dior_records, parse_dior_obb_xml

HBB = Path("Annotations") / "Horizontal Bounding Boxes"
OBB = Path("Annotations") / "Oriented Bounding Boxes"
CORNER_KEYS = (
    "x_left_top",
    "y_left_top",
    "x_right_top",
    "y_right_top",
    "x_right_bottom",
    "y_right_bottom",
    "x_left_bottom",
    "y_left_bottom",
)


def _corners(xml: Path) -> list[tuple[str, list[float]]]:
    """(name, 8 corner values) of each object of a DIOR-R file, read directly with ElementTree."""
    root = ET.parse(xml).getroot()
    return [
        (o.findtext("name"), [float(o.find("robndbox").findtext(k)) for k in CORNER_KEYS]) for o in root.iter("object")
    ]


def write_hbb_from_obb(obb_xml: Path, hbb_xml: Path) -> None:
    """Write the VOC-style horizontal file of a DIOR-R file: each object's box = min/max of its corners."""
    src = ET.parse(obb_xml).getroot()
    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = src.findtext("filename")
    size = ET.SubElement(ann, "size")
    for k in ("width", "height", "depth"):
        ET.SubElement(size, k).text = src.find("size").findtext(k)
    for src_obj, (name, c) in zip(src.iter("object"), _corners(obb_xml), strict=True):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = src_obj.findtext("difficult") or "0"
        bb = ET.SubElement(obj, "bndbox")
        xs, ys = c[0::2], c[1::2]
        for k, v in (("xmin", min(xs)), ("ymin", min(ys)), ("xmax", max(xs)), ("ymax", max(ys))):
            ET.SubElement(bb, k).text = str(int(v)) if v == int(v) else str(v)
    hbb_xml.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(hbb_xml, encoding="utf-8", xml_declaration=True)


@pytest.fixture
def dior_root(datasets: Path, tmp_path: Path) -> Path:
    """A DIOR-shaped folder around the real DIOR-R sample 00001 (800 × 800, one golffield).

    ``trainval`` (CRLF): 00001 in JPEGImages-trainval, its real OBB file and the HBB file derived
    from it. ``test``: 00002, the same JPEG in JPEGImages-test, with an OBB file edited from the
    real one (a rotated Expressway-Service-area spelled in lower case, a difficult windmill) and
    its derived HBB file.
    """
    src = datasets / "dior_r"
    root = tmp_path / "DIOR"
    for d in ("JPEGImages-trainval", "JPEGImages-test", OBB, Path("ImageSets") / "Main"):
        (root / d).mkdir(parents=True)
    (root / "JPEGImages-trainval" / "00001.jpg").symlink_to(src / "JPEGImages" / "00001.jpg")
    shutil.copy(src / OBB / "00001.xml", root / OBB / "00001.xml")
    write_hbb_from_obb(root / OBB / "00001.xml", root / HBB / "00001.xml")
    (root / "ImageSets" / "Main" / "trainval.txt").write_bytes(b"00001\r\n")

    (root / "JPEGImages-test" / "00002.jpg").symlink_to(src / "JPEGImages" / "00001.jpg")
    tree = ET.parse(src / OBB / "00001.xml")
    ann = tree.getroot()
    ann.find("filename").text = "00002.jpg"
    first = ann.find("object")
    rotated = ET.fromstring(ET.tostring(first))
    rotated.find("name").text = "expressway-service-area"
    for k, v in zip(CORNER_KEYS, (100, 50, 150, 100, 100, 150, 50, 100), strict=True):
        rotated.find("robndbox").find(k).text = str(v)
    windmill = ET.fromstring(ET.tostring(first))
    windmill.find("name").text = "windmill"
    windmill.find("difficult").text = "1"
    ann.append(rotated)
    ann.append(windmill)
    tree.write(root / OBB / "00002.xml", encoding="utf-8", xml_declaration=True)
    write_hbb_from_obb(root / OBB / "00002.xml", root / HBB / "00002.xml")
    (root / "ImageSets" / "Main" / "test.txt").write_text("00002\n")
    return root


def test_dior_classes():
    assert len(DIOR_CLASSES) == 20 and len(set(DIOR_CLASSES)) == 20
    assert "Expressway-Service-area" in DIOR_CLASSES and "Expressway-toll-station" in DIOR_CLASSES
    assert DIOR_CLASSES.index("golffield") == 9


def test_horizontal_records_match_the_xml(dior_root: Path):
    records = dior_records(dior_root, "trainval")
    assert len(records) == 1
    r = records[0]
    assert isinstance(r, DetectionRecord)
    assert r.id == "00001"  # no CR left from the CRLF list
    assert r.image == dior_root / "JPEGImages-trainval" / "00001.jpg" and r.image.is_file()
    # the real file's corners: x 133..684, y 237..672
    assert r.boxes.dtype == np.float32 and r.boxes.tolist() == [[133.0, 237.0, 684.0, 672.0]]
    assert r.labels.dtype == np.int64 and r.labels.tolist() == [DIOR_CLASSES.index("golffield")]
    assert r.difficult.dtype == bool and r.difficult.tolist() == [False]
    assert r.meta["size"] == (800, 800) and r.meta["num_degenerate"] == 0
    assert "polygons" not in r.meta


def test_oriented_records_match_the_xml(dior_root: Path):
    (r,) = dior_records(dior_root, "trainval", oriented=True)
    ((name, c),) = _corners(dior_root / OBB / "00001.xml")
    assert name == "golffield"
    assert r.meta["polygons"].dtype == np.float32 and r.meta["polygons"].shape == (1, 4, 2)
    assert r.meta["polygons"].reshape(-1).tolist() == c
    assert r.meta["polygons"][0].tolist() == [[133, 237], [684, 237], [684, 672], [133, 672]]
    assert r.boxes.tolist() == [[133.0, 237.0, 684.0, 672.0]]
    assert r.labels.tolist() == [9]


def test_test_split_rotated_box_case_and_difficult(dior_root: Path):
    (h,) = dior_records(dior_root, "test")
    (o,) = dior_records(dior_root, "test", oriented=True)
    for r in (h, o):
        assert r.id == "00002" and r.image == dior_root / "JPEGImages-test" / "00002.jpg"
        # 'expressway-service-area' is matched to DIOR's 'Expressway-Service-area'
        assert r.labels.tolist() == [9, DIOR_CLASSES.index("Expressway-Service-area"), DIOR_CLASSES.index("windmill")]
        assert r.boxes.tolist() == [[133, 237, 684, 672], [50, 50, 150, 150], [133, 237, 684, 672]]
        assert r.difficult.tolist() == [False, False, True]
    assert o.meta["polygons"][1].tolist() == [[100, 50], [150, 100], [100, 150], [50, 100]]
    # a class list in another order gives other indices
    (r,) = dior_records(dior_root, "trainval", classes=["windmill", "golffield"])
    assert r.labels.tolist() == [1]


def test_missing_image_names_both_folders(dior_root: Path):
    (dior_root / "JPEGImages-trainval" / "00001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="00001.jpg") as err:
        dior_records(dior_root, "trainval")
    assert "JPEGImages-trainval" in str(err.value) and "JPEGImages-test" in str(err.value)


def test_unknown_class_names_the_file(dior_root: Path):
    with pytest.raises(ValueError, match="'golffield' is not in the class list") as err:
        dior_records(dior_root, "trainval", classes=("airplane", "ship"), oriented=True)
    assert str(dior_root / OBB / "00001.xml") in str(err.value)
    with pytest.raises(ValueError, match="Horizontal Bounding Boxes"):
        dior_records(dior_root, "trainval", classes=("airplane",))


def test_missing_files_and_malformed_xml(dior_root: Path):
    with pytest.raises(FileNotFoundError, match="val.txt"):
        dior_records(dior_root, "val")
    (dior_root / HBB / "00001.xml").unlink()
    with pytest.raises(FileNotFoundError, match="Horizontal Bounding Boxes/00001.xml"):
        dior_records(dior_root, "trainval")
    (dior_root / OBB / "00001.xml").write_text("<annotation><object><name>golffield</name>")
    with pytest.raises(ValueError, match="00001.xml: not a valid XML"):
        dior_records(dior_root, "trainval", oriented=True)
    (dior_root / OBB / "00001.xml").write_text(
        "<annotation><object><name>golffield</name><robndbox><x_left_top>1</x_left_top></robndbox></object></annotation>"
    )
    with pytest.raises(ValueError, match="no complete <robndbox>"):
        dior_records(dior_root, "trainval", oriented=True)


def test_degenerate_polygon_is_dropped(dior_root: Path):
    xml = dior_root / OBB / "00001.xml"
    tree = ET.parse(xml)
    obj = ET.fromstring(ET.tostring(tree.getroot().find("object")))
    for k, v in zip(CORNER_KEYS, (10, 10, 20, 20, 30, 30, 40, 40), strict=True):  # all on one line
        obj.find("robndbox").find(k).text = str(v)
    tree.getroot().append(obj)
    tree.write(xml)
    (r,) = dior_records(dior_root, "trainval", oriented=True)
    assert r.meta["num_degenerate"] == 1 and len(r.boxes) == len(r.labels) == len(r.meta["polygons"]) == 1
    assert len(parse_dior_obb_xml(xml)["names"]) == 2


def test_records_feed_the_detection_dataset(dior_root: Path):
    from rsfm.data.detection import DetectionDataset

    ds = DetectionDataset(dior_records(dior_root, "trainval"), DIOR_CLASSES)
    s = ds[0]
    assert tuple(s["image"].shape) == (3, 800, 800)
    assert s["boxes"].tolist() == [[133.0, 237.0, 684.0, 672.0]] and s["labels"].tolist() == [9]
