"""FAIR1M, HRSC2016 and YOLO-OBB layouts, written from the real DOTA scenes and their real objects.

No copy of these data sets is shared, so each test writes the three real DOTA scenes (P0003,
P0004, P0005) and their real annotations in the format as published, reads them back with
the loader and checks that the same boxes come out.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rotated_helpers import DOTA_SIZES, assert_min_area_rects, corner_distance, dota_objects, link

from rsfm.data.rotated import (
    FAIR1M_CLASSES,
    FAIR1MDataModule,
    HRSC2016DataModule,
    YOLOOBBDataModule,
    fair1m_records,
    hrsc_records,
    parse_fair1m_xml,
    parse_hrsc_xml,
    parse_yolo_obb_txt,
    polygons_to_obbs,
    read_yolo_names,
    yolo_obb_records,
)
from rsfm.ops.obb import poly2obb
from rsfm.utils.errors import DataError

SCENES = ["P0003", "P0004", "P0005"]
#: DOTA classes of these scenes written as FAIR1M classes
AS_FAIR1M = {"small-vehicle": "Small Car", "large-vehicle": "Cargo Truck"}


@pytest.fixture(scope="module")
def dota(datasets: Path) -> Path:
    return datasets / "dota"


# ------------------------------------------------------------------------------ FAIR1M


def _fair1m_xml(rid: str, names: list[str], polygons: np.ndarray, size: tuple[int, int]) -> str:
    objects = []
    for name, poly in zip(names, polygons, strict=True):
        xy = poly.reshape(4, 2)
        points = "".join(f"<point>{x:.6f},{y:.6f}</point>" for x, y in [*xy, xy[0]])  # first point repeated
        objects.append(
            "<object><coordinate>pixel</coordinate><type>rectangle</type><description>None</description>"
            f"<possibleresult><name>{name}</name><probability>1</probability></possibleresult>"
            f"<points>{points}</points></object>"
        )
    return (
        f"<?xml version='1.0' encoding='utf-8'?>\n<annotation><source><filename>{rid}.tif</filename>"
        f"<origin>GF2/GF3</origin></source><research><version>2.0</version></research>"
        f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>"
        f"<objects>{''.join(objects)}</objects></annotation>"
    )


@pytest.fixture(scope="module")
def fair1m(dota: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fair1m") / "train" / "part1"
    (root / "labelXml").mkdir(parents=True)
    for rid in SCENES:
        ann = dota_objects(dota, rid)
        names = [AS_FAIR1M[n] for n in ann["names"]]
        (root / "labelXml" / f"{rid}.xml").write_text(_fair1m_xml(rid, names, ann["polygons"], DOTA_SIZES[rid]))
        link(dota / "images" / f"{rid}.png", root / "images" / f"{rid}.png")
    return root


def test_fair1m_parser_recovers_the_real_polygons(dota: Path, fair1m: Path) -> None:
    ann = parse_fair1m_xml(fair1m / "labelXml/P0003.xml")
    real = dota_objects(dota, "P0003")
    np.testing.assert_array_equal(ann["polygons"], real["polygons"])
    assert ann["names"] == [AS_FAIR1M[n] for n in real["names"]] and ann["size"] == (1147, 1023)
    assert ann["filename"] == "P0003.tif" and ann["difficult"].shape == (55,) and not ann["difficult"].any()
    assert len(FAIR1M_CLASSES) == 37 and len(set(FAIR1M_CLASSES)) == 37


def test_fair1m_records_and_datamodule(dota: Path, fair1m: Path) -> None:
    records, classes = fair1m_records(fair1m)
    assert classes == list(FAIR1M_CLASSES) and [r.id for r in records] == SCENES
    assert [len(r) for r in records] == [55, 107, 130]
    assert {classes[i] for r in records for i in r.labels} == {"Small Car", "Cargo Truck"}
    dm = FAIR1MDataModule(str(fair1m.parent.parent), train_split="train/part1", crop_size=200)
    splits = dm.splits()
    assert sorted(len(v) for v in splits.values()) == [1, 1, 1]
    dm.setup()
    s = dm.datasets["test"][0]
    rec = splits["test"][0]
    assert corner_distance(s["obbs"], polygons_to_obbs(dota_objects(dota, rec.id)["polygons"])) < 1e-4


def test_fair1m_malformed_objects(fair1m: Path, tmp_path: Path) -> None:
    text = (fair1m / "labelXml/P0003.xml").read_text()
    first = text.index("<point>")
    bad = tmp_path / "three.xml"
    bad.write_text(text.replace(text[first : text.index("</point>", first) + len("</point>")], "", 2))
    with pytest.raises(DataError, match=r"three.xml: object 0 \('Small Car'\): expected 4 corners.*got 3"):
        parse_fair1m_xml(bad)
    (tmp_path / "nan.xml").write_text(text.replace("<point>937.000000,913.000000</point>", "<point>937;913</point>", 1))
    with pytest.raises(DataError, match=r"nan.xml: object 0 .*expected a point 'x,y'"):
        parse_fair1m_xml(tmp_path / "nan.xml")
    (tmp_path / "cut.xml").write_text(text[:200])
    with pytest.raises(DataError, match="cut.xml: not a valid XML file"):
        parse_fair1m_xml(tmp_path / "cut.xml")
    with pytest.raises(FileNotFoundError, match="label folder not found"):
        fair1m_records(tmp_path)


# ------------------------------------------------------------------------------ HRSC2016


def _hrsc_xml(rid: str, obbs: torch.Tensor, difficult: np.ndarray, size: tuple[int, int]) -> str:
    objects = []
    for n, (box, diff) in enumerate(zip(obbs.tolist(), difficult.tolist(), strict=True)):
        cx, cy, w, h, a = box
        objects.append(
            f"<HRSC_Object><Object_ID>{n}</Object_ID><Class_ID>100000001</Class_ID><Object_NO>{n}</Object_NO>"
            f"<truncated>0</truncated><difficult>{int(diff)}</difficult>"
            f"<mbox_cx>{cx:.4f}</mbox_cx><mbox_cy>{cy:.4f}</mbox_cy><mbox_w>{w:.4f}</mbox_w>"
            f"<mbox_h>{h:.4f}</mbox_h><mbox_ang>{a:.6f}</mbox_ang></HRSC_Object>"
        )
    return (
        f"<?xml version='1.0' encoding='utf-8'?>\n<HRSC_Image><Img_ID>{rid}</Img_ID>"
        f"<Img_SizeWidth>{size[1]}</Img_SizeWidth><Img_SizeHeight>{size[0]}</Img_SizeHeight>"
        f"<HRSC_Objects>{''.join(objects)}</HRSC_Objects></HRSC_Image>"
    )


@pytest.fixture(scope="module")
def hrsc(dota: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HRSC2016's layout; each scene's objects as HRSC rotated boxes (oc angles, in (0, pi/2])."""
    root = tmp_path_factory.mktemp("hrsc")
    (root / "FullDataSet/Annotations").mkdir(parents=True)
    (root / "FullDataSet/AllImages").mkdir(parents=True)
    for rid in SCENES:
        ann = dota_objects(dota, rid)
        obbs = poly2obb(torch.from_numpy(ann["polygons"]).double(), "oc")
        xml = _hrsc_xml(rid, obbs, ann["difficult"], DOTA_SIZES[rid])
        (root / "FullDataSet/Annotations" / f"{rid}.xml").write_text(xml)
        Image.open(dota / "images" / f"{rid}.png").save(root / "FullDataSet/AllImages" / f"{rid}.bmp")
    (root / "ImageSets").mkdir()
    (root / "ImageSets/trainval.txt").write_text("P0003\nP0004\n")
    (root / "ImageSets/test.txt").write_text("P0005\n")
    return root


