import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from torchvision.transforms import v2

from rsfm.data.io import RasterRule, UnsupportedImageError, read_image
from rsfm.data.skips import SkipReport
from rsfm.data.stats import compute_mean_std, format_stats
from rsfm.data.transforms import eval_transform, finetune_transform, moco_v1_transform, pretrain_transform


@pytest.fixture
def image(datasets: Path) -> torch.Tensor:
    return read_image(datasets / "aid" / "Airport" / "airport_10.jpg")


@pytest.mark.parametrize("build", [pretrain_transform, finetune_transform, eval_transform, moco_v1_transform])
def test_shapes_dtype_and_unit_range(image: torch.Tensor, build) -> None:
    torch.manual_seed(0)  # the random crop must not depend on the tests that ran before
    out = build(64)(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    # no normalisation any more (it moved into the models): values stay in [0, 1]
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.max() > 0.5


def test_multiband_input_keeps_its_bands(image: torch.Tensor) -> None:
    four = torch.cat([image, image[:1]])
    torch.manual_seed(0)
    for build in (pretrain_transform, finetune_transform, eval_transform):
        out = build(32)(four)
        assert out.shape == (4, 32, 32) and 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(eval_transform(150)(four)[3], eval_transform(150)(four)[0])


def test_eval_is_deterministic_and_exact(image: torch.Tensor) -> None:
    t = eval_transform(96, crop_pct=0.875)
    assert torch.equal(t(image), t(image))
    identity = eval_transform(150)(image)  # a 150 px image at 150 px: only the scaling to [0, 1]
    assert torch.allclose(identity, image.float() / 255, atol=1e-6)
    # crop_pct < 1 resizes to 150 / 0.75 = 200 first, then keeps the central 150
    cropped = eval_transform(150, crop_pct=0.75)(image)
    assert cropped.shape == (3, 150, 150) and not torch.allclose(cropped, identity)


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
    no_vflip = [type(s) for s in finetune_transform(64, vflip=False).transforms]
    assert v2.RandomVerticalFlip not in no_vflip and v2.RandomHorizontalFlip in no_vflip
    moco = [type(s) for s in moco_v1_transform(64).transforms]
    assert v2.RandomGrayscale in moco and v2.ColorJitter in moco


def test_validation() -> None:
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(64, crop_pct=0.0)
    with pytest.raises(ValueError, match="scale"):
        finetune_transform(64, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        pretrain_transform(64, scale=(0.8, 0.5))
    with pytest.raises(ValueError, match="scale"):
        moco_v1_transform(64, scale=(0.2, 1.5))


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


def test_compute_mean_std_of_selected_bands(tmp_path: Path, datasets: Path) -> None:
    good = sorted((datasets / "aid" / "Desert").glob("*.jpg"))[:3]
    for p in good:
        rgb = np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)
        four = np.concatenate([rgb, rgb[:1]])  # R, G, B and R again as a 4th band
        profile = {"driver": "GTiff", "height": 150, "width": 150, "count": 4, "dtype": "uint8", "crs": "EPSG:32618"}
        profile["transform"] = rasterio.transform.Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 4_000_000.0)
        with rasterio.open(tmp_path / f"{p.stem}.tif", "w", **profile) as dst:
            dst.write(four)
    expected_mean, expected_std = numpy_mean_std(good)
    mean, std = compute_mean_std(tmp_path, raster=RasterRule(bands=(0, 1, 2, 3)))
    assert len(mean) == len(std) == 4
    np.testing.assert_allclose(mean, [*expected_mean, expected_mean[0]], atol=1e-9)
    np.testing.assert_allclose(std, [*expected_std, expected_std[0]], atol=1e-9)
    nir_mean, nir_std = compute_mean_std(tmp_path, raster=RasterRule(bands=(3,)))
    np.testing.assert_allclose([*nir_mean, *nir_std], [expected_mean[0], expected_std[0]], atol=1e-9)
    shutil.copy(good[0], tmp_path / "rgb.jpg")  # 3 bands: band 3 missing stops the run, as in training
    with pytest.raises(UnsupportedImageError, match=r"rgb\.jpg"):
        compute_mean_std(tmp_path, raster=RasterRule(bands=(0, 1, 2, 3)))


def test_format_stats() -> None:
    text = format_stats((0.39771, 0.40931, 0.368911), (0.2, 0.18264, 0.1813))
    assert text == "mean: [0.3977, 0.4093, 0.3689]\nstd: [0.2000, 0.1826, 0.1813]"


def test_compute_mean_std_leaves_nodata_out(tmp_path: Path, datasets: Path) -> None:
    from rsfm.data.io import read_image_masked

    scene = datasets / "scenes" / "RGB.byte.tif"  # a real Landsat scene, about a third nodata
    shutil.copy(scene, tmp_path / "scene.tif")
    with rasterio.open(scene) as src:
        data = src.read(masked=True)
    assert data.mask.mean() > 0.3
    image, nodata = read_image_masked(tmp_path / "scene.tif")
    assert nodata is not None and np.array_equal(nodata, np.ma.getmaskarray(data))
    assert (image.numpy()[nodata] == 0).all()
    mean, std = compute_mean_std(tmp_path)
    np.testing.assert_allclose(mean, [band.compressed().mean() / 255 for band in data], rtol=1e-9)
    np.testing.assert_allclose(std, [band.compressed().std() / 255 for band in data], rtol=1e-6)
    # a JPEG has no nodata: its zeros count
    assert read_image_masked(datasets / "aid" / "Airport" / "airport_10.jpg")[1] is None
