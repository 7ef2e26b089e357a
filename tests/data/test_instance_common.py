"""What every instance layout shares (rsfm.data.instance.common): boxes from masks, crops, flips, filtering.

Checked on the real iSAID scene P0003 (isaid_dota/val) in both compact forms: the instance
map of iSAID and the mask stack of COCO; every expectation is recomputed from the instance
map with numpy.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm.data.detection.common import crop_window
from rsfm.data.instance import (
    INSTANCE_BATCH_KEYS,
    InstanceTrainTransform,
    collate_instances,
    finalize_instances,
    isaid_records,
    masks_to_boxes,
    random_instance_crop,
    random_instance_flip,
)
from rsfm.data.io import read_image


@pytest.fixture(scope="module")
def scene(datasets: Path) -> dict:
    """P0003 as the dataset hands it to the transform: uint8 image, ``instance_map`` (H, W) int32."""
    records, _ = isaid_records(datasets / "isaid_dota" / "val")
    image = read_image(records[0].image)
    target = records[0].read_target(image.shape[1], image.shape[2])
    return {
        "image": image,
        "instance_map": torch.from_numpy(target["instance_map"]),
        "labels": torch.from_numpy(target["labels"]),
        "difficult": torch.zeros(len(target["labels"]), dtype=torch.bool),
        "id": "P0003",
    }


def as_masks(sample: dict) -> dict:
    """The same sample in the mask-stack form (COCO's)."""
    out = {k: v for k, v in sample.items() if k != "instance_map"}
    n = len(sample["labels"])
    out["masks"] = sample["instance_map"][None] == torch.arange(1, n + 1, dtype=torch.int32)[:, None, None]
    return out


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def test_masks_to_boxes(scene: dict) -> None:
    masks = as_masks(scene)["masks"][:20]
    assert torch.equal(masks_to_boxes(masks), torch.from_numpy(tight_boxes(masks.numpy())))
    empty = torch.zeros(2, 5, 6, dtype=torch.uint8)
    empty[1, 4, 5] = 1  # one pixel in the bottom-right corner: the box (5, 4, 6, 5)
    assert masks_to_boxes(empty).tolist() == [[0, 0, 0, 0], [5, 4, 6, 5]]
    assert masks_to_boxes(torch.zeros(0, 5, 6, dtype=torch.bool)).shape == (0, 4)


@pytest.mark.parametrize("form", ["instance_map", "masks"])
def test_crop_is_the_source_window_with_filtered_instances(scene: dict, form: str) -> None:
    sample = scene if form == "instance_map" else as_masks(scene)
    full = scene["instance_map"].numpy()
    n = len(scene["labels"])
    whole = np.bincount(full.ravel(), minlength=n + 1)[1:]
    _, h, w = scene["image"].shape
    hulls = torch.from_numpy(tight_boxes(full[None] == np.arange(1, n + 1)[:, None, None]))
    for seed, object_prob in ((0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)):
        out = random_instance_crop(sample, 128, object_prob, generator=torch.Generator().manual_seed(seed))
        # the same draws give the window
        x0, y0, cw, ch = crop_window(
            hulls, scene["difficult"], 128, h, w, object_prob, torch.Generator().manual_seed(seed)
        )
        assert (cw, ch) == (128, 128)
        assert torch.equal(out["image"], scene["image"][:, y0 : y0 + 128, x0 : x0 + 128])
        served = finalize_instances(out, min_area=16, min_visibility=0.5)
        window = full[y0 : y0 + 128, x0 : x0 + 128]
        left = np.bincount(window.ravel(), minlength=n + 1)[1:]
        keep = (left > 0) & ((left >= 16) | (left >= 0.5 * whole))
        expected = window[None] == (np.flatnonzero(keep) + 1)[:, None, None]
        assert served["masks"].dtype == torch.uint8 and np.array_equal(served["masks"].numpy() > 0, expected)
        assert torch.equal(served["boxes"], torch.from_numpy(tight_boxes(expected)))
        assert torch.equal(served["labels"], scene["labels"][torch.from_numpy(keep)])
        if object_prob == 1.0:
            assert (left[keep] == whole[keep]).any()  # the chosen instance is whole


def test_rescaled_crops_keep_masks_and_boxes_consistent(scene: dict) -> None:
    t = InstanceTrainTransform(128, object_prob=1.0, scale_range=(0.5, 2.0), min_area=16)
    sizes = set()
    for seed in range(4):
        torch.manual_seed(seed)
        a = t(scene)
        torch.manual_seed(seed)
        b = t(as_masks(scene))
        assert all(torch.equal(a[k], b[k]) for k in ("image", "boxes", "labels", "masks"))  # both forms agree
        assert list(a) == list(INSTANCE_BATCH_KEYS) and a["image"].shape == (3, 128, 128)
        masks = a["masks"].numpy() > 0
        assert masks.shape == (len(a["labels"]), 128, 128) and masks.any(axis=(1, 2)).all()
        assert torch.equal(a["boxes"], torch.from_numpy(tight_boxes(masks)))
        assert (masks.sum(0) <= 1).all()  # iSAID's instances never overlap, nor do their resized masks
        sizes.add(int(masks.sum()))
    assert len(sizes) > 1  # the draws differ


def test_flips_move_masks_with_the_image(scene: dict) -> None:
    crop = random_instance_crop(scene, 96, 1.0, generator=torch.Generator().manual_seed(5))
    seen = set()
    for seed in range(8):
        out = random_instance_flip(crop, torch.Generator().manual_seed(seed))
        flips = next(
            (hv, vv)
            for hv in (False, True)
            for vv in (False, True)
            if torch.equal(out["image"], _flip(crop["image"], hv, vv))
        )
        assert torch.equal(out["instance_map"], _flip(crop["instance_map"], *flips))
        seen.add(flips)
    assert len(seen) > 1
    for seed in range(4):
        fixed = random_instance_flip(crop, torch.Generator().manual_seed(seed), hflip=False, vflip=False)
        assert torch.equal(fixed["image"], crop["image"]) and torch.equal(fixed["instance_map"], crop["instance_map"])


def _flip(x: torch.Tensor, h: bool, v: bool) -> torch.Tensor:
    if h:
        x = x.flip(-1)
    if v:
        x = x.flip(-2)
    return x


def test_difficult_instances_leave_the_training_targets(scene: dict) -> None:
    sample = as_masks(scene)
    difficult = torch.zeros(len(sample["labels"]), dtype=torch.bool)
    difficult[::3] = True
    sample["difficult"] = difficult
    big = InstanceTrainTransform(4096, hflip=False, vflip=False)  # a crop larger than the image keeps it whole
    out = big(sample)
    assert len(out["labels"]) == int((~difficult).sum()) and not out["difficult"].any()
    assert torch.equal(out["masks"].bool(), sample["masks"][~difficult])
    kept = InstanceTrainTransform(4096, hflip=False, vflip=False, keep_difficult=True)(sample)
    assert torch.equal(kept["difficult"], difficult)
    # the instance-map form drops the same instances
    mapped = dict(scene, difficult=difficult)
    assert torch.equal(big(mapped)["masks"], out["masks"])


def test_transform_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="data.crop_size"):
        InstanceTrainTransform(0)
    with pytest.raises(ValueError, match="data.scale_range"):
        InstanceTrainTransform(64, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="data.scale_range"):
        InstanceTrainTransform(64, scale_range=(0.5,))
    with pytest.raises(ValueError, match="data.min_area"):
        InstanceTrainTransform(64, min_area=-1)


def test_collate_instances() -> None:
    good = {k: k for k in INSTANCE_BATCH_KEYS}
    bad = {"skipped": ("x.png", "zero_byte"), "id": "x"}
    out = collate_instances([bad, good])
    assert out == {**{k: [k] for k in INSTANCE_BATCH_KEYS}, "skipped": [("x.png", "zero_byte")]}
    empty = collate_instances([bad])
    assert empty == {**dict.fromkeys(INSTANCE_BATCH_KEYS, []), "skipped": [("x.png", "zero_byte")]}
