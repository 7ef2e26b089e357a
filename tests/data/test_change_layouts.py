"""CDD and OSCD layouts, on tiny folders built from real LEVIR-CD pairs (never synthetic pixels).

CDD: the LEVIR ``A``, ``B`` and ``label`` files copied to ``<split>/{A,B,OUT}`` (one split
re-encoded as JPEG, as CDD is published). OSCD: each LEVIR pair becomes a "city" with 13
single-band uint16 GeoTIFFs per date, band k = RGB channel k % 3 × 40 (values like Sentinel-2
digital numbers), and the LEVIR label as ``cm/cm.png`` (0/255) or ``cm/<city>-cm.tif`` (1/2).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.change.cdd import cdd_pairs, read_cdd_mask
from rsfm.data.change.common import ChangePairRecord
from rsfm.data.change.oscd import (
    OSCD_BANDS,
    OSCD_IMAGES_FOLDER,
    oscd_labels_folder,
    oscd_pairs,
    read_multiband,
    read_oscd_mask,
)

#: LEVIR pair behind each OSCD "city" (the second has change, the third none at all)
CITIES = {
    "train": {"alpha": "test_2_0000_0000.png", "bravo": "test_102_0512_0000.png"},
    "test": {"charlie": "train_386_0512_0768.png"},
}
DN_SCALE = 40  # uint8 × 40 ≤ 10,200: the range of Sentinel-2 L1C digital numbers


@pytest.fixture(scope="module")
def levir(datasets: Path) -> Path:
    return datasets / "levir_cd"


def _rgb(levir: Path, folder: str, name: str) -> np.ndarray:
    return np.asarray(Image.open(levir / folder / name).convert("RGB"))


def _write_tif(path: Path, bands: np.ndarray, dtype: str = "uint16") -> None:
    """GeoTIFF of ``(C, H, W)`` or ``(H, W)`` values on a 10 m UTM grid, as in OSCD's ``imgs_*_rect``."""
    import rasterio
    from rasterio.transform import Affine

    bands = bands[None] if bands.ndim == 2 else bands
    c, h, w = bands.shape
    transform = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_800_000.0)
    with rasterio.open(
        path, "w", driver="GTiff", height=h, width=w, count=c, dtype=dtype, crs="EPSG:32631", transform=transform
    ) as dst:
        dst.write(bands.astype(dtype))


def _write_band(path: Path, band: np.ndarray) -> None:
    _write_tif(path, band, "uint16")


def _write_mask_tif(path: Path, mask01: np.ndarray) -> None:
    """OSCD's ``<city>-cm.tif`` encoding: 1 = no change, 2 = change."""
    _write_tif(path, mask01 + 1, "uint8")


