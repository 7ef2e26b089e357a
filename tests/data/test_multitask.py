"""Multi-task samples (rsfm.data.multitask) on real data: iSAID + DOTA, HIT-UAV, and MTP's augmentation."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.detection.dota import DOTA_V1_CLASSES
from rsfm.data.multitask import (
    IGNORE_INDEX,
    ISAIDDOTASource,
    MultiTaskDataset,
    MultiTaskRecord,
    MultiTaskTrainTransform,
    RotatedBoxesSource,
    collate_multitask,
    mask_boxes,
)
from rsfm.data.rotated import HIT_UAV_CLASSES, RotatedDetectionDataset, polygons_to_obbs, rolabelimg_records
from rsfm.data.samplers import KeyedDataset
from rsfm.ops.obb import obb2poly, obb_flip, regularize_obb

ONE_THREAD = True


@pytest.fixture(scope="module")
def isaid(datasets: Path) -> ISAIDDOTASource:
    return ISAIDDOTASource(datasets / "isaid_dota", datasets / "dota")


@pytest.fixture(scope="module")
def p0005(isaid: ISAIDDOTASource) -> dict:
    """The raw sample of P0005 (uint8 image, masks...), as the transform receives it, read once."""
    raw: dict = {}
    MultiTaskDataset(isaid, "train", transform=lambda s: raw.update(s) or dict(s))[0]
    return raw


def dota_objects(path: Path) -> int:
    """Object lines of a DOTA label file whose polygon has a positive (shoelace) area."""
    n = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 9:
            continue  # imagesource: / gsd: headers
        xy = np.asarray([float(v) for v in parts[:8]]).reshape(4, 2)
        x, y = xy[:, 0], xy[:, 1]
        n += 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0
    return n


def test_isaid_dota_p0005(isaid: ISAIDDOTASource, datasets: Path) -> None:
    assert isaid.tasks == ("semantic", "instance", "rotated")
    assert isaid.classes == list(DOTA_V1_CLASSES) and isaid.semantic_classes[0] == "background"
    ds = MultiTaskDataset(isaid, "train")
    assert [r.id for r in ds.records] == ["P0005"]
    s = ds[0]
    assert list(s) == ["image", "mask", "boxes", "labels", "masks", "obbs", "obb_labels", "id"]
    h, w = 977, 884
    assert s["image"].shape == (3, h, w) and s["image"].dtype == torch.float32 and float(s["image"].max()) <= 1
    # instances: one per id of the id PNG (id = R + 256 G + 65536 B, 0 = none)
    id_png = Image.open(datasets / "isaid_dota/train/images/P0005_instance_id_RGB.png").convert("RGB")
    rgb = np.asarray(id_png).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    n = len(np.unique(ids[ids > 0]))
    assert len(s["masks"]) == len(s["labels"]) == len(s["boxes"]) == n > 100
    assert s["masks"].shape == (n, h, w) and s["masks"].dtype == torch.uint8
    areas = sorted(int(m.sum()) for m in s["masks"])
    assert areas == sorted(int(c) for c in np.unique(ids[ids > 0], return_counts=True)[1])
    # rotated: the label file's objects (degenerate polygons dropped), in the same class list
    assert len(s["obbs"]) == len(s["obb_labels"]) == dota_objects(datasets / "dota/labelTxt/P0005.txt")
    names = {DOTA_V1_CLASSES[k] for k in s["obb_labels"].tolist()}
    assert names == {DOTA_V1_CLASSES[k] for k in s["labels"].tolist()} == {"large-vehicle", "small-vehicle"}
    assert (s["obbs"][:, 2] >= s["obbs"][:, 3]).all() and (s["obbs"][:, 4].abs() <= math.pi / 2).all()
    # semantic: background 0 where no instance, class + 1 on the instances' pixels
    mask = s["mask"]
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) == {0} | {k + 1 for k in s["labels"].tolist()}
    assert (mask[torch.from_numpy(ids == 0)] == 0).all()
    for m, k in zip(s["masks"].bool(), s["labels"], strict=True):
        assert (mask[m] == k + 1).float().mean() > 0.9  # an instance's pixels carry its class
    assert torch.equal(s["boxes"], mask_boxes(s["masks"]))


def test_transform_keeps_labels_consistent(isaid: ISAIDDOTASource) -> None:
    t = MultiTaskTrainTransform(crop_size=320)
    ds = MultiTaskDataset(isaid, "train", t)
    seen_pad = False
    for seed in range(5):
        torch.manual_seed(seed)
        s = ds[0]
        assert s["image"].shape == (3, 320, 320) and s["mask"].shape == (320, 320)
        assert s["masks"].shape[1:] == (320, 320) and len(s["masks"]) == len(s["labels"]) == len(s["boxes"])
        masks = s["masks"].bool()
        assert masks.flatten(1).any(1).all()  # no empty instance
        for m, b in zip(masks, s["boxes"], strict=True):  # each box is the tight box of its mask
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert b.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        for m, k in zip(masks, s["labels"], strict=True):  # instances stay on their semantic class
            assert (s["mask"][m] == k + 1).float().mean() > 0.8
        valid = s["mask"] != IGNORE_INDEX
        ch, cw = int(valid.any(1).sum()), int(valid.any(0).sum())
        assert valid[:ch, :cw].all() and not valid[ch:].any() and not valid[:, cw:].any()
        assert (s["image"][:, ~valid] == 0).all() and not masks[:, ~valid].any()  # padding
        seen_pad |= ch < 320
        c = s["obbs"][:, :2]
        assert ((c[:, 0] >= 0) & (c[:, 0] < cw) & (c[:, 1] >= 0) & (c[:, 1] < ch)).all()  # centres inside
    assert seen_pad  # some scale r < 1 left a crop smaller than 320


def test_transform_geometry(p0005: dict) -> None:
    """Flip, resize and crop move image, semantic and instance masks and boxes together."""
    image = p0005["image"]
    h, w = image.shape[-2:]
    # a label map read off the image itself: exact under flips and crops, where nearest = bilinear
    probe = {
        "image": image,
        "mask": (image[0] // 64).to(torch.uint8),
        "masks": torch.stack([image[1] > 120, image[2] < 60]),
        "labels": torch.tensor([0, 1]),
        "polygons": torch.tensor([[100.0, 200, 140, 200, 140, 220, 100, 220]]),
        "obb_labels": torch.tensor([3]),
    }
    for direction in ("horizontal", "vertical", "diagonal", "transpose"):
        # ratio chosen so that the long side stays 977: no resampling, a crop of 900 from one axis
        t = MultiTaskTrainTransform(900, (977.5 / 900, 977.5 / 900), 1.0, (direction,), photometric_distortion=False)
        torch.manual_seed(1)
        out = t(dict(probe))
        img = out["image"]
        valid = out["mask"] != IGNORE_INDEX
        assert torch.equal(out["mask"][valid], (img[0] * 255).round().to(torch.uint8)[valid] // 64)
        assert torch.equal(out["masks"][0][valid], (img[1] * 255).round()[valid] > 120)
        assert torch.equal(out["masks"][1][valid], (img[2] * 255).round()[valid] < 60)
    # the known box under each flip, without crop (crop_size = long side) or resize
    box = regularize_obb(torch.tensor([[120.0, 210.0, 40.0, 20.0, 0.0]]))
    for direction, want in (
        ("horizontal", [w - 120.0, 210.0, 40.0, 20.0, 0.0]),
        ("vertical", [120.0, h - 210.0, 40.0, 20.0, 0.0]),
        ("diagonal", [w - 120.0, h - 210.0, 40.0, 20.0, 0.0]),
        ("transpose", [210.0, 120.0, 40.0, 20.0, -math.pi / 2]),
    ):
        t = MultiTaskTrainTransform(977, (1.0, 1.0), 1.0, (direction,), photometric_distortion=False)
        out = t(dict(probe))
        obbs = polygons_to_obbs(out["polygons"])
        assert torch.allclose(obbs, torch.tensor([want]), atol=1e-4), direction
        if direction != "transpose":
            assert torch.allclose(obbs, obb_flip(box, (h, w), direction), atol=1e-4)
    # a rotated box, diagonal flip (a half turn): centre mirrored through the image centre, angle kept
    t = MultiTaskTrainTransform(977, (1.0, 1.0), 1.0, ("diagonal",), photometric_distortion=False)
    tilted = torch.tensor([[120.0, 210.0, 40.0, 20.0, 0.5]])
    out = t({**probe, "polygons": obb2poly(tilted).reshape(1, 8).float()})
    want = torch.tensor([[w - 120.0, h - 210.0, 40.0, 20.0, 0.5]])
    assert torch.allclose(polygons_to_obbs(out["polygons"]), want, atol=1e-4)
    # and a transpose: (x, y) -> (y, x), the angle pi/2 - theta
    t = MultiTaskTrainTransform(977, (1.0, 1.0), 1.0, ("transpose",), photometric_distortion=False)
    out = t({**probe, "polygons": obb2poly(tilted).reshape(1, 8).float()})
    want = regularize_obb(torch.tensor([[210.0, 120.0, 40.0, 20.0, math.pi / 2 - 0.5]]))
    assert torch.allclose(polygons_to_obbs(out["polygons"]), want, atol=1e-4)


def test_resize_scales_boxes_and_masks(p0005: dict) -> None:
    """Scale r with crop 300: the 977-pixel side becomes int(300 r); boxes scale by the same factor."""
    t = MultiTaskTrainTransform(300, (2.0, 2.0), 0.0, photometric_distortion=False)
    torch.manual_seed(0)
    out = t(dict(p0005))
    assert out["image"].shape == (3, 300, 300)
    factor_y, factor_x = round(977 * 600 / 977) / 977, round(884 * 600 / 977) / 884
    poly = out["polygons"].reshape(-1, 4, 2).double()
    scaled = p0005["polygons"].reshape(-1, 4, 2).double() * torch.tensor([factor_x, factor_y], dtype=torch.float64)
    # one whole-pixel crop offset maps every kept box onto a scaled source box
    found = False
    for j in range(len(scaled)):
        shift = scaled[j, 0] - poly[0, 0]
        if (shift - shift.round()).abs().max() > 1e-3 or (shift < -1e-3).any():
            continue
        d = torch.cdist((poly + shift).reshape(len(poly), -1), scaled.reshape(len(scaled), -1))
        found |= bool((d.amin(1) < 1e-3).all())
    assert found
    assert 0 < len(out["masks"]) < len(p0005["masks"]) and 0 < len(poly) < len(scaled)


def test_same_seed_same_sample(isaid: ISAIDDOTASource) -> None:
    ds = KeyedDataset(MultiTaskDataset(isaid, "train", MultiTaskTrainTransform(256)), seed=3)
    a, b, c = ds[(0, 0)], ds[(0, 0)], ds[(0, 1)]
    for key in ("image", "mask", "boxes", "labels", "masks", "obbs", "obb_labels"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["image"], c["image"])  # another epoch, another draw


def test_rotated_boxes_source_hit_uav(datasets: Path) -> None:
    src = RotatedBoxesSource("hit_uav", datasets / "hit_uav")
    assert src.tasks == ("rotated",) and src.classes == list(HIT_UAV_CLASSES) and src.name == "hituav"
    ds = MultiTaskDataset(src, "val")
    ref = RotatedDetectionDataset(rolabelimg_records(datasets / "hit_uav", "val", HIT_UAV_CLASSES)[0], HIT_UAV_CLASSES)
    assert [r.id for r in ds.records] == [r.id for r in ref.records]
    s, r = ds[0], ref[0]
    assert list(s) == ["image", "obbs", "obb_labels", "id"]
    assert torch.equal(s["image"], r["image"]) and torch.equal(s["obb_labels"], r["labels"])
    assert torch.allclose(s["obbs"], r["obbs"], atol=1e-4)
    torch.manual_seed(0)
    t = MultiTaskDataset(src, "val", MultiTaskTrainTransform(256))[0]
    assert t["image"].shape == (3, 256, 256) and list(t) == ["image", "obbs", "obb_labels", "id"]


def test_unreadable_images_are_skipped_and_collated(datasets: Path, tmp_path: Path) -> None:
    src = RotatedBoxesSource("hit_uav", datasets / "hit_uav", classes=HIT_UAV_CLASSES)
    good = src.records("val")[:2]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    bad = MultiTaskRecord(empty, "empty", good[0].annotations)
    ds = MultiTaskDataset(src, records=[good[0], bad, good[1]])
    assert ds[1] == {"skipped": (str(empty), "zero_byte"), "id": "empty"}
    batch = collate_multitask([ds[0], ds[1], ds[2]])
    assert len(batch["image"]) == 2 and batch["id"] == [good[0].id, good[1].id]
    assert batch["skipped"] == [(str(empty), "zero_byte")]
    assert collate_multitask([ds[1]]) == {"image": [], "id": [], "skipped": [(str(empty), "zero_byte")]}


def test_truncated_label_png_is_skipped(datasets: Path, tmp_path: Path) -> None:
    from rsfm.data.multitask import SAMRSSource

    root = tmp_path / "samrs"
    (root / "images").mkdir(parents=True)
    (root / "gray").mkdir()
    shutil.copy(datasets / "isaid_dota/train/images/P0005.png", root / "images/P0005.png")
    data = (datasets / "isaid_dota/train/images/P0005_instance_color_RGB.png").read_bytes()
    (root / "gray/P0005.png").write_bytes(data[: len(data) // 3])
    ds = MultiTaskDataset(SAMRSSource(root, classes=["car"]), ".")
    assert ds[0] == {"skipped": (str(root / "gray/P0005.png"), "truncated"), "id": "P0005"}


def test_transform_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        MultiTaskTrainTransform(0)
    with pytest.raises(ValueError, match="scale_range"):
        MultiTaskTrainTransform(64, (2.0, 1.0))
    with pytest.raises(ValueError, match="flip_directions"):
        MultiTaskTrainTransform(64, flip_directions=("sideways",))
