import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from rsfm.data.skips import SkipReport
from rsfm.data.io import read_image
from rsfm.data.stats import compute_mean_std, format_stats
from rsfm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)


@pytest.fixture
def image(datasets: Path) -> torch.Tensor:
    return read_image(datasets / "aid" / "Airport" / "airport_10.jpg")


@pytest.mark.parametrize("build", [pretrain_transform, finetune_transform, eval_transform])
def test_shapes_and_dtype(image: torch.Tensor, build) -> None:
    torch.manual_seed(0)  # the random crop must not depend on the tests that ran before
    out = build(64, IMAGENET_MEAN, IMAGENET_STD)(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    # normalised: roughly zero-centred, well outside [0, 1]
    assert out.min() < 0 < out.max()
    unit = build(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(image)
    assert 0.0 <= unit.min() and unit.max() <= 1.0


def test_eval_is_deterministic_and_exact(image: torch.Tensor) -> None:
    t = eval_transform(96, crop_pct=0.875)
    assert torch.equal(t(image), t(image))
    identity = eval_transform(150, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(image)
    assert torch.allclose(identity, image.float() / 255, atol=1e-6)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    normalised = eval_transform(150)(image)
    assert torch.allclose(normalised, (image.float() / 255 - mean) / std, atol=1e-5)


def test_random_transforms_vary(image: torch.Tensor) -> None:
    t = pretrain_transform(64)
    torch.manual_seed(0)
    a = t(image)
    torch.manual_seed(0)
    assert torch.equal(t(image), a)
    assert not torch.equal(t(image), a)
    flips = [type(s) for s in finetune_transform(64).transforms]
    assert v2.RandomHorizontalFlip in flips and v2.RandomVerticalFlip in flips
    no_flip = pretrain_transform(64, hflip=False).transforms
    assert v2.RandomHorizontalFlip not in [type(s) for s in no_flip]


def test_validation() -> None:
    with pytest.raises(ValueError, match="mean"):
        pretrain_transform(64, (0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(64, crop_pct=0.0)
    with pytest.raises(ValueError, match="scale"):
        finetune_transform(64, scale=(0.0, 1.0))


def numpy_mean_std(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    pixels = (
        np.concatenate([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) for p in paths])
        / 255.0
    )
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_compute_mean_std(datasets: Path) -> None:
    folder = datasets / "aid" / "Pond"
    mean, std = compute_mean_std(folder)
    expected_mean, expected_std = numpy_mean_std(sorted(folder.glob("*.jpg")))
    assert len(mean) == 3 and len(std) == 3
    np.testing.assert_allclose(mean, expected_mean, atol=1e-9)
    np.testing.assert_allclose(std, expected_std, atol=1e-9)
    subset = compute_mean_std(folder, max_images=20, seed=1)
    assert subset == compute_mean_std(folder, max_images=20, seed=1)
    assert subset != compute_mean_std(folder, max_images=20, seed=2)


def test_compute_mean_std_skips_bad_files(tmp_path: Path, datasets: Path) -> None:
    good = sorted((datasets / "aid" / "Desert").glob("*.jpg"))[:3]
    for p in good:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "half.jpg").write_bytes(good[0].read_bytes()[:500])
    (tmp_path / "notes.txt").write_text("notes")
    report = SkipReport()
    mean, std = compute_mean_std(tmp_path, report=report)
    expected_mean, expected_std = numpy_mean_std(good)
    np.testing.assert_allclose(mean, expected_mean, atol=1e-9)
    np.testing.assert_allclose(std, expected_std, atol=1e-9)
    assert report.counts() == {"not_an_image": 1, "truncated": 1}


def test_format_stats() -> None:
    text = format_stats((0.39771, 0.40931, 0.368911), (0.2, 0.18264, 0.1813))
    assert text == "mean: [0.3977, 0.4093, 0.3689]\nstd: [0.2000, 0.1826, 0.1813]"