def build_oscd(levir: Path, root: Path) -> Path:
    """An OSCD-layout folder from real LEVIR pairs (see the module docstring); returns ``root``."""
    images = root / OSCD_IMAGES_FOLDER
    for split, cities in CITIES.items():
        (images / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (images / f"{split}.txt").write_text(",".join(cities) + "\n")
        for city, name in cities.items():
            for date, folder in ((1, "A"), (2, "B")):
                rgb = _rgb(levir, folder, name)
                d = images / city / f"imgs_{date}_rect"
                d.mkdir(parents=True)
                for k, band in enumerate(OSCD_BANDS):
                    _write_band(d / f"{band}.tif", rgb[..., k % 3].astype(np.uint16) * DN_SCALE)
            (images / city / "dates.txt").write_text("date_1: 20151121\ndate_2: 20171026\n")
            cm = root / oscd_labels_folder(split) / city / "cm"
            cm.mkdir(parents=True)
            label = np.asarray(Image.open(levir / "label" / name))
            if split == "train":
                shutil.copy(levir / "label" / name, cm / "cm.png")  # 0/255, as released
            else:
                _write_mask_tif(cm / f"{city}-cm.tif", (label == 255).astype(np.uint8))
    return root


def build_cdd(levir: Path, root: Path) -> Path:
    """A CDD-layout folder from real LEVIR pairs: ``train`` as PNG, ``val`` and ``test`` as JPEG."""
    names = sorted(p.name for p in (levir / "A").iterdir())
    splits = {"train": names[:3], "val": names[3:5], "test": names[5:7]}
    for split, chosen in splits.items():
        for src, dst in (("A", "A"), ("B", "B"), ("label", "OUT")):
            d = root / split / dst
            d.mkdir(parents=True)
            for n in chosen:
                if split == "train":
                    shutil.copy(levir / src / n, d / n)
                else:
                    Image.open(levir / src / n).save(d / n.replace(".png", ".jpg"), quality=95)
    return root


@pytest.fixture
def oscd(levir: Path, tmp_path: Path) -> Path:
    return build_oscd(levir, tmp_path / "oscd")


@pytest.fixture
def cdd(levir: Path, tmp_path: Path) -> Path:
    return build_cdd(levir, tmp_path / "cdd")


# --------------------------------------------------------------------------------------------- CDD


def test_cdd_pairs_list_sorted_triplets_with_masks_from_out(cdd, levir):
    recs = cdd_pairs(cdd, "train")
    names = sorted(p.stem for p in (levir / "A").iterdir())[:3]
    assert [r.name for r in recs] == names
    for r in recs:
        assert isinstance(r, ChangePairRecord)
        assert r.image_a == cdd / "train" / "A" / f"{r.name}.png"
        assert r.image_b == cdd / "train" / "B" / f"{r.name}.png"
        assert r.mask == cdd / "train" / "OUT" / f"{r.name}.png"
    assert [len(cdd_pairs(cdd, s)) for s in ("val", "test")] == [2, 2]
    assert cdd_pairs(cdd, "test")[0].mask.suffix == ".jpg"
    with pytest.raises(AttributeError):
        recs[0].name = "x"  # frozen


def test_cdd_masks_read_as_binary_even_from_jpeg(cdd, levir):
    png = cdd_pairs(cdd, "train")[0]
    truth = np.asarray(Image.open(levir / "label" / f"{png.name}.png")) == 255
    m = read_cdd_mask(png.mask)
    assert m.shape == (256, 256) and m.dtype == torch.int64
    assert torch.equal(m, torch.from_numpy(truth.astype(np.int64)))
    # the JPEG masks carry compression noise around 0 and 255; the threshold recovers the label
    for r in cdd_pairs(cdd, "val"):
        raw = np.asarray(Image.open(r.mask))
        truth = np.asarray(Image.open(levir / "label" / f"{r.name}.png")) == 255
        m = read_cdd_mask(r.mask).numpy().astype(bool)
        if truth.any():
            assert len(np.unique(raw)) > 2  # really noisy
        assert (m == truth).mean() > 0.999
    with pytest.raises(ValueError, match="threshold"):
        read_cdd_mask(png.mask, threshold=0)


def test_cdd_accepts_the_unpacked_archive_root(levir, tmp_path):
    build_cdd(levir, tmp_path / "ChangeDetectionDataset" / "Real" / "subset")
    recs = cdd_pairs(tmp_path / "ChangeDetectionDataset", "val")
    assert len(recs) == 2 and "Real/subset/val/OUT" in recs[0].mask.as_posix()


def test_cdd_errors_name_the_missing_folder_or_unpaired_file(cdd):
    with pytest.raises(ValueError, match="split"):
        cdd_pairs(cdd, "validation")
    shutil.rmtree(cdd / "test")
    with pytest.raises(FileNotFoundError, match="test"):
        cdd_pairs(cdd, "test")
    (cdd / "val" / "OUT").rename(cdd / "val" / "label")  # LEVIR's folder name is not CDD's
    with pytest.raises(FileNotFoundError, match="OUT"):
        cdd_pairs(cdd, "val")
    victim = sorted((cdd / "train" / "B").iterdir())[1]
    victim.unlink()
    with pytest.raises(ValueError, match=f"unpaired.*B/{victim.stem}"):
        cdd_pairs(cdd, "train")


def test_cdd_rejects_two_files_with_one_stem_and_empty_splits(cdd, tmp_path):
    a = sorted((cdd / "train" / "A").iterdir())[0]
    shutil.copy(a, a.with_suffix(".jpg"))
    with pytest.raises(ValueError, match="share the name"):
        cdd_pairs(cdd, "train")
    for f in ("A", "B", "OUT"):
        (tmp_path / "empty" / "val" / f).mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        cdd_pairs(tmp_path / "empty", "val")


# -------------------------------------------------------------------------------------------- OSCD


def test_oscd_band_order_is_sentinel2_wavelength_order():
    assert len(OSCD_BANDS) == 13
    assert OSCD_BANDS[7:10] == ("B08", "B8A", "B09")
    assert OSCD_BANDS == tuple(f"B{i:02d}" for i in range(1, 9)) + ("B8A", "B09", "B10", "B11", "B12")


def test_oscd_pairs_list_cities_with_13_band_paths_in_order(oscd):
    images = oscd / OSCD_IMAGES_FOLDER
    train = oscd_pairs(oscd, "train")
    assert [r.name for r in train] == ["alpha", "bravo"]
    for r in train:
        for date, paths in ((1, r.image_a), (2, r.image_b)):
            assert isinstance(paths, tuple) and len(paths) == 13
            assert [p.name for p in paths] == [f"{b}.tif" for b in OSCD_BANDS]
            assert all(p.parent == images / r.name / f"imgs_{date}_rect" for p in paths)
        assert r.mask == oscd / "Onera Satellite Change Detection dataset - Train Labels" / r.name / "cm" / "cm.png"
    test = oscd_pairs(oscd, "test")
    assert [r.name for r in test] == ["charlie"]
    assert test[0].mask.name == "charlie-cm.tif" and "Test Labels" in str(test[0].mask)
    assert [r.name for r in oscd_pairs(oscd, "train", cities=["bravo"])] == ["bravo"]


def test_oscd_bands_read_as_scaled_float_stack(oscd, levir):
    rec = oscd_pairs(oscd, "train")[0]
    name = CITIES["train"]["alpha"]
    for paths, folder in ((rec.image_a, "A"), (rec.image_b, "B")):
        x = read_multiband(paths)
        assert x.shape == (13, 256, 256) and x.dtype == torch.float32
        rgb = _rgb(levir, folder, name).astype(np.float32)
        expected = np.stack([rgb[..., k % 3] * DN_SCALE / 10000 for k in range(13)])
        np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)
        assert 0 <= x.min() and x.max() <= 255 * DN_SCALE / 10000
    dn = read_multiband(rec.image_a, scale=1.0)
    assert torch.equal(dn[3], torch.from_numpy(_rgb(levir, "A", name)[..., 0].astype(np.float32) * DN_SCALE))
    assert not torch.equal(read_multiband(rec.image_a), read_multiband(rec.image_b))