def test_hrsc_parser_and_records(dota: Path, hrsc: Path) -> None:
    ann = parse_hrsc_xml(hrsc / "FullDataSet/Annotations/P0003.xml")
    real = dota_objects(dota, "P0003")
    expected = poly2obb(torch.from_numpy(real["polygons"]).double(), "oc")
    assert ann["obbs"].shape == (55, 5) and ann["size"] == (1147, 1023)
    np.testing.assert_allclose(ann["obbs"], expected.numpy(), atol=1e-4)
    assert (ann["difficult"] == real["difficult"]).all() and ann["class_ids"][0] == "100000001"
    (rec,) = hrsc_records(hrsc, "test")
    assert rec.id == "P0005" and rec.image.suffix == ".bmp" and (rec.labels == 0).all()
    # the boxes come back the same rectangles, in any angle convention
    real5 = poly2obb(torch.from_numpy(dota_objects(dota, "P0005")["polygons"]).double(), "le90")
    assert corner_distance(rec.polygons, real5) < 1e-3
    assert corner_distance(polygons_to_obbs(rec.polygons, "le90"), real5) < 1e-3


def test_hrsc_datamodule(hrsc: Path) -> None:
    dm = HRSC2016DataModule(str(hrsc), angle_version="le135", crop_size=256)
    splits = dm.splits()
    assert [r.id for r in splits["test"]] == ["P0005"] and len(splits["train"]) + len(splits["val"]) == 2
    assert dm.class_names == ["ship"]
    dm.setup()
    s = dm.datasets["test"][0]
    assert s["image"].shape == (3, 977, 884) and s["obbs"].shape == (130, 5)
    assert ((s["obbs"][:, 4] >= -math.pi / 4) & (s["obbs"][:, 4] < 3 * math.pi / 4)).all()
    with pytest.raises(DataError, match="HRSC2016 is read as one class"):
        HRSC2016DataModule(str(hrsc), classes=["a", "b"]).splits()
    with pytest.raises(DataError, match=r"data.train_split 'train'.*image set 'train' not found"):
        HRSC2016DataModule(str(hrsc), train_split="train").splits()


