import math

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.segmentation.boundaries import erode_boundaries
from rsfm.metrics.isprs import ISPRS_CLASSES, ISPRS_SCORED_CLASSES, isprs_scores

IGNORE = 255

# rows = true, columns = predicted; ISPRS order imp, building, low_veg, tree, car, clutter
CONFMAT = [
    [50, 5, 0, 0, 0, 5],
    [5, 40, 0, 0, 0, 0],
    [0, 0, 30, 10, 0, 0],
    [0, 0, 10, 30, 0, 0],
    [0, 0, 0, 0, 8, 2],
    [4, 0, 0, 0, 1, 10],
]


def _close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


# --------------------------------------------------------------------------- isprs_scores


def test_scores_hand_computed():
    s = isprs_scores(torch.tensor(CONFMAT))
    # TP = 50, 40, 30, 30, 8; FN = 10, 5, 10, 10, 2 (imp→clutter and car→clutter are misses);
    # FP over the five true rows = 5, 5, 10, 10, 0 (the clutter row is left out)
    _close(s["F1"], dict(zip(ISPRS_SCORED_CLASSES, [10000 / 115, 8000 / 90, 75.0, 75.0, 1600 / 18], strict=True)))
    _close(s["IoU"], dict(zip(ISPRS_SCORED_CLASSES, [5000 / 65, 80.0, 60.0, 60.0, 80.0], strict=True)))
    _close(s["precision"], dict(zip(ISPRS_SCORED_CLASSES, [5000 / 55, 4000 / 45, 75.0, 75.0, 100.0], strict=True)))
    _close(s["recall"], dict(zip(ISPRS_SCORED_CLASSES, [5000 / 60, 4000 / 45, 75.0, 75.0, 80.0], strict=True)))
    assert s["mF1"] == pytest.approx((10000 / 115 + 8000 / 90 + 75 + 75 + 1600 / 18) / 5)
    assert s["mIoU"] == pytest.approx((5000 / 65 + 80 + 60 + 60 + 80) / 5)
    assert s["OA"] == pytest.approx(100 * 158 / 195)
    assert s["pixels"] == 195
    assert s["classes"] == list(ISPRS_SCORED_CLASSES) and "clutter" not in s["F1"]
    for v in [s["mF1"], s["mIoU"], s["OA"], *s["F1"].values(), *s["IoU"].values()]:
        assert type(v) is float and 0 <= v <= 100


def test_scores_with_clutter_rows():
    s = isprs_scores(CONFMAT, include_clutter_rows=True)
    # clutter truth predicted as imp (4) and car (1) become false positives; OA over all 210 pixels
    assert s["F1"]["impervious_surfaces"] == pytest.approx(10000 / 119)
    assert s["IoU"]["impervious_surfaces"] == pytest.approx(5000 / 69)
    assert s["F1"]["car"] == pytest.approx(1600 / 19)
    assert s["IoU"]["car"] == pytest.approx(800 / 11)
    assert s["F1"]["building"] == pytest.approx(8000 / 90)
    assert s["OA"] == pytest.approx(100 * 168 / 210)
    assert s["pixels"] == 210


def test_scores_accept_tensor_array_and_lists():
    a = isprs_scores(torch.tensor(CONFMAT))
    b = isprs_scores(np.array(CONFMAT, dtype=np.float32))
    c = isprs_scores(CONFMAT)
    assert a == b == c


def test_scores_undefined_classes_are_none():
    cm = np.zeros((6, 6), dtype=np.int64)
    cm[0, 0], cm[1, 1], cm[1, 0] = 6, 3, 1
    s = isprs_scores(cm)
    assert s["F1"]["tree"] is None and s["IoU"]["car"] is None and s["precision"]["low_vegetation"] is None
    assert s["F1"]["impervious_surfaces"] == pytest.approx(100 * 12 / 13)
    assert s["mF1"] == pytest.approx((100 * 12 / 13 + 100 * 6 / 7) / 2)  # mean over the defined classes
    assert s["OA"] == pytest.approx(90.0)
    empty = isprs_scores(np.zeros((6, 6)))
    assert empty["mF1"] is None and empty["mIoU"] is None and empty["OA"] is None and empty["pixels"] == 0
    only_clutter = np.zeros((6, 6))
    only_clutter[5, 5] = 10
    assert isprs_scores(only_clutter)["OA"] is None
    assert isprs_scores(only_clutter, include_clutter_rows=True)["OA"] == 100.0


@pytest.mark.parametrize("bad", [np.ones((5, 5)), np.ones((6,)), -np.ones((6, 6)), np.full((6, 6), math.nan)])
def test_scores_reject_bad_matrices(bad):
    with pytest.raises(ValueError, match="confmat"):
        isprs_scores(bad)


def test_scores_match_pixel_definitions(datasets):
    # real LoveDA labels 1–6 as six "ISPRS" classes, a shifted copy as the prediction
    raw = np.asarray(Image.open(datasets / "loveda" / "masks_png" / "1.png"))[:256, :256].astype(np.int64)
    truth = np.clip(raw - 1, 0, 5)
    pred = np.roll(truth, (7, -5), axis=(0, 1))
    cm = np.bincount(truth.ravel() * 6 + pred.ravel(), minlength=36).reshape(6, 6)
    s = isprs_scores(cm)
    keep = truth != 5  # true clutter left out
    t, p = truth[keep], pred[keep]
    for k, name in enumerate(ISPRS_SCORED_CLASSES):
        tp, fp, fn = np.sum((t == k) & (p == k)), np.sum((t != k) & (p == k)), np.sum((t == k) & (p != k))
        if tp + fp + fn:
            assert s["F1"][name] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
            assert s["IoU"][name] == pytest.approx(100 * tp / (tp + fp + fn))
    assert s["OA"] == pytest.approx(100 * np.mean(t == p))
    assert ISPRS_CLASSES[5] == "clutter"


