import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image, ImageFile
from rasterio.transform import Affine

import rsfm.data.io
from rsfm.data.io import (
    IMAGE_EXTENSIONS,
    BadImageError,
    RasterRule,
    UnsupportedImageError,
    decode_image,
    read_image,
)


@pytest.fixture
def aid_jpeg(datasets: Path) -> Path:
    return datasets / "aid" / "Airport" / "airport_10.jpg"


@pytest.fixture
def rgb(aid_jpeg: Path) -> np.ndarray:
    """(3, 150, 150) uint8 pixels of a real AID image, decoded by PIL."""
    return np.asarray(Image.open(aid_jpeg).convert("RGB")).transpose(2, 0, 1).copy()


def write_tif(path: Path, array: np.ndarray, **kwargs) -> Path:
    profile = dict(
        driver="GTiff",
        height=array.shape[1],
        width=array.shape[2],
        count=array.shape[0],
        dtype=array.dtype,
        crs="EPSG:32618",
        transform=Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0),
    )
    with rasterio.open(path, "w", **profile, **kwargs) as dst:
        dst.write(array)
    return path


def stretch(band: np.ndarray, lo_pct: float = 2.0, hi_pct: float = 98.0) -> np.ndarray:
    lo, hi = np.percentile(band.astype(np.float64), [lo_pct, hi_pct])
    return np.rint(np.clip((band - lo) / (hi - lo), 0, 1) * 255)


def test_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"} == IMAGE_EXTENSIONS


def test_truncated_images_not_loaded() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_aid_jpeg(aid_jpeg: Path, rgb: np.ndarray) -> None:
    image = read_image(aid_jpeg)
    assert image.shape == (3, 150, 150)
    assert image.dtype == torch.uint8
    assert image.is_contiguous()
    assert np.array_equal(image.numpy(), rgb)  # same pixels as PIL


def test_uppercase_extension_and_png_named_jpg(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "a.png", format="PNG")
    (tmp_path / "A.PNG").write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "png_inside.jpg").write_bytes((tmp_path / "a.png").read_bytes())
    assert np.array_equal(read_image(tmp_path / "A.PNG").numpy(), rgb)
    assert np.array_equal(read_image(tmp_path / "png_inside.jpg").numpy(), rgb)


def test_geotiff_scene(datasets: Path) -> None:
    path = datasets / "scenes" / "RGB.byte.tif"
    image = read_image(path)
    assert image.shape == (3, 718, 791)
    assert image.dtype == torch.uint8
    with rasterio.open(path) as src:
        assert np.array_equal(image.numpy(), src.read())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_repeated(tmp_path: Path, aid_jpeg: Path, fmt: str) -> None:
    path = tmp_path / f"gray.{fmt.lower()}"
    Image.open(aid_jpeg).convert("L").save(path, format=fmt)
    image = read_image(path)
    assert image.shape == (3, 150, 150)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    if fmt == "PNG":
        assert np.array_equal(image[0].numpy(), np.asarray(Image.open(path)))