def test_oscd_masks_match_the_levir_labels_in_both_encodings(oscd, levir):
    for split in ("train", "test"):
        for rec in oscd_pairs(oscd, split):
            raw = np.asarray(Image.open(levir / "label" / CITIES[split][rec.name]))
            m = read_oscd_mask(rec.mask)
            assert m.shape == (256, 256) and m.dtype == torch.int64
            assert torch.equal(m, torch.from_numpy((raw == 255).astype(np.int64)))
    charlie = oscd_pairs(oscd, "test")[0]
    assert read_oscd_mask(charlie.mask).sum() == 0  # the LEVIR pair without change: all 1 = no change


def test_oscd_mask_variants_and_bad_values(levir, tmp_path):
    raw = np.asarray(Image.open(levir / "label" / "test_2_0000_0000.png"))
    truth = torch.from_numpy((raw == 255).astype(np.int64))
    Image.fromarray((raw // 255 * 2).astype(np.uint8)).save(tmp_path / "zero_two.png")  # single band 0/2
    Image.fromarray((raw // 255).astype(np.uint8)).save(tmp_path / "zero_one.png")
    Image.fromarray(raw).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(raw).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(raw).convert("1").save(tmp_path / "bilevel.png")
    for f in ("zero_two.png", "zero_one.png", "rgb.png", "rgba.png", "bilevel.png"):
        assert torch.equal(read_oscd_mask(tmp_path / f), truth), f
    Image.fromarray((raw // 2).astype(np.uint8)).save(tmp_path / "half.png")  # 0/127
    with pytest.raises(ValueError, match="half.png.*values"):
        read_oscd_mask(tmp_path / "half.png")
    rgb = np.stack([raw, raw, 255 - raw], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="differing bands"):
        read_oscd_mask(tmp_path / "colour.png")
    with pytest.raises(FileNotFoundError):
        read_oscd_mask(tmp_path / "absent.png")


def test_oscd_errors_missing_band_unknown_city_missing_label(oscd):
    images = oscd / OSCD_IMAGES_FOLDER
    with pytest.raises(ValueError, match="split"):
        oscd_pairs(oscd, "val")
    with pytest.raises(ValueError, match="zulu"):
        oscd_pairs(oscd, "train", cities=["alpha", "zulu"])
    (images / "bravo" / "imgs_2_rect" / "B8A.tif").unlink()
    with pytest.raises(FileNotFoundError, match="imgs_2_rect: missing band files B8A.tif"):
        oscd_pairs(oscd, "train")
    assert [r.name for r in oscd_pairs(oscd, "train", cities=["alpha"])] == ["alpha"]
    (images / "test.txt").write_text("charlie,delta\n")  # a city listed without a folder
    with pytest.raises(FileNotFoundError, match="'delta'"):
        oscd_pairs(oscd, "test")
    (images / "test.txt").write_text("charlie\n")
    shutil.rmtree(oscd / oscd_labels_folder("test") / "charlie" / "cm")
    with pytest.raises(FileNotFoundError, match="label of 'charlie'"):
        oscd_pairs(oscd, "test")
    assert oscd_pairs(oscd, "test", require_mask=False)[0].mask is None
    with pytest.raises(FileNotFoundError, match="images folder"):
        oscd_pairs(oscd / "nowhere", "train")


def test_oscd_split_from_labels_folder_when_the_city_list_is_absent(oscd):
    (oscd / OSCD_IMAGES_FOLDER / "train.txt").unlink()
    assert [r.name for r in oscd_pairs(oscd, "train")] == ["alpha", "bravo"]
    shutil.rmtree(oscd / oscd_labels_folder("train"))
    with pytest.raises(FileNotFoundError, match="train.txt"):
        oscd_pairs(oscd, "train")


def test_read_multiband_rejects_mismatched_sizes_and_multiband_files(oscd, levir):
    rec = oscd_pairs(oscd, "train")[0]
    b05 = rec.image_a[4]
    _write_band(b05, _rgb(levir, "A", CITIES["train"]["alpha"])[:128, :128, 1].astype(np.uint16))
    with pytest.raises(ValueError, match=r"B05\.tif: size 128×128 .*B01\.tif 256×256"):
        read_multiband(rec.image_a)
    assert read_multiband(rec.image_a[:4]).shape == (4, 256, 256)  # the files before it still stack
    rgb = _rgb(levir, "A", CITIES["train"]["alpha"])
    _write_tif(b05, np.moveaxis(rgb, -1, 0), "uint8")
    with pytest.raises(ValueError, match="B05.tif: 3 bands"):
        read_multiband(rec.image_a)
    with pytest.raises(FileNotFoundError, match="B99"):
        read_multiband([*rec.image_b[:2], rec.image_b[0].with_name("B99.tif")])
    with pytest.raises(ValueError, match="at least one"):
        read_multiband([])
    with pytest.raises(ValueError, match="scale"):
        read_multiband(rec.image_b, scale=0)
