"""HOG on real AID images, checked against skimage.feature.hog."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.feature import hog as skimage_hog

from rsfm.methods.hog import gradient_energy, hog_cell_histograms, hog_features, hog_score

AID = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "aid"
pytestmark = pytest.mark.skipif(not AID.is_dir(), reason="shared datasets not available")


def _gray(path: Path, size: int = 144) -> np.ndarray:
    img = Image.open(path).convert("L").crop((0, 0, size, size))
    return np.asarray(img, dtype=np.float64) / 255.0


def _rgb_batch(n: int = 4, size: int = 144) -> torch.Tensor:
    paths = sorted((AID / "Airport").glob("*.jpg"))[:n]
    arrs = [np.asarray(Image.open(p).convert("RGB").crop((0, 0, size, size)), dtype=np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("name", ["Airport/airport_1.jpg", "Forest/forest_1.jpg", "Parking/parking_1.jpg"])
def test_cell_histograms_match_skimage(name: str) -> None:
    path = next((AID / name.split("/")[0]).glob("*.jpg")) if not (AID / name).exists() else AID / name
    img = _gray(path)
    ref = skimage_hog(
        img, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1), block_norm="L2", feature_vector=False
    )  # (rows, cols, 1, 1, 9): each cell's histogram, L2-normalised on its own
    ref = ref[:, :, 0, 0, :]
    x = torch.from_numpy(img).float()[None, None]
    hist = hog_cell_histograms(x, cell_size=8, nbins=9, kernel="central")[0, 0]  # (9, rows, cols)
    ours = hist.permute(1, 2, 0).double()
    ours = ours / torch.sqrt((ours**2).sum(-1, keepdim=True) + 1e-10)
    assert ours.shape == ref.shape
    diff = (ours.numpy() - ref).__abs__()
    # identical up to float32 rounding at bin edges
    assert np.median(diff) < 1e-5
    assert (diff.max(axis=-1) < 1e-3).mean() > 0.99


def test_unnormalised_histograms_are_skimage_cell_means() -> None:
    img = _gray(AID / "Forest" / sorted(p.name for p in (AID / "Forest").glob("*.jpg"))[0])
    x = torch.from_numpy(img).float()[None, None]
    hist = hog_cell_histograms(x, cell_size=8, kernel="central")[0, 0].permute(1, 2, 0).double().numpy()
    # skimage's 'L1' block norm of a 1x1 block divides by the sum: compare shapes of the histograms
    ref = skimage_hog(
        img, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1), block_norm="L1", feature_vector=False
    )[:, :, 0, 0, :]
    ours = hist / (hist.sum(-1, keepdims=True) + 1e-5)
    assert np.median(np.abs(ours - ref)) < 1e-4


def test_hog_features_layout_and_normalisation() -> None:
    x = _rgb_batch(2, 144)
    f = hog_features(x, patch_size=16)
    assert f.shape == (2, 81, 108) and f.dtype == torch.float32
    cells = f.view(2, 81, 4, 3, 9)  # (cells per patch, channels, bins)
    norms = cells.norm(dim=-1)
    assert torch.allclose(norms[norms > 1e-3], torch.ones_like(norms[norms > 1e-3]), atol=1e-4)


def test_energy_equals_sum_of_unnormalised_histograms() -> None:
    x = _rgb_batch(3, 144)
    hist = hog_cell_histograms(x, cell_size=8, window=16)  # (B, C, 9, 18, 18)
    per_cell = hist.sum(dim=(1, 2))  # (B, 18, 18)
    per_patch = per_cell.view(3, 9, 2, 9, 2).sum(dim=(2, 4)).flatten(1)
    assert torch.allclose(gradient_energy(x, 16), per_patch, rtol=1e-4)


def test_energy_ranks_textured_patches_above_flat_ones() -> None:
    x = _rgb_batch(1, 144)
    x[:, :, :16, :16] = 0.5  # a flat patch
    s = hog_score(x, 16, "energy")
    assert s[0, 0] < s[0].median()


def test_official_score_is_zero() -> None:
    # the released code's score (see rsfm.methods.hog.hog_score) is the mean of a standardised vector, i.e. 0.
    s = hog_score(_rgb_batch(2, 144), 16, "official")
    assert s.abs().max() < 1e-5


def test_unknown_score_raises() -> None:
    with pytest.raises(ValueError, match="hog_score"):
        hog_score(torch.zeros(1, 3, 16, 16), 16, "bogus")
