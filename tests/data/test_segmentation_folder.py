"""SegmentationFolderDataModule (rsfm.data.segmentation.folder): any images/masks folder pair, any bands."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine

from rsfm.data.io import UnsupportedImageError
from rsfm.data.segmentation import LoveDADataModule, SegmentationFolderDataModule
from rsfm.utils.errors import DataError

LOVEDA_MAP = {0: 255, **{i: i - 1 for i in range(1, 8)}}


@pytest.fixture(scope="module")
def loveda(datasets: Path) -> Path:
    return datasets / "loveda"


def _folder(loveda: Path, **kwargs) -> SegmentationFolderDataModule:
    return SegmentationFolderDataModule(str(loveda), images_dir="images_png", masks_dir="masks_png", **kwargs)


def test_label_map_reads_loveda_like_loveda(loveda: Path) -> None:
    folder = _folder(loveda, label_map=LOVEDA_MAP, test_split=["1"])
    assert folder.classes() == [str(i) for i in range(7)]  # from the map, no mask read
    reference = LoveDADataModule(str(loveda), test_split=["1"])
    folder.setup("test")
    reference.setup("test")
    assert torch.equal(folder.datasets["test"][0]["mask"], reference.datasets["test"][0]["mask"])
    assert torch.equal(folder.datasets["test"][0]["image"], reference.datasets["test"][0]["image"])


def test_without_a_map_raw_values_are_labels_and_classes_are_read(loveda: Path) -> None:
    mapped = _folder(loveda, label_map=LOVEDA_MAP, test_split=["1"])
    raw = _folder(loveda, test_split=["1"])
    assert raw.classes() == [str(i) for i in range(8)]  # the largest raw value is 7
    raw.setup("test")
    mapped.setup("test")
    assert torch.equal(raw.datasets["test"][0]["mask"], mapped.datasets["test"][0]["mask"] + 1)
    info = raw.info()
    assert len(info.palette) == 8 and len(set(info.palette)) == 8  # fixed distinct default colours
    assert info.palette == _folder(loveda, test_split=["1"]).info().palette


def test_given_classes_palette_and_their_checks(loveda: Path) -> None:
    names = ["bg", "building", "road", "water", "barren", "forest", "agri"]
    palette = [[i * 30, 0, 0] for i in range(7)]
    dm = _folder(loveda, classes=names, palette=palette, label_map=LOVEDA_MAP, test_split=["2"], val_split=["1"])
    info = dm.info()
    assert info.classes == names and info.palette[3] == (90, 0, 0)
    with pytest.raises(DataError, match="data.palette has 2 colours for 7 classes"):
        _folder(loveda, classes=names, palette=palette[:2], test_split=["2"])
    with pytest.raises(ValueError, match="data.label_map sends 1 to 9"):
        _folder(loveda, classes=names, label_map={1: 9}, test_split=["2"]).read_mask(loveda / "masks_png" / "0.png")
    with pytest.raises(DataError, match="data.test_split is required"):
        _folder(loveda, classes=names).setup()
    with pytest.raises(DataError, match="folder not found: .*images"):
        SegmentationFolderDataModule(str(loveda), test_split=["2"]).setup()  # default images/ masks/


def _write_tif(path: Path, bands: np.ndarray) -> None:
    profile = {"driver": "GTiff", "height": bands.shape[1], "width": bands.shape[2], "count": bands.shape[0]}
    georef = {"crs": "EPSG:32650", "transform": Affine(0.3, 0.0, 200_000.0, 0.0, -0.3, 3_400_000.0)}
    with rasterio.open(path, "w", dtype="uint8", photometric="minisblack", **profile, **georef) as dst:
        dst.write(bands)


@pytest.fixture(scope="module")
def four_band(loveda: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4-band GeoTIFF tiles (R, G, B of a real LoveDA tile; the red band of the next tile as a 4th) and masks.

    ``root/{train,test}/images/<id>.tif`` and ``masks/<id>.png``, 192 × 192 crops of tiles 0 (train),
    1 (train) and 2 (test).
    """
    root = tmp_path_factory.mktemp("multispectral")
    for split, ids in (("train", ["0", "1"]), ("test", ["2"])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for rid in ids:
            rgb = np.asarray(Image.open(loveda / "images_png" / f"{rid}.png").convert("RGB"))[:192, :192]
            other = np.asarray(Image.open(loveda / "images_png" / f"{(int(rid) + 1) % 3}.png").convert("RGB"))
            bands = np.concatenate([rgb.transpose(2, 0, 1), other[None, :192, :192, 0]])
            _write_tif(root / split / "images" / f"{rid}.tif", np.ascontiguousarray(bands))
            mask = np.asarray(Image.open(loveda / "masks_png" / f"{rid}.png"))[:192, :192]
            Image.fromarray(np.ascontiguousarray(mask)).save(root / split / "masks" / f"{rid}.png")
    return root


def test_multispectral_images_give_every_selected_band(four_band: Path, loveda: Path) -> None:
    stats = {"mean": [0.3, 0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2, 0.2]}
    dm = SegmentationFolderDataModule(
        str(four_band),
        bands=[0, 1, 2, 3],
        label_map=LOVEDA_MAP,
        train_split="train",
        test_split="test",
        crop_size=128,
        batch_size=2,
        **stats,
    )
    info = dm.info()
    assert info.num_channels == 4 and info.bands == [0, 1, 2, 3] and info.mean == stats["mean"]
    dm.setup("test")
    sample = dm.datasets["test"][0]
    assert sample["image"].shape == (4, 192, 192) and sample["mask"].shape == (192, 192)
    rgb = np.asarray(Image.open(loveda / "images_png" / "2.png").convert("RGB"))[:192, :192]
    nir = np.asarray(Image.open(loveda / "images_png" / "0.png").convert("RGB"))[:192, :192, 0]
    expected = np.concatenate([rgb.transpose(2, 0, 1), nir[None]]).astype(np.float32) / 255
    assert torch.equal(sample["image"], torch.from_numpy(expected))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 4, 128, 128) and batch["mask"].shape == (2, 128, 128)
    # one band, or bands in another order
    nir_only = SegmentationFolderDataModule(
        str(four_band), bands=[3], mean=[0.4], std=[0.2], train_split="train", test_split="test"
    )
    nir_only.setup("test")
    assert nir_only.info().num_channels == 1
    assert torch.equal(nir_only.datasets["test"][0]["image"], torch.from_numpy(expected[3:]))
    swapped = SegmentationFolderDataModule(
        str(four_band), bands=[3, 0], mean=[0.4] * 2, std=[0.2] * 2, train_split="train", test_split="test"
    )
    swapped.setup("test")
    assert torch.equal(swapped.datasets["test"][0]["image"], torch.from_numpy(expected[[3, 0]]))


