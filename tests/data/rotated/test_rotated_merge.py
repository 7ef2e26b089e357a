"""Split → predict → merge on a real DOTA scene: patch detections go back to the scene, each object once.

The "detector" is an oracle reading each patch's label file as written by ``rsfm split``
(objects cut by the patch border become the rectangle of their visible part, scored by their
area), so the test checks the geometry of the workflow:
patch names, coordinates mapped back to the scene, and the rotated NMS that merges the copies
of an object seen by several patches, on the real annotations of ``dota/P0003``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rotated_helpers import link

from rsfm.cli import main as rsfm_main
from rsfm.data.detection.dota import parse_dota_txt
from rsfm.data.rotated.split import merge_patch_detections, merge_task1, parse_patch_name, split_dataset
from rsfm.ops.obb import obb2hbb, poly2obb
from rsfm.ops.rotated_iou import box_iou_rotated
from rsfm.tasks.predict import write_dota_task1
from rsfm.utils.errors import DataError


def _split_p0003(dota: Path, tmp_path: Path) -> tuple[Path, torch.Tensor]:
    src = tmp_path / "scene"
    link(dota / "images" / "P0003.png", src / "images" / "P0003.png")
    link(dota / "labelTxt" / "P0003.txt", src / "labelTxt" / "P0003.txt")
    dst = tmp_path / "patches"
    summary = split_dataset(src, dst, patch_size=512, gap=128)
    assert summary["scenes"] == 1 and summary["patches"] == 9  # 1147 × 1023: 3 × 3 windows
    ann = parse_dota_txt(src / "labelTxt" / "P0003.txt")
    gt = poly2obb(torch.from_numpy(ann["polygons"].reshape(-1, 8)).double())
    return dst, gt[~torch.from_numpy(ann["difficult"])]


def _oracle(label_file: Path) -> dict[str, torch.Tensor]:
    """The patch's non-difficult objects as detections, scored by area relative to the patch's largest.

    A copy clipped by the patch border is smaller than the whole object seen by a neighbour, so
    it scores lower and the merge keeps the whole one.
    """
    rows = [ln.split() for ln in label_file.read_text().splitlines() if len(ln.split()) == 10]
    rows = [r for r in rows if r[9] == "0"]
    polys = torch.tensor([[float(v) for v in r[:8]] for r in rows], dtype=torch.float64).reshape(-1, 8)
    obbs = poly2obb(polys)
    area = obbs[:, 2] * obbs[:, 3]
    return {"obbs": obbs, "scores": area / area.max().clamp(min=1), "labels": torch.zeros(len(rows), dtype=torch.int64)}


def test_split_predict_merge_finds_a_straddling_object_once(datasets: Path, tmp_path: Path) -> None:
    dst, gt = _split_p0003(datasets / "dota", tmp_path)
    dets = {p.stem: _oracle(p) for p in sorted((dst / "labelTxt").glob("*.txt"))}
    # an object cut by the right border of the first patch [0, 512): seen, clipped or whole, by several patches
    hbb = obb2hbb(gt)
    straddling = ((hbb[:, 0] < 512) & (hbb[:, 2] > 512) & (hbb[:, 3] < 384)).nonzero().flatten()
    assert len(straddling), "P0003 has no object across x = 512 in the top row"
    k = int(straddling[0])
    seen = 0
    for name, det in dets.items():
        _, rate, x0, y0 = parse_patch_name(name)
        shifted = gt[k : k + 1].clone()
        shifted[:, :2] -= torch.tensor([x0, y0], dtype=shifted.dtype)
        if len(det["obbs"]) and box_iou_rotated(shifted, det["obbs"]).max() > 0.3:
            seen += 1
    assert seen >= 2  # the object is detected in more than one patch ...

    merged = merge_patch_detections(dets, iou_threshold=0.1)
    assert list(merged) == ["P0003"]
    out = merged["P0003"]
    iou = box_iou_rotated(gt, out["obbs"])
    assert int((iou[k] > 0.5).sum()) == 1  # ... and once in the merged scene, in scene pixels
    assert float(iou[k].max()) > 0.99
    matched = (iou > 0.5).sum(1)
    assert (matched == 1).float().mean() > 0.97  # every object once (a few that touch may merge)
    assert len(out["obbs"]) <= len(gt)
    assert (out["scores"][:-1] >= out["scores"][1:]).all()


def test_task1_files_of_patches_merge_to_the_scene(datasets: Path, tmp_path: Path, capsys) -> None:
    dst, gt = _split_p0003(datasets / "dota", tmp_path)
    classes = ["small-vehicle", "large-vehicle"]
    task1 = tmp_path / "task1_patches"
    for p in sorted((dst / "labelTxt").glob("*.txt")):
        det = _oracle(p)
        write_dota_task1(task1, p.stem, det, classes)
    write_dota_task1(task1, p.stem, det, classes)  # predicting a patch again replaces its lines
    lines = (task1 / "Task1_small-vehicle.txt").read_text().splitlines()
    assert len(lines) == len({(ln.split()[0], *ln.split()[2:]) for ln in lines})
    assert (task1 / "Task1_large-vehicle.txt").read_text() == ""

    out = tmp_path / "task1_scenes"
    assert rsfm_main(["merge", str(task1), str(out)]) == 0
    assert "2 class file(s)" in capsys.readouterr().out
    rows = [ln.split() for ln in (out / "Task1_small-vehicle.txt").read_text().splitlines()]
    assert {r[0] for r in rows} == {"P0003"}
    merged = poly2obb(torch.tensor([[float(v) for v in r[2:]] for r in rows], dtype=torch.float64))
    iou = box_iou_rotated(gt, merged)
    assert (iou.max(1).values > 0.99).float().mean() > 0.97  # back on the scene's objects

    assert rsfm_main(["merge", str(tmp_path / "nothing"), str(out)]) == 2
    assert rsfm_main(["merge", str(task1), str(out), "--iou-threshold", "5"]) == 2
    assert "--iou-threshold) must be in [0, 1], got 5.0" in capsys.readouterr().err
    (task1 / "Task1_bad.txt").write_text("P0003__1__0___0 0.9 1 2 3\n")
    with pytest.raises(DataError, match=r"Task1_bad.txt:1: expected"):
        merge_task1(task1, out)
    (task1 / "Task1_bad.txt").write_text("P0003__1__0___0 0.9 1 2 3 4 5 6 7 8\nP0003 0.9 1 2 3 4 5 6 7 8\n")
    with pytest.raises(DataError, match=r"Task1_bad.txt:2: P0003: not a patch name"):
        merge_task1(task1, out)


def test_rsfm_split_command(datasets: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "scene"
    link(datasets / "dota" / "images" / "P0004.png", src / "images" / "P0004.png")
    link(datasets / "dota" / "labelTxt" / "P0004.txt", src / "labelTxt" / "P0004.txt")
    link(datasets / "dota" / "images" / "P0003.png", src / "images" / "P0003.png")  # no label file: said, not cut
    assert rsfm_main(["split", str(src), str(tmp_path / "out"), "--patch-size", "512", "--gap", "100"]) == 0
    out = capsys.readouterr().out
    assert "1 scene(s) -> " in out and "1 image(s) without a label file in labelTxt/ not cut: P0003.png" in out
    names = sorted(p.stem for p in (tmp_path / "out" / "images").glob("*.png"))
    assert names[0] == "P0004__1__0___0" and len(names) == len(list((tmp_path / "out" / "labelTxt").glob("*.txt")))
    assert rsfm_main(["split", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert np.all([parse_patch_name(n)[0] == "P0004" for n in names])
