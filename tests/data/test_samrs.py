"""``rsfm samrs`` and rsfm.data.samrs on real HIT-UAV images, read back by SAMRSSource.

The SAMRS sets are written from the real HIT-UAV annotations (a few images of its ``val``
list); the SAM path runs a randomly initialised, tiny SAM on two real images (its masks are
random: only their shapes and the prompting are checked).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from rsfm.cli import main
from rsfm.data.multitask import MultiTaskDataset, SAMRSSource, find_layout
from rsfm.data.rotated import HIT_UAV_CLASSES, HITUAVDataModule, rolabelimg_records
from rsfm.data.samrs import box_mask, build_samrs
from rsfm.ops.obb import regularize_obb
from rsfm.utils.errors import CheckpointError, ConfigError, DataError, OutputError

ONE_THREAD = True
#: images of HIT-UAV's val list written by the CLI test
LIMIT = 4


@pytest.fixture(scope="module")
def hit_uav(datasets: Path) -> Path:
    return datasets / "hit_uav"


@pytest.fixture(scope="module")
def originals(hit_uav: Path):
    records, classes = rolabelimg_records(hit_uav, "val", HIT_UAV_CLASSES)
    return records[:LIMIT], classes


@pytest.fixture(scope="module")
def samrs_dir(hit_uav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SAMRS set written by ``rsfm samrs`` from the first images of HIT-UAV's val list."""
    out = tmp_path_factory.mktemp("samrs") / "hit_uav_samrs"
    args = ["samrs", "--source", "hit_uav", "--root", str(hit_uav), "--out", str(out)]
    assert main([*args, "--split", "val", "--limit", str(LIMIT)]) == 0
    return out


def centres_inside(polygon: np.ndarray, height: int, width: int, grow: float = 0.0) -> np.ndarray:
    """``(H, W)`` bool: pixels whose centre lies inside the polygon (grown by ``grow`` pixels)."""
    poly = shapely.Polygon(np.asarray(polygon, dtype=np.float64).reshape(4, 2))
    if grow:
        poly = poly.buffer(grow)
    out = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = poly.bounds
    c0, r0 = max(0, int(x0) - 1), max(0, int(y0) - 1)
    c1, r1 = min(width, int(x1) + 2), min(height, int(y1) + 2)
    ys, xs = np.mgrid[r0:r1, c0:c1] + 0.5
    out[r0:r1, c0:c1] = shapely.contains_xy(poly, xs, ys) | shapely.intersects_xy(poly.boundary, xs, ys)
    return out


def angle_gap(a: torch.Tensor, b: torch.Tensor, period: float) -> torch.Tensor:
    d = (a - b) % period
    return torch.minimum(d, period - d)