def test_rgba_and_palette_png(tmp_path: Path, rgb: np.ndarray) -> None:
    rgba = np.concatenate([rgb, np.full((1, 150, 150), 7, np.uint8)]).transpose(1, 2, 0)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png").numpy(), rgb)

    pal = Image.fromarray(rgb.transpose(1, 2, 0)).quantize(64)
    pal.save(tmp_path / "pal.png", transparency=0)
    expected = np.asarray(pal.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(read_image(tmp_path / "pal.png").numpy(), expected)


def test_four_band_geotiff(tmp_path: Path, rgb: np.ndarray) -> None:
    nir = rgb.mean(axis=0, keepdims=True).astype(np.uint8)
    path = write_tif(tmp_path / "four.tif", np.concatenate([rgb, nir]))
    assert np.array_equal(read_image(path).numpy(), rgb)
    assert np.array_equal(read_image(path, RasterRule(bands=(2, 1, 0))).numpy(), rgb[::-1])
    # ``bands`` gives exactly the bands asked for: one band is one channel, four are four
    nir_only = read_image(path, RasterRule(bands=(3,))).numpy()
    assert nir_only.shape == (1, 150, 150) and np.array_equal(nir_only, nir)
    all_four = read_image(path, RasterRule(bands=(0, 1, 2, 3))).numpy()
    assert all_four.shape == (4, 150, 150) and np.array_equal(all_four, np.concatenate([rgb, nir]))
    nir_first = read_image(path, RasterRule(bands=(3, 0))).numpy()
    assert np.array_equal(nir_first, np.concatenate([nir, rgb[:1]]))
    with pytest.raises(UnsupportedImageError, match=r"four\.tif.*4 band"):
        read_image(path, RasterRule(bands=(0, 1, 4)))


def test_uint16_stretched(tmp_path: Path, rgb: np.ndarray) -> None:
    path = write_tif(tmp_path / "u16.tif", rgb.astype(np.uint16) * 257)
    image = read_image(path).numpy().astype(int)
    expected = np.stack([stretch(band) for band in rgb])
    assert np.abs(image - expected).max() <= 1
    wide = read_image(path, RasterRule(percentiles=(0.0, 100.0))).numpy().astype(int)
    assert np.abs(wide - np.stack([stretch(b, 0, 100) for b in rgb])).max() <= 1


def test_float_scale_and_nodata(tmp_path: Path, rgb: np.ndarray) -> None:
    reflectance = rgb.astype(np.float32) / 255 * 10000
    path = write_tif(tmp_path / "refl.tif", reflectance)
    image = read_image(path, RasterRule(scale=10000)).numpy().astype(int)
    assert np.abs(image - rgb).max() <= 1

    # NaN and nodata pixels are ignored by the stretch and come out as 0
    masked = rgb.astype(np.float32)
    masked[:, :10] = np.nan
    masked[:, -10:] = -9999
    path = write_tif(tmp_path / "nodata.tif", masked, nodata=-9999)
    image = read_image(path).numpy().astype(int)
    assert (image[:, :10] == 0).all() and (image[:, -10:] == 0).all()
    expected = np.stack([stretch(b[10:-10]) for b in rgb])
    assert np.abs(image[:, 10:-10] - expected).max() <= 1


def test_two_band_unsupported(tmp_path: Path, rgb: np.ndarray) -> None:
    path = write_tif(tmp_path / "two_band.tif", rgb[:2])
    with pytest.raises(UnsupportedImageError, match="two_band.tif") as info:
        read_image(path)
    assert info.value.reason == "unsupported_bands"
    assert isinstance(info.value, BadImageError)
    assert info.value.path == str(path)
    assert np.array_equal(read_image(path, RasterRule(bands=(1,))).numpy()[0], rgb[1])


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_truncated(tmp_path: Path, rgb: np.ndarray, aid_jpeg: Path, suffix: str) -> None:
    if suffix == ".jpg":
        full = aid_jpeg
    elif suffix == ".png":
        full = tmp_path / "full.png"
        Image.fromarray(rgb.transpose(1, 2, 0)).save(full)
    else:
        full = write_tif(tmp_path / "full.tif", rgb)
    data = full.read_bytes()
    path = tmp_path / f"half{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match=f"half{suffix}") as info:
        read_image(path)
    assert info.value.reason == "truncated"


def test_jpeg_damaged_in_its_middle_is_corrupt(tmp_path: Path, aid_jpeg: Path, damaged_jpeg) -> None:
    """A JPEG whose entropy-coded data is damaged but which ends properly is refused, not decoded to garbage."""
    data = damaged_jpeg(aid_jpeg)
    path = tmp_path / "damaged.jpg"
    path.write_bytes(data)
    # what PIL (and torchvision) return without a word: an image, with garbage blocks
    garbage = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).astype(int)
    assert np.abs(garbage - read_image(aid_jpeg).numpy()).mean() > 5
    with pytest.raises(BadImageError, match=r"damaged\.jpg: JPEG data is damaged.*Corrupt JPEG data") as info:
        read_image(path)
    assert info.value.reason == "corrupt"
    with pytest.raises(BadImageError) as info:
        decode_image(data, "damaged.jpg")
    assert info.value.reason == "corrupt"


