"""Sliding windows and tiles for whole-image inference."""

import pytest
import torch

from rsfm.models.inference import merge_detections, slide_inference, tile_windows, window_starts


@pytest.fixture(scope="module")
def scene(datasets) -> torch.Tensor:
    """A real LoveDA crop ``(1, 3, 150, 200)`` in [0, 1]."""
    from rsfm.data.io import read_image

    return (read_image(datasets / "loveda" / "images_png" / "2.png").float() / 255)[None, :, 100:250, 40:240]


def test_window_starts() -> None:
    assert window_starts(100, 64, 32) == [0, 32, 36]  # the last window ends at the border
    assert window_starts(64, 64, 32) == [0]
    assert window_starts(40, 64, 32) == [0]  # smaller than the window: one (padded) window
    assert window_starts(128, 64, 64) == [0, 64]
    for bad in ((64, 0), (64, 65), (0, 1)):
        with pytest.raises(ValueError, match="stride"):
            window_starts(100, *bad)


def test_slide_inference_of_a_pointwise_model_equals_the_model(scene: torch.Tensor) -> None:
    # a per-pixel model sees the same pixel values whatever the window: averaging changes nothing
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1)
    with torch.no_grad():
        whole = conv(scene)
        calls = []

        def fn(windows):
            calls.append(windows.shape[0])
            return conv(windows)

        out = slide_inference(fn, scene, 5, crop=64, stride=48, batch_windows=4)
        torch.testing.assert_close(out, whole)
        assert sum(calls) == len(window_starts(150, 64, 48)) * len(window_starts(200, 64, 48)) == 3 * 4
        assert max(calls) == 4
        # an image smaller than the window is zero-padded, and the padding cropped off
        small = slide_inference(conv, scene[..., :40, :50], 5, crop=64, stride=64)
        torch.testing.assert_close(small, whole[..., :40, :50])


def test_slide_inference_averages_overlapping_windows(scene: torch.Tensor) -> None:
    # a model that answers 1 everywhere in the window: the average is 1; the count is right
    ones = slide_inference(lambda w: torch.ones(w.shape[0], 1, 64, 64), scene, 1, crop=64, stride=40)
    assert torch.equal(ones, torch.ones(1, 1, 150, 200))

    # a model that answers the window's position: overlapping pixels get the mean of the windows
    def position(w):
        return torch.full((w.shape[0], 1, 64, 64), float(w.sum()))

    out = slide_inference(position, scene[..., :64, :100], 1, crop=64, stride=36, batch_windows=1)
    a, b = float(scene[..., :64, :64].sum()), float(scene[..., :64, 36:100].sum())
    torch.testing.assert_close(out[0, 0, 0, [0, 50, 99]], torch.tensor([a, (a + b) / 2, b]))
    with pytest.raises(ValueError, match="expected K=2"):
        slide_inference(lambda w: torch.zeros(w.shape[0], 3, 64, 64), scene, 2, crop=64, stride=64)
    with pytest.raises(ValueError, match="B, C, H, W"):
        slide_inference(lambda w: w, scene[0], 3, crop=64, stride=64)


def test_small_images_are_padded_with_the_given_colour(scene: torch.Tensor) -> None:
    # the windows the model sees: the image at the top left, the fill (e.g. the data's mean) elsewhere
    seen = []

    def record(w):
        seen.append(w.clone())
        return torch.zeros(w.shape[0], 1, 64, 64)

    mean = torch.tensor([0.3, 0.4, 0.5])
    slide_inference(record, scene[..., :40, :50], 1, crop=64, stride=64, pad_value=mean)
    (window,) = seen
    torch.testing.assert_close(window[..., :40, :50], scene[..., :40, :50])
    assert torch.equal(window[0, :, 40:, :], mean.view(3, 1, 1).expand(3, 24, 64))
    assert torch.equal(window[0, :, :, 50:], mean.view(3, 1, 1).expand(3, 64, 14))


def test_tile_windows_cover_with_overlap() -> None:
    wins = tile_windows(400, 1000, tile=192, overlap=64)
    xs = sorted({(x0, x1) for _, x0, _, x1 in wins})
    assert xs[0][0] == 0 and xs[-1][1] == 1000
    assert all(x1 - x0 == 192 for x0, x1 in xs)
    assert all(a[1] - b[0] >= 64 for a, b in zip(xs, xs[1:], strict=False))  # neighbours overlap
    assert len(wins) == len(xs) * len({(y0, y1) for y0, _, y1, _ in wins})
    assert tile_windows(100, 150, 192, 64) == [(0, 0, 100, 150)]  # a small image is one tile
    assert tile_windows(512, 512, 256, 128) == [(y, x, y + 256, x + 256) for y in (0, 128, 256) for x in (0, 128, 256)]
    with pytest.raises(ValueError):
        tile_windows(100, 100, 64, 64)


def test_merge_shifts_boxes_and_suppresses_duplicates_per_class() -> None:
    dets = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.8]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
    ]
    out = merge_detections(dets, [(100, 200), (0, 0)], iou_threshold=0.5)
    torch.testing.assert_close(out["boxes"], torch.tensor([[5.0, 5, 15, 15], [200, 100, 210, 110]]))
    assert merge_detections(dets, [(0, 0), (0, 0)], 0.1, max_detections=1)["scores"].tolist() == [pytest.approx(0.9)]
    # the same object seen by two tiles: kept once; another class at the same place: kept
    same = [
        {"boxes": torch.tensor([[10.0, 10, 30, 30]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[0.0, 0, 20, 20]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[0.0, 0, 20, 20]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])},
    ]
    out = merge_detections(same, [(0, 0), (10, 10), (10, 10)], 0.5)
    assert out["labels"].tolist() == [0, 1] and out["scores"].tolist() == pytest.approx([0.7, 0.5])
    empty = merge_detections([], [])
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