def test_cli_writes_a_samrs_set_that_reads_back(samrs_dir: Path, originals) -> None:
    records, classes = originals
    manifest = json.loads((samrs_dir / "manifest.json").read_text())
    total = sum(len(r) for r in records)
    assert manifest["classes"] == list(classes) and manifest["mask_mode"] == "box"
    assert manifest["counts"]["images"] == LIMIT and manifest["counts"]["objects"] == total
    assert manifest["source"]["split"] == "val" and manifest["rsfm_version"]

    source = SAMRSSource(samrs_dir)
    assert source.tasks == ("semantic", "instance", "rotated") and source.classes == list(classes)
    ds = MultiTaskDataset(source, ".")
    by_id = {r.id: i for i, r in enumerate(ds.records)}
    assert sorted(by_id) == sorted(r.id for r in records)
    for rec in records:
        s = ds[by_id[rec.id]]
        h, w = s["image"].shape[-2:]
        n = len(rec)
        assert len(s["obbs"]) == len(s["labels"]) == len(s["masks"]) == n  # same number of objects
        assert s["obb_labels"].tolist() == s["labels"].tolist() == rec.labels.tolist()

        # rotated boxes: the originals (roLabelImg cx, cy, w, h, angle) in le90
        from rsfm.data.rotated.rolabelimg import parse_rolabelimg_xml

        ann = parse_rolabelimg_xml(Path(rec.image).parents[1] / "Annotations" / f"{rec.id}.xml")
        want = regularize_obb(torch.as_tensor(ann["obbs"], dtype=torch.float64), "le90").float()
        got = s["obbs"]
        assert torch.allclose(got[:, :4], want[:, :4], atol=1e-3)
        square = (want[:, 2] - want[:, 3]).abs() < 1e-3  # a square's angle is defined modulo 90°
        period = torch.where(square, math.pi / 2, math.pi)
        gap = angle_gap(got[:, 4], want[:, 4], period)
        assert float(gap.max()) < 1e-3

        # semantic: pixels inside a box polygon (and no later box) carry its class + 1
        mask = s["mask"].numpy()
        raw = np.asarray(Image.open(samrs_dir / "gray" / f"{rec.id}.png"))
        assert np.array_equal(mask, (raw.astype(int) + 1) % 256)
        later = np.zeros((h, w), dtype=bool)
        inside = [centres_inside(p, h, w) for p in rec.polygons]
        for i in reversed(range(n)):
            own = inside[i] & ~later
            assert own.any() and (mask[own] == rec.labels[i] + 1).all()
            later |= inside[i]
        assert np.array_equal(mask == 0, ~np.any(inside, axis=0))  # background: the centres in no box

        # instances: each decodes to its filled box polygon (the pixels whose centre is inside)
        for i in range(n):
            m = s["masks"][i].numpy().astype(bool)
            assert np.array_equal(m, inside[i])
            ys, xs = np.nonzero(m)
            assert s["boxes"][i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_written_files_follow_samrs(samrs_dir: Path, originals) -> None:
    records, classes = originals
    coco = json.loads((samrs_dir / "instances.json").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(len(classes)))
    rec = records[0]
    img = next(i for i in coco["images"] if Path(i["file_name"]).stem == rec.id)
    anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
    assert [a["category_id"] for a in anns] == rec.labels.tolist()
    for a in anns:
        assert a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
        m = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        ys, xs = np.nonzero(m)
        assert a["area"] == int(m.sum())
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    lines = (samrs_dir / "rbbtxts" / f"{rec.id}.txt").read_text().splitlines()
    assert len(lines) == len(rec)
    for line, poly, k in zip(lines, rec.polygons, rec.labels, strict=True):
        parts = line.split()
        assert parts[8:] == [classes[k], str(k)]
        np.testing.assert_allclose([float(v) for v in parts[:8]], poly, atol=1e-4)
    assert (samrs_dir / "images" / Path(rec.image).name).read_bytes() == Path(rec.image).read_bytes()


def test_box_mask_fills_the_polygon() -> None:
    poly = np.array([10.0, 5.0, 30.0, 15.0, 25.0, 25.0, 5.0, 15.0])  # a rotated rectangle
    m = box_mask(poly, 40, 40)
    assert np.array_equal(m, centres_inside(poly, 40, 40)) and abs(int(m.sum()) - 250) < 10  # ≈ its area, 10√5·5√5
    m = box_mask(poly[[6, 7, 4, 5, 2, 3, 0, 1]], 40, 40)  # the other corner order fills the same pixels
    assert np.array_equal(m, centres_inside(poly, 40, 40))
    m = box_mask([2.0, 3.0, 6.0, 3.0, 6.0, 5.0, 2.0, 5.0], 8, 8)
    assert np.argwhere(m).tolist() == [[r, c] for r in (3, 4) for c in (2, 3, 4, 5)]  # columns 2..5, rows 3..4
    assert box_mask([0.2, 0.2, 0.6, 0.2, 0.6, 0.7, 0.2, 0.7], 4, 4).sum() == 1  # thinner than a pixel: one
    assert not box_mask([50.0, 50, 60, 50, 60, 60, 50, 60], 40, 40).any()  # outside the image


def tiny_sam(img_size: int = 64):
    """A randomly initialised SAM with a 1-block ViT encoder, 16-pixel patches, 32-d prompts."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    dim, grid = 32, img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, out_chans=dim
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    )
    return sam.eval()


def test_sam_masks_with_a_tiny_random_sam(originals, tmp_path: Path) -> None:
    from segment_anything import SamPredictor

    records, classes = originals
    two = records[:2]
    predictor = SamPredictor(tiny_sam())
    calls = {"set_image": 0, "boxes": []}
    set_image, predict_torch = predictor.set_image, predictor.predict_torch

    def spy_set_image(image, image_format="RGB"):
        calls["set_image"] += 1
        assert image.shape == (512, 640, 3) and image.dtype == np.uint8
        return set_image(image, image_format)

    def spy_predict(point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True, **kw):
        assert point_coords is None and mask_input is None and multimask_output is False  # box prompts only
        calls["boxes"].append(len(boxes))
        return predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output, **kw)

    predictor.set_image, predictor.predict_torch = spy_set_image, spy_predict
    m = build_samrs(two, classes, tmp_path / "sam", sam=predictor, batch=3)
    sizes = [len(r) for r in two]
    assert calls["set_image"] == 2  # one embedding per image
    assert calls["boxes"] == [b for n in sizes for b in [3] * (n // 3) + ([n % 3] if n % 3 else [])]
    assert m["mask_mode"] == "sam" and m["counts"]["objects"] == sum(sizes)
    coco = json.loads((tmp_path / "sam" / "instances.json").read_text())
    assert len(coco["annotations"]) == m["counts"]["instances"] == sum(sizes) - m["counts"]["empty_masks"]
    for a in coco["annotations"]:
        assert mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}).shape == (
            512,
            640,
        )
    for r in two:
        assert np.asarray(Image.open(tmp_path / "sam" / "gray" / f"{r.id}.png")).shape == (512, 640)


def test_sam_weights_file(originals, tmp_path: Path) -> None:
    records, classes = originals
    with pytest.raises(CheckpointError, match="SAM checkpoint not found"):
        build_samrs(records[:1], classes, tmp_path / "a", sam=tmp_path / "missing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list.pth: not SAM vit_b weights \(expected a state dict"):
        build_samrs(records[:1], classes, tmp_path / "b", sam=tmp_path / "list.pth", sam_model="vit_b")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match="text.pth: not SAM vit_h weights"):
        build_samrs(records[:1], classes, tmp_path / "c", sam=tmp_path / "text.pth")
    with pytest.raises(ConfigError, match="SAM model must be one of"):
        build_samrs(records[:1], classes, tmp_path / "d", sam=tmp_path / "text.pth", sam_model="vit_x")


def test_missing_gray_png_and_bad_txt_line_name_the_file(samrs_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(samrs_dir, root)
    ds = MultiTaskDataset(SAMRSSource(root), ".")
    first, second = ds.records[0].id, ds.records[1].id
    txt = root / "rbbtxts" / f"{second}.txt"
    txt.write_text(txt.read_text() + "1 2 3 4 5 6 Car 1\n")
    with pytest.raises(DataError, match=rf"{txt}:\d+"):
        ds[1]
    txt.write_text("1 1 9 1 9 9 1 9 Tank 0\n")
    with pytest.raises(DataError, match=rf"{txt}: class 'Tank'"):
        ds[1]
    (root / "gray" / f"{first}.png").unlink()
    with pytest.raises(DataError, match=str(root / "gray" / f"{first}.png")):
        SAMRSSource(root).records(".")


def test_source_parts_are_optional(samrs_dir: Path, tmp_path: Path, datasets: Path) -> None:
    root = tmp_path / "boxes_only"
    shutil.copytree(samrs_dir / "images", root / "images")
    shutil.copytree(samrs_dir / "rbbtxts", root / "boxes")
    with pytest.raises(DataError, match="class names are required"):
        SAMRSSource(root, rotated_dir="boxes")
    src = SAMRSSource(root, classes=HIT_UAV_CLASSES, rotated_dir="boxes", name="hit")
    assert src.tasks == ("rotated",)
    s = MultiTaskDataset(src, ".")[0]
    assert set(s) == {"image", "obbs", "obb_labels", "id"}
    with pytest.raises(DataError, match="semantic labels are missing"):
        SAMRSSource(root, classes=HIT_UAV_CLASSES, rotated_dir="boxes", tasks=("semantic",))
    # DIOR-R xml boxes (SIOR's rotated labels) in a SAMRS layout
    dior = tmp_path / "sior"
    (dior / "images").mkdir(parents=True)
    (dior / "rbb").mkdir()
    (dior / "images" / "00001.jpg").symlink_to(datasets / "dior_r" / "JPEGImages" / "00001.jpg")
    xml = datasets / "dior_r" / "Annotations" / "Oriented Bounding Boxes" / "00001.xml"
    (dior / "rbb" / "00001.xml").symlink_to(xml)
    from rsfm.data.detection.dior import DIOR_CLASSES, parse_dior_obb_xml

    s = MultiTaskDataset(SAMRSSource(dior, DIOR_CLASSES, rotated_dir="rbb"), ".")[0]
    assert len(s["obbs"]) == len(parse_dior_obb_xml(xml)["names"]) > 0


def test_id_list_splits(samrs_dir: Path, tmp_path: Path) -> None:
    ids = sorted(p.stem for p in (samrs_dir / "images").iterdir())
    root = tmp_path / "split"
    shutil.copytree(samrs_dir, root)
    (root / "train.txt").write_text(f"{ids[2]}\r\n{ids[0]}\r\n")
    assert [r.id for r in SAMRSSource(root).records("train")] == [ids[2], ids[0]]
    with pytest.raises(DataError, match="split 'valid' not found"):
        SAMRSSource(root).records("valid")
    # MTP's per-split instance files: the split is the JSON's images
    coco = json.loads((root / "instances.json").read_text())
    keep = [i for i in coco["images"] if Path(i["file_name"]).stem in ids[1:3]]
    coco["images"] = keep
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in {i["id"] for i in keep}]
    (root / "instances.json").unlink()
    (root / "ann").mkdir()
    (root / "ann" / "sota_valid_ins.json").write_text(json.dumps(coco))
    src = SAMRSSource(root, instances="ann/sota_{split}_ins.json")
    assert src.tasks == ("semantic", "instance", "rotated") and src.classes == list(HIT_UAV_CLASSES)
    assert [r.id for r in src.records("valid")] == [Path(i["file_name"]).stem for i in keep]  # the JSON's order
    with pytest.raises(DataError, match="instance annotation file not found: .*sota_test_ins.json"):
        src.records("test")  # neither an id list nor an instance file
    with pytest.raises(DataError, match="differ from the classes"):
        SAMRSSource(root, classes=["a", "b", "c", "d", "e"], instances="ann/sota_{split}_ins.json").records("valid")


def test_unreadable_and_empty_records_are_counted(originals, tmp_path: Path) -> None:
    import dataclasses

    records, classes = originals
    (tmp_path / "empty.jpg").write_bytes(b"")
    bad = dataclasses.replace(records[0], image=tmp_path / "empty.jpg", id="bad")
    none = dataclasses.replace(records[1], polygons=records[1].polygons[:0], labels=records[1].labels[:0], id="none")
    m = build_samrs([bad, records[0], none], classes, tmp_path / "out", images="symlink")
    assert m["counts"]["images"] == 1 and m["counts"]["skipped_unreadable"] == m["counts"]["skipped_no_boxes"] == 1
    assert m["skipped"] == [[str(tmp_path / "empty.jpg"), "zero_byte"]]
    assert (tmp_path / "out" / "images" / Path(records[0].image).name).is_symlink()
    assert sorted(p.stem for p in (tmp_path / "out" / "gray").iterdir()) == [records[0].id]


def test_cli_errors_are_one_line(hit_uav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samrs", "--source", "hit_uv", "--root", str(hit_uav), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown box layout 'hit_uv'" in err and "hituav" in err
    assert main(["samrs", "--source", "hit_uav", "--root", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "--root: folder not found" in capsys.readouterr().err
    assert main(["samrs", "--source", "dota", "--root", ".", "--out", "x", "--print-config"]) == 0
    assert "source: dota" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        find_layout("isaid")  # an instance layout is not a box source
    assert find_layout("hit_uav") is HITUAVDataModule and find_layout("HITUAVDataModule") is HITUAVDataModule
    assert find_layout("dota").__name__ == "DOTARotatedDataModule" and find_layout("dior").__name__ == "DIORDataModule"


def test_horizontal_layout(datasets: Path, tmp_path: Path) -> None:
    from rsfm.data.samrs import build_samrs_from_layout

    m = build_samrs_from_layout("voc", datasets / "nepu_owod", tmp_path / "owod", split="train", limit=2)
    assert m["files"]["rotated"] is None and not (tmp_path / "owod" / "rbbtxts").exists()
    src = SAMRSSource(tmp_path / "owod")
    assert src.tasks == ("semantic", "instance") and src.classes == ["oilwell"]
    s = MultiTaskDataset(src, ".")[0]
    assert len(s["boxes"]) > 0 and set(s["mask"].unique().tolist()) == {0, 1}


def test_a_second_run_replaces_the_first_set(originals, tmp_path: Path) -> None:
    records, classes = originals
    out = tmp_path / "set"
    build_samrs(records, classes, out, images="symlink")
    assert len(list((out / "gray").iterdir())) == len(records)
    (out / "gray" / "left_by_a_killed_run.png").write_bytes(b"")
    m = build_samrs(records[:1], classes, out, images="symlink")  # e.g. --limit 1 into the same folder
    assert m["counts"]["images"] == 1 and not (out / ".samrs-incomplete").exists()
    for folder in ("images", "gray", "rbbtxts"):
        assert [p.stem for p in (out / folder).iterdir()] == [records[0].id], folder
    assert [Path(r.image).stem for r in SAMRSSource(out).records(None)] == [records[0].id]
    (out / "manifest.json").unlink()  # no longer recognisably a set of rsfm samrs: never deleted
    with pytest.raises(OutputError, match="images: already holds files that rsfm samrs did not write"):
        build_samrs(records, classes, out, images="symlink")
    assert (out / "images" / Path(records[0].image).name).is_symlink()