def _jfif2(data: bytes) -> bytes:
    """``data`` with its JFIF version set to 2.1: libjpeg-turbo warns "unknown JFIF revision number"."""
    out = bytearray(data)
    out[out.index(b"JFIF\x00") + 5] = 2
    return bytes(out)


def test_jpeg_with_a_metadata_warning_decodes(tmp_path: Path, aid_jpeg: Path) -> None:
    """libjpeg-turbo warnings about metadata only (here an unknown JFIF revision) do not refuse the file."""
    path = tmp_path / "jfif2.jpg"
    path.write_bytes(_jfif2(aid_jpeg.read_bytes()))
    assert np.array_equal(read_image(path).numpy(), read_image(aid_jpeg).numpy())


def test_damage_after_a_metadata_warning_is_still_found(tmp_path: Path, aid_jpeg: Path, damaged_jpeg) -> None:
    """Strict decoding stops at the first warning: a metadata one must not hide damaged data behind it."""
    path = tmp_path / "jfif2_damaged.jpg"
    path.write_bytes(_jfif2(damaged_jpeg(aid_jpeg)))
    with pytest.raises(BadImageError, match="Corrupt JPEG data") as info:
        read_image(path)
    assert info.value.reason == "corrupt"


def test_fill_bytes_before_the_end_marker_are_not_damage(tmp_path: Path, aid_jpeg: Path) -> None:
    """An encoder's fill after the scan ("N extraneous bytes before marker 0xd9", all one value) decodes as is."""
    data = aid_jpeg.read_bytes()
    path = tmp_path / "padded.jpg"
    path.write_bytes(data[:-2] + b"\x00" * 20 + b"\xff\xd9")
    assert np.array_equal(read_image(path).numpy(), read_image(aid_jpeg).numpy())


def test_cmyk_jpeg_decodes_as_pil_converts_it(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb.transpose(1, 2, 0)).convert("CMYK").save(path, quality=95)
    expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(read_image(path).numpy(), expected)


@pytest.mark.parametrize("name", ["x.jpg", "x.png", "x.tif"])
def test_text_file_is_not_an_image(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("these are field notes, not pixels\n" * 10)
    with pytest.raises(BadImageError, match=name) as info:
        read_image(path)
    assert info.value.reason == "not_an_image"


def test_zero_byte_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").touch()
    with pytest.raises(BadImageError, match="empty.jpg") as info:
        read_image(tmp_path / "empty.jpg")
    assert info.value.reason == "zero_byte"
    with pytest.raises(BadImageError) as info:
        read_image(tmp_path / "gone.jpg")
    assert info.value.reason == "unreadable"


def test_error_pickles(tmp_path: Path) -> None:
    for err in (
        BadImageError(tmp_path / "a.jpg", "truncated", "ends early"),
        UnsupportedImageError(tmp_path / "b.tif", "has 2 bands"),
    ):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err)
        assert (copy.path, copy.reason, str(copy)) == (err.path, err.reason, str(err))


def test_rule_validation() -> None:
    assert RasterRule(bands=(0, 1)).bands == (0, 1)  # any number of bands
    for bad in ((), (0, 0), (-1, 2)):
        with pytest.raises(ValueError, match="bands"):
            RasterRule(bands=bad)
    with pytest.raises(ValueError, match="scale"):
        RasterRule(scale="minmax")
    with pytest.raises(ValueError, match="scale"):
        RasterRule(scale=0)
    with pytest.raises(ValueError, match="percentiles"):
        RasterRule(percentiles=(98.0, 2.0))
    assert RasterRule(bands=[2, 1, 0]).bands == (2, 1, 0)