def test_multispectral_statistics_are_required(four_band: Path) -> None:
    with pytest.raises(DataError, match="data.mean and data.std are required for 4-band input"):
        SegmentationFolderDataModule(str(four_band), bands=[0, 1, 2, 3], test_split="test")
    with pytest.raises(DataError, match="need 4 values"):
        SegmentationFolderDataModule(str(four_band), bands=[0, 1, 2, 3], mean=[0.3] * 3, std=[0.2] * 3)
    with pytest.raises(DataError, match="data.std must be positive"):
        SegmentationFolderDataModule(str(four_band), bands=[0], mean=[0.3], std=[0.0])
    with pytest.raises(ValueError, match="data.bands"):
        SegmentationFolderDataModule(str(four_band), bands=[1, 1], mean=[0.3] * 2, std=[0.2] * 2)
    # a band the files do not have is reported when read, naming the file
    dm = SegmentationFolderDataModule(
        str(four_band), bands=[4], mean=[0.3], std=[0.2], train_split="train", test_split="test"
    )
    dm.setup("test")
    with pytest.raises(UnsupportedImageError, match=r"2\.tif.*band index 4"):
        dm.datasets["test"][0]


def test_binary_0_255_masks_without_classes_are_refused_clearly(datasets: Path) -> None:
    levir = datasets / "levir_cd"  # real change labels: 0 and 255
    module = SegmentationFolderDataModule(
        str(levir), images_dir="A", masks_dir="label", test_split=["test_2_0000_0000"]
    )
    with pytest.raises(DataError) as err:
        module.classes()
    message = str(err.value)
    assert str(levir / "label") in message and "[0, 255]" in message and "255 is the ignore index" in message
    assert "data.classes" in message and "data.label_map: {0: 0, 255: 1}" in message
    # the advice works: two classes, 255 read as the second
    fixed = SegmentationFolderDataModule(
        str(levir), images_dir="A", masks_dir="label", test_split=["test_2_0000_0000"], label_map={0: 0, 255: 1}
    )
    assert fixed.classes() == ["0", "1"]
    fixed.setup("test")
    mask = fixed.datasets["test"][0]["mask"]
    assert set(mask.unique().tolist()) <= {0, 1} and int(mask.max()) == 1
    with pytest.raises(DataError, match="gives the classes"):
        SegmentationFolderDataModule(str(levir), images_dir="A", masks_dir="label", label_map={0: 0}).classes()