# --------------------------------------------------------------------------- erode_boundaries


def _reference_erosion(labels: np.ndarray, radius: int, ignore: int = IGNORE) -> np.ndarray:
    """scikit-image: each class's region (ignore counted as inside) eroded by disk(radius), the rim set to ignore."""
    from skimage.morphology import disk, erosion

    out = labels.copy()
    for k in np.unique(labels):
        if k == ignore:
            continue
        inside = ((labels == k) | (labels == ignore)).astype(np.uint8)
        kept = erosion(inside, disk(radius), mode="ignore").astype(bool)
        out[(labels == k) & ~kept] = ignore
    return out


@pytest.fixture(scope="module")
def loveda_mask(datasets):
    """Real LoveDA labels (256 × 256 crop), no-data 0 → ignore, plus an ignore block."""
    raw = np.asarray(Image.open(datasets / "loveda" / "masks_png" / "1.png"))[512:768, 256:512].astype(np.int64)
    labels = np.where(raw == 0, IGNORE, raw - 1)
    labels[100:140, 20:60] = IGNORE
    assert len(np.unique(labels)) >= 4
    return labels


@pytest.fixture(scope="module")
def dubai_mask(datasets):
    """Real Dubai labels (crop), colour-coded classes; black (no label) and unknown colours → ignore."""
    colours = ["#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#9B9B9B"]
    rgb = np.asarray(Image.open(datasets / "dubai_seg" / "Tile 1" / "masks" / "image_part_001.png").convert("RGB"))
    rgb = rgb[:256, :256].astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    labels = np.full(packed.shape, IGNORE, dtype=np.int64)
    for k, colour in enumerate(colours):
        labels[packed == int(colour[1:], 16)] = k
    assert len(np.unique(labels)) >= 3
    return labels


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_erosion_matches_skimage_on_real_masks(loveda_mask, dubai_mask, radius):
    for labels in (loveda_mask, dubai_mask):
        got = erode_boundaries(torch.from_numpy(labels), radius)
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), _reference_erosion(labels, radius))


def test_erosion_removes_a_band_at_real_boundaries(loveda_mask):
    out = erode_boundaries(torch.from_numpy(loveda_mask))
    new_ignore = (out.numpy() == IGNORE) & (loveda_mask != IGNORE)
    assert 0 < new_ignore.mean() < 0.5
    kept = out.numpy() != IGNORE
    assert np.array_equal(out.numpy()[kept], loveda_mask[kept])  # surviving labels unchanged


def test_radius_zero_is_identity(loveda_mask):
    labels = torch.from_numpy(loveda_mask)
    out = erode_boundaries(labels, radius=0)
    assert torch.equal(out, labels) and out is not labels


def test_single_class_has_no_boundary():
    labels = torch.full((40, 50), 2, dtype=torch.int64)
    assert torch.equal(erode_boundaries(labels), labels)
    labels[10:20, 10:30] = IGNORE  # a no-data hole is not a class boundary
    assert torch.equal(erode_boundaries(labels, radius=5), labels)


def test_straight_boundary_band():
    labels = torch.zeros(12, 20, dtype=torch.int64)
    labels[:, 10:] = 1
    out = erode_boundaries(labels, radius=3)
    ignored = (out == IGNORE).all(0)
    assert ignored.nonzero().flatten().tolist() == [7, 8, 9, 10, 11, 12]
    assert not (out[:, :7] != 0).any() and not (out[:, 13:] != 1).any()


def test_disc_is_euclidean_radius_3():
    from skimage.morphology import disk

    labels = torch.zeros(15, 15, dtype=torch.uint8)
    labels[7, 7] = 1
    out = erode_boundaries(labels, radius=3)
    assert out.dtype == torch.uint8
    expected = np.zeros((15, 15), dtype=bool)
    expected[4:11, 4:11] = disk(3).astype(bool)  # 7 × 7, 29 pixels
    np.testing.assert_array_equal((out == IGNORE).numpy(), expected)
    assert int((out == IGNORE).sum()) == 29


def test_batched_maps_and_custom_ignore(loveda_mask):
    a = torch.from_numpy(loveda_mask)
    b = a.flip(-1).contiguous()
    out = erode_boundaries(torch.stack([a, b]), radius=2)
    assert torch.equal(out[0], erode_boundaries(a, radius=2)) and torch.equal(out[1], erode_boundaries(b, radius=2))
    # LoveDA's raw masks use 0 for no data
    raw = torch.where(a == IGNORE, 0, a + 1)
    got = erode_boundaries(raw, radius=3, ignore_index=0)
    np.testing.assert_array_equal(got.numpy(), _reference_erosion(raw.numpy(), 3, ignore=0))


def test_erosion_rejects_bad_inputs():
    with pytest.raises(TypeError, match="integer"):
        erode_boundaries(torch.zeros(8, 8))
    with pytest.raises(TypeError, match="integer"):
        erode_boundaries(np.zeros((8, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="radius"):
        erode_boundaries(torch.zeros(8, 8, dtype=torch.int64), radius=-1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        erode_boundaries(torch.zeros(8, dtype=torch.int64))