def test_multispectral_geotiff_from_a_real_scene(tmp_path: Path, datasets: Path) -> None:
    """A 4-band uint8 GeoTIFF written from the real Landsat scene (R, G, B and R again as a 4th band)."""
    scene = datasets / "scenes" / "RGB.byte.tif"
    with rasterio.open(scene) as src:
        rgb, profile = src.read(), src.profile
    four = np.concatenate([rgb, rgb[:1]])
    profile.update(count=4, photometric="minisblack")  # four plain bands, no alpha
    path = tmp_path / "four_band.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(four)
    image = read_image(path, RasterRule(bands=(0, 1, 2, 3)))
    assert image.shape == (4, 718, 791) and image.dtype == torch.uint8
    assert np.array_equal(image.numpy(), four)
    assert np.array_equal(read_image(path).numpy(), rgb)  # default rule: the first three
    assert np.array_equal(read_image(path, RasterRule(bands=(3, 1))).numpy(), four[[3, 1]])
    # the same selection on the 3-band original fails, naming the file and the band
    with pytest.raises(UnsupportedImageError, match=r"RGB\.byte\.tif.*band index 3"):
        read_image(scene, RasterRule(bands=(0, 1, 2, 3)))


def test_bands_on_jpeg_and_png(aid_jpeg: Path, rgb: np.ndarray, tmp_path: Path) -> None:
    assert np.array_equal(read_image(aid_jpeg, RasterRule(bands=(2, 1, 0))).numpy(), rgb[::-1])
    green = read_image(aid_jpeg, RasterRule(bands=(1,)))
    assert green.shape == (1, 150, 150) and np.array_equal(green.numpy()[0], rgb[1])
    with pytest.raises(UnsupportedImageError, match="airport_10.jpg"):
        read_image(aid_jpeg, RasterRule(bands=(0, 1, 2, 3)))
    # an RGBA PNG: the alpha band can be selected explicitly as a fourth channel
    alpha = np.full((1, 150, 150), 7, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha]).transpose(1, 2, 0), mode="RGBA").save(tmp_path / "rgba.png")
    four = read_image(tmp_path / "rgba.png", RasterRule(bands=(0, 1, 2, 3)))
    assert four.shape == (4, 150, 150) and np.array_equal(four.numpy(), np.concatenate([rgb, alpha]))
    # a grey PNG read with bands=(0,) stays one channel (no repetition to RGB)
    Image.open(aid_jpeg).convert("L").save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png", RasterRule(bands=(0,))).shape == (1, 150, 150)
    assert read_image(tmp_path / "gray.png").shape == (3, 150, 150)


