"""CDDDataModule and OSCDDataModule on CDD and OSCD layouts built from real LEVIR-CD pairs (test_change_layouts)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import CITIES, build_cdd, build_oscd
from PIL import Image

from rsfm.data.change import OSCD_BANDS, CDDDataModule, OSCDDataModule
from rsfm.data.change.oscd import OSCD_IMAGES_FOLDER, read_multiband
from rsfm.utils.errors import DataError

DN_SCALE = 40  # the builder's digital numbers: uint8 × 40


@pytest.fixture(scope="module")
def levir(datasets: Path) -> Path:
    return datasets / "levir_cd"


@pytest.fixture(scope="module")
def cdd(levir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cdd(levir, tmp_path_factory.mktemp("cdd") / "subset")


@pytest.fixture(scope="module")
def oscd(levir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_oscd(levir, tmp_path_factory.mktemp("oscd") / "OSCD")


# --------------------------------------------------------------------------------------------- CDD


def test_cdd_splits_and_jpeg_masks(cdd: Path, levir: Path) -> None:
    dm = CDDDataModule(str(cdd), crop_size=64, batch_size=3)
    names = sorted(p.stem for p in (levir / "A").iterdir())
    assert {k: [r.name for r in v] for k, v in dm.records().items()} == {
        "train": names[:3],
        "val": names[3:5],
        "test": names[5:7],
    }
    dm.setup()
    val = dm.datasets["val"]
    for i, record in enumerate(val.records):
        truth = np.asarray(Image.open(levir / "label" / f"{record.name}.png")) == 255
        mask = val[i]["mask"].numpy().astype(bool)
        assert (mask == truth).mean() > 0.999  # JPEG noise thresholded away
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_a"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 64, 64)
    assert next(iter(dm.test_dataloader()))["image_b"].shape == (1, 3, 256, 256)


def test_cdd_optional_validation_and_named_errors(cdd: Path, tmp_path: Path) -> None:
    assert CDDDataModule(str(cdd), val_split=None).records()["val"] == []
    with pytest.raises(DataError, match="data.test_split: CDD split must be one of"):
        CDDDataModule(str(cdd), test_split="testing").records()
    with pytest.raises(DataError, match="data.root: folder not found"):
        CDDDataModule(str(tmp_path / "nowhere"))
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="data.train_split: CDD folder .*A not found"):
        CDDDataModule(str(tmp_path / "half")).records()


# -------------------------------------------------------------------------------------------- OSCD


def test_oscd_thirteen_bands_scaled_to_reflectance(oscd: Path, levir: Path) -> None:
    dm = OSCDDataModule(str(oscd), crop_size=64, batch_size=2)
    assert {k: [r.name for r in v] for k, v in dm.records().items()} == {
        "train": ["alpha", "bravo"],
        "val": [],
        "test": ["charlie"],
    }
    dm.setup()
    s = dm.datasets["test"][0]
    assert s["image_a"].shape == s["image_b"].shape == (13, 256, 256) and s["image_a"].dtype == torch.float32
    rgb = np.asarray(Image.open(levir / "A" / CITIES["test"]["charlie"]).convert("RGB")).astype(np.float32)
    expected = np.stack([rgb[..., k % 3] * DN_SCALE / 10000 for k in range(13)])
    np.testing.assert_allclose(s["image_a"].numpy(), expected, rtol=1e-6)
    assert s["mask"].sum() == 0 and s["id"] == "charlie"  # the LEVIR pair without change
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_a"].shape == (2, 13, 64, 64) and batch["mask"].shape == (2, 64, 64)


def test_oscd_statistics_from_the_training_cities(oscd: Path) -> None:
    dm = OSCDDataModule(str(oscd))
    info = dm.info()
    assert info.num_channels == 13 and len(info.mean) == len(info.std) == 13
    stack = torch.cat(
        [read_multiband(p).flatten(1) for r in dm.records()["train"] for p in (r.image_a, r.image_b)], dim=1
    ).double()
    torch.testing.assert_close(torch.tensor(info.mean, dtype=torch.float64), stack.mean(1))
    torch.testing.assert_close(torch.tensor(info.std, dtype=torch.float64), stack.std(1, unbiased=False))
    assert info.mean[0] == pytest.approx(info.mean[3]) and info.mean[0] != pytest.approx(
        info.mean[1]
    )  # band k = RGB k % 3
    given = OSCDDataModule(str(oscd), mean=[0.1] * 13, std=[0.2] * 13).info()
    assert given.mean == [0.1] * 13 and given.std == [0.2] * 13


def test_oscd_band_subset_and_city_splits(oscd: Path) -> None:
    rgb = OSCDDataModule(str(oscd), bands=[3, 2, 1], val_split=["bravo"], crop_size=None)
    assert {k: [r.name for r in v] for k, v in rgb.records().items()} == {
        "train": ["alpha"],
        "val": ["bravo"],
        "test": ["charlie"],
    }
    info = rgb.info()
    assert info.num_channels == 3 and info.bands == [3, 2, 1] and len(info.mean) == 3
    rgb.setup()
    full = read_multiband(rgb.records()["val"][0].image_a)
    assert torch.equal(rgb.datasets["val"][0]["image_a"], full[[3, 2, 1]])
    listed = OSCDDataModule(str(oscd), test_split=["bravo"])
    assert {k: [r.name for r in v] for k, v in listed.records().items()} == {
        "train": ["alpha"],
        "val": [],
        "test": ["bravo"],
    }


def test_oscd_errors_are_named(oscd: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.raster_scale must be a number"):
        OSCDDataModule(str(oscd), raster_scale="auto")
    with pytest.raises(DataError, match=r"data.bands: OSCD has 13 bands \(indices 0-12\), got 13"):
        OSCDDataModule(str(oscd), bands=[0, 13])
    with pytest.raises(DataError, match=r"data.val_split: \['zulu'\] are not training cities"):
        OSCDDataModule(str(oscd), val_split=["zulu"]).records()
    with pytest.raises(DataError, match=r"data.test_split: \['zulu'\] are not training cities"):
        OSCDDataModule(str(oscd), test_split=["bravo", "zulu"]).records()
    with pytest.raises(DataError, match="data.mean and data.std need 3 values"):
        OSCDDataModule(str(oscd), bands=[3, 2, 1], mean=[0.1] * 13, std=[0.2] * 13)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="OSCD images folder"):
        OSCDDataModule(str(tmp_path / "empty")).records()
    assert (oscd / OSCD_IMAGES_FOLDER / "alpha" / "imgs_1_rect" / f"{OSCD_BANDS[8]}.tif").is_file()
