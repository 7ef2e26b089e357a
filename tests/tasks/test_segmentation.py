"""Segmentation: UperNet and FCN heads, sliding-window inference, mask prediction of image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.base import DataInfo
from rsfm.models.heads.upernet import UperNet
from rsfm.models.inference import slide_inference, window_starts
from rsfm.tasks.module import DownstreamTask
from rsfm.tasks.predict import predict_files
from rsfm.utils.errors import ConfigError, DataError

CLASSES = ["building", "land", "road", "vegetation", "water", "unlabeled"]
PALETTE = [[60, 16, 152], [132, 41, 246], [110, 193, 228], [254, 221, 58], [226, 169, 41], [155, 155, 155]]


def segmentation_task(crop: int = 32, patch: int = 16, stride: int | None = None, **head) -> DownstreamTask:
    """A random ViT-Tiny + simple pyramid + UperNet (6 Dubai classes) trained on ``crop`` px crops."""
    torch.manual_seed(0)
    info = DataInfo(
        classes=CLASSES, sample_keys=("image", "mask"), palette=PALETTE, ignore_index=255, crop_size=crop
    ).to_dict()
    model = {
        "encoder": {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": crop, "patch_size": patch}},
        "neck": {"class_path": "SimpleFeaturePyramid"},
        "heads": {
            "segmentation": {"class_path": "UperNetHead", "init_args": {"channels": 8, "stride": stride, **head}}
        },
    }
    return DownstreamTask(model=model, optim={"lr": 1e-3}, data=info).eval()


# --------------------------------------------------------------------------- heads


def test_upernet_logits_at_finest_stride() -> None:
    head = UperNet([8, 16, 32, 64], num_classes=5, channels=16)
    feats = [torch.randn(2, c, 64 // s, 48 // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32], strict=True)]
    assert head(feats).shape == (2, 5, 16, 12)
    head.eval()  # batch of one: BatchNorm of the 1×1 pooled branch needs eval mode
    assert head([f[:1] for f in feats]).shape == (1, 5, 16, 12)
    with pytest.raises(ValueError, match="4 feature maps"):
        head(feats[:3])
    with pytest.raises(ValueError, match="at least 2"):
        UperNet([8], num_classes=5)


def test_heads_predict_at_the_input_resolution_and_check_their_options() -> None:
    task = segmentation_task()
    batch = {"image": torch.rand(2, 3, 64, 96), "mask": torch.zeros(2, 64, 96, dtype=torch.int64)}
    head = task.heads["segmentation"]
    with torch.no_grad():
        logits = head(task.model.features(batch), batch)
    assert logits.shape == (2, 6, 64, 96)
    assert head.window == 32 and head.step == 21  # default stride: 2/3 of the training crop
    # every pixel ignored: a zero loss that still reaches every parameter of the head
    batch["mask"][:] = 255
    loss = head.loss(task.model.features(batch), batch)["ce"]
    assert float(loss) == 0.0 and loss.requires_grad
    with pytest.raises(ConfigError, match="stride must be in"):
        segmentation_task(stride=64)
    bad_fcn = {"class_path": "FCNHead", "init_args": {"in_index": 4}}
    info = DataInfo(classes=CLASSES, sample_keys=("image", "mask"), crop_size=32).to_dict()
    with pytest.raises(ConfigError, match="in_index 4"):
        DownstreamTask(
            model={
                "encoder": {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 32}},
                "neck": {"class_path": "SimpleFeaturePyramid"},
                "heads": {"s": {"class_path": "UperNetHead"}, "aux": bad_fcn},
            },
            optim={"lr": 1e-3},
            data=info,
        )


# --------------------------------------------------------------------------- sliding windows


def test_window_starts_cover_the_axis() -> None:
    assert window_starts(64, 64, 32) == [0]
    assert window_starts(20, 64, 32) == [0]
    assert window_starts(100, 32, 20) == [0, 20, 40, 60, 68]
    with pytest.raises(ValueError):
        window_starts(100, 32, 40)


def test_slide_equals_direct_for_a_translation_equivariant_model() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        for h, w in [(70, 100), (32, 32), (20, 25), (33, 90)]:
            x = torch.randn(2, 3, h, w)
            out = slide_inference(conv, x, 4, crop=32, stride=20, batch_windows=3)
            assert out.shape == (2, 4, h, w)
            torch.testing.assert_close(out, conv(x))
        with pytest.raises(ValueError, match="expected K=5"):
            slide_inference(conv, torch.randn(1, 3, 32, 32), 5, crop=32, stride=32)


def test_sliding_windows_match_the_real_model_where_windows_fit() -> None:
    # ViT + UperNet is not translation-equivariant (global attention, pooling), so tiled and
    # direct logits agree exactly where one window covers the whole image or a pixel, and are
    # the mean of the covering windows elsewhere (the overlap blending).
    task = segmentation_task(stride=16)
    head = task.heads["segmentation"]
    x = torch.rand(1, 3, 32, 48)

    def direct(image: torch.Tensor) -> torch.Tensor:
        return head(task.model.features({"image": image}, head))

    with torch.no_grad():
        torch.testing.assert_close(head.predict_logits(task.model, x[..., :32]), direct(x[..., :32]))
        tiled = head.predict_logits(task.model, x)
        left, right = direct(x[..., :32]), direct(x[..., 16:])
        labels = head.predict(task.model, {"image": x})
    torch.testing.assert_close(tiled[..., :16], left[..., :16])
    torch.testing.assert_close(tiled[..., 32:], right[..., 16:])
    torch.testing.assert_close(tiled[..., 16:32], (left[..., 16:] + right[..., :16]) / 2)
    assert torch.equal(labels, tiled.argmax(1))


# --------------------------------------------------------------------------- image files


def test_predict_plain_image_writes_palette_png(datasets: Path, tmp_path: Path) -> None:
    task = segmentation_task(crop=128, patch=32, stride=128)
    image = datasets / "dubai_seg" / "Tile 2" / "images" / "image_part_001.jpg"
    out = predict_files(task, [image], tmp_path)
    assert out == tmp_path / "image_part_001_mask.png"
    img = Image.open(out)
    assert img.mode == "P" and img.size == (509, 544)
    assert np.asarray(img).max() < 6
    assert img.getpalette()[:6] == [60, 16, 152, 132, 41, 246]  # the class colours


def test_predict_refuses_bad_inputs(datasets: Path, tmp_path: Path) -> None:
    task = segmentation_task()
    scene = datasets / "scenes" / "RGB.byte.tif"
    with pytest.raises(ConfigError, match="georeferenced"):
        predict_files(task, [scene], tmp_path / "mask.png")
    with pytest.raises(ConfigError, match="must end in"):
        predict_files(task, [scene], tmp_path / "mask.jpg")
    with pytest.raises(ConfigError, match="takes 1 image"):
        predict_files(task, [scene, scene], tmp_path / "mask.tif")
    with pytest.raises(ConfigError, match="not a head"):
        predict_files(task, [scene], tmp_path / "mask.tif", head="auxiliary")
    with pytest.raises(DataError, match="not found"):
        predict_files(task, [tmp_path / "none.tif"], tmp_path / "mask.tif")
    assert not list(tmp_path.iterdir())