def test_uint16_multiband_stretched_per_band(tmp_path: Path, rgb: np.ndarray) -> None:
    four = np.concatenate([rgb, rgb[:1] // 2]).astype(np.uint16) * 40  # Sentinel-2-like digital numbers
    path = write_tif(tmp_path / "dn.tif", four)
    image = read_image(path, RasterRule(bands=(0, 1, 2, 3))).numpy().astype(int)
    assert image.shape == (4, 150, 150)
    assert np.abs(image - np.stack([stretch(b) for b in four])).max() <= 1
    scaled = read_image(path, RasterRule(bands=(3,), scale=10000)).numpy().astype(int)
    assert np.abs(scaled[0] - np.rint(np.clip(four[3] / 10000, 0, 1) * 255)).max() <= 1


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit-per-sample PNG (GDAL's PNG driver; Pillow cannot write 48/64-bit PNGs)."""
    with rasterio.open(path, "w", driver="PNG", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype="uint16") as dst:  # fmt: skip
        dst.write(array)
    return path


@pytest.mark.parametrize("alpha", [False, True], ids=["rgb48", "rgba64"])
def test_png_16_bit_colour_read_at_full_depth(tmp_path: Path, rgb: np.ndarray, alpha: bool) -> None:
    # the real pixels x16 plus a low-order ramp: cutting to the top byte would lose the ramp
    data = rgb.astype(np.uint16) * 16 + (np.arange(rgb.shape[2], dtype=np.uint16) % 16)
    if alpha:
        data = np.concatenate([data, np.full((1, *data.shape[1:]), 65535, np.uint16)])
    png = write_png16(tmp_path / "x.png", data)
    tif = write_tif(tmp_path / "x.tif", data[:3])
    expected = read_image(tif).numpy()
    got = read_image(png).numpy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, np.stack([stretch(b) for b in data[:3]]))
    # shards holding the source bytes decode the same way
    np.testing.assert_array_equal(decode_image(png.read_bytes(), "x.png").numpy(), expected)
    # bands select among the full-depth bands
    np.testing.assert_array_equal(read_image(png, RasterRule(bands=(2,))).numpy()[0], expected[2])


def test_png_16_bit_grey_alpha_and_truncated(tmp_path: Path, rgb: np.ndarray) -> None:
    """Grey + alpha at 16 bits: the grey band stretched, alpha dropped (not a mask); a cut file is 'truncated'."""
    grey = rgb[1].astype(np.uint16) * 256 + rgb[0]
    alpha = np.where(np.arange(grey.size).reshape(grey.shape) % 7 == 0, 0, 65535).astype(np.uint16)
    png = write_png16(tmp_path / "la.png", np.stack([grey, alpha]))
    got = read_image(png).numpy()
    assert got.shape == (3, *grey.shape)
    np.testing.assert_array_equal(got, np.stack([stretch(grey)] * 3))
    data = png.read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match=r"half\.png: cannot decode 16-bit PNG \(libpng") as info:
        read_image(tmp_path / "half.png")
    assert info.value.reason == "truncated"


def test_palette_tiff_decodes_like_palette_png(tmp_path: Path, aid_jpeg: Path) -> None:
    palette = Image.open(aid_jpeg).convert("RGB").quantize(colors=32)
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "p.tif")  # a 1-band TIFF with a colour map (photometric palette)
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
    expected = read_image(tmp_path / "p.png").numpy()
    np.testing.assert_array_equal(expected, np.asarray(palette.convert("RGB")).transpose(2, 0, 1))
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif").numpy(), expected)
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif", RasterRule(bands=(1, 0))).numpy(), expected[[1, 0]])


def test_uint8_nodata_becomes_zero(tmp_path: Path, rgb: np.ndarray) -> None:
    data = rgb.copy()
    data[:, :20, :30] = 7
    path = write_tif(tmp_path / "nd.tif", data, nodata=7)
    image = read_image(path).numpy()
    expected = np.where(data == 7, 0, data)
    np.testing.assert_array_equal(image, expected)
    assert (image[:, :20, :30] == 0).all()


def test_png_over_pillows_pixel_bound_is_read(tmp_path: Path, rgb: np.ndarray, aid_jpeg: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "big.png")
    palette = Image.open(aid_jpeg).convert("RGB").quantize(colors=32)
    palette.save(tmp_path / "pal.png")
    expected_palette = read_image(tmp_path / "pal.png").numpy()
    # as if the image were larger than Pillow's decompression-bomb bound (~179 megapixels)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    np.testing.assert_array_equal(read_image(tmp_path / "big.png").numpy(), rgb)
    np.testing.assert_array_equal(decode_image((tmp_path / "big.png").read_bytes(), "big.png").numpy(), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png").numpy(), expected_palette)
    # rsfm's own bound (2**32 pixels) is checked from the header, before decoding
    monkeypatch.setattr(rsfm.data.io, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match=r"150 x 150 = 22500 pixels, over rsfm's bound") as err:
        read_image(tmp_path / "big.png")
    assert err.value.reason == "unreadable" and err.value.path == str(tmp_path / "big.png")


def test_curate_reads_palette_tiff_and_16_bit_png_as_read_image(
    tmp_path: Path, rgb: np.ndarray, aid_jpeg: Path
) -> None:
    from rsfm.curation.ingest import OpenedSource

    Image.open(aid_jpeg).convert("RGB").quantize(colors=32).save(tmp_path / "p.tif")
    write_png16(tmp_path / "x.png", rgb.astype(np.uint16) * 16 + 3)
    for path in (tmp_path / "p.tif", tmp_path / "x.png"):
        with OpenedSource(path, RasterRule()) as source:
            tile, _ = source.read((10, 20, 64, 48))
        np.testing.assert_array_equal(tile, read_image(path).numpy()[:, 20:68, 10:74])