def test_hrsc_malformed_box(hrsc: Path, tmp_path: Path) -> None:
    text = (hrsc / "FullDataSet/Annotations/P0003.xml").read_text()
    start = text.index("<mbox_w>")
    (tmp_path / "a.xml").write_text(text[:start] + text[text.index("</mbox_w>") + 9 :])
    with pytest.raises(DataError, match=r"a.xml: HRSC_Object 0: expected a number in <mbox_w>, got None"):
        parse_hrsc_xml(tmp_path / "a.xml")


# ------------------------------------------------------------------------------ YOLO-OBB


@pytest.fixture(scope="module")
def yolo(dota: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ultralytics' layout: train P0003 + P0004, val P0005 (and an unlabelled val image)."""
    root = tmp_path_factory.mktemp("yolo")
    names = ["large-vehicle", "small-vehicle"]
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: large-vehicle\n  1: small-vehicle\n"
    )
    for split, ids in (("train", ["P0003", "P0004"]), ("val", ["P0005"])):
        (root / "labels" / split).mkdir(parents=True)
        for rid in ids:
            ann = dota_objects(dota, rid)
            h, w = DOTA_SIZES[rid]
            xy = ann["polygons"].astype(np.float64) / np.tile([w, h], 4)
            lines = [
                f"{names.index(n)} " + " ".join(f"{v:.6f}" for v in row)
                for n, row in zip(ann["names"], xy, strict=True)
            ]
            (root / "labels" / split / f"{rid}.txt").write_text("\n".join(lines) + "\n")
            link(dota / "images" / f"{rid}.png", root / "images" / split / f"{rid}.png")
    link(dota / "images/P1478__1__853___962.png", root / "images/val/P1478__1__853___962.png")  # background image
    return root


def test_yolo_parser_and_records(dota: Path, yolo: Path) -> None:
    assert read_yolo_names(yolo / "data.yaml") == ["large-vehicle", "small-vehicle"]
    ann = parse_yolo_obb_txt(yolo / "labels/train/P0003.txt", num_classes=2)
    real = dota_objects(dota, "P0003")
    np.testing.assert_allclose(ann["polygons"] * np.tile([1147, 1023], 4), real["polygons"], atol=1e-3)
    assert ann["labels"].tolist() == [int(n == "small-vehicle") for n in real["names"]]
    records = yolo_obb_records(yolo, "val", 2)
    assert [r.id for r in records] == ["P0005", "P1478__1__853___962"] and records[0].normalized
    assert len(records[1]) == 0  # no label file: no object
    px = records[0].in_pixels(884, 977)
    assert not px.normalized and corner_distance(px.polygons, dota_objects(dota, "P0005")["polygons"]) < 1e-3


def test_yolo_datamodule_scales_to_pixels(dota: Path, yolo: Path) -> None:
    dm = YOLOOBBDataModule(str(yolo), crop_size=256, test_split="val")
    with pytest.warns(UserWarning, match="test_split equals data.val_split"):
        splits = dm.splits()
    assert dm.class_names == ["large-vehicle", "small-vehicle"] and len(splits["train"]) == 2
    dm.setup()
    s = dm.datasets["val"][0]
    assert s["id"] == "P0005"
    assert_min_area_rects(s["obbs"], dota_objects(dota, "P0005")["polygons"])
    assert dm.datasets["val"][1]["obbs"].shape == (0, 5)
    assert YOLOOBBDataModule(str(yolo), classes=["a", "b"]).yolo_names(["a", "b"]) == ["a", "b"]


def test_yolo_malformed_labels(yolo: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n2 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n")
    with pytest.raises(DataError, match=r"a.txt:2: class index 2 outside \[0, 2\)"):
        parse_yolo_obb_txt(tmp_path / "a.txt", 2)
    (tmp_path / "b.txt").write_text("0 0.1 0.1 0.2 0.1\n")
    with pytest.raises(DataError, match=r"b.txt:1: expected 'class_index x1 y1"):
        parse_yolo_obb_txt(tmp_path / "b.txt")
    (tmp_path / "n.yaml").write_text("names: {0: a, 2: b}\n")
    with pytest.raises(DataError, match=r"n.yaml: 'names' must map the indices 0..1"):
        read_yolo_names(tmp_path / "n.yaml")
    (tmp_path / "bare/images/train").mkdir(parents=True)
    with pytest.raises(DataError, match="0 data YAML files found; set data.data_yaml or data.classes"):
        YOLOOBBDataModule(str(tmp_path / "bare")).splits()
