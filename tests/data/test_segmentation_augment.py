import math

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.segmentation.augment import PhotometricDistortion, RandomResize, photometric_distortion, random_resize

CROP = 128


@pytest.fixture(scope="module")
def loveda_sample(datasets):
    """A real LoveDA tile cropped to 128 × 128: image (3, H, W) float32 in [0, 1], raw mask (H, W) int64 (0–7)."""
    image = np.asarray(Image.open(datasets / "loveda" / "images_png" / "1.png").convert("RGB"))
    mask = np.asarray(Image.open(datasets / "loveda" / "masks_png" / "1.png")).astype(np.int64)
    image = torch.from_numpy(image[:CROP, :CROP].copy()).permute(2, 0, 1).float() / 255.0
    mask = torch.from_numpy(mask[:CROP, :CROP].copy())
    mask[:16, :16] = 255  # an ignore patch, as the datasets produce
    assert len(mask.unique()) >= 3
    return {"image": image, "mask": mask, "path": "loveda/1.png"}


@pytest.fixture(scope="module")
def four_band(datasets, loveda_sample):
    """RGB + a 4th band (the red band of another real tile, standing in for NIR)."""
    other = np.asarray(Image.open(datasets / "loveda" / "images_png" / "2.png").convert("RGB"))
    band = torch.from_numpy(other[:CROP, :CROP, 0].copy()).float()[None] / 255.0
    return {**loveda_sample, "image": torch.cat([loveda_sample["image"], band])}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- random_resize


def test_random_resize_shapes_values_and_passthrough(loveda_sample):
    values = set(loveda_sample["mask"].unique().tolist())
    sizes = set()
    for seed in range(12):
        out = random_resize(loveda_sample, generator=_gen(seed))
        image, mask = out["image"], out["mask"]
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        assert image.shape[0] == 3 and tuple(image.shape[1:]) == tuple(mask.shape)
        h, w = mask.shape
        assert h == w  # one factor for both sides
        assert round(0.5 * CROP) <= h <= round(2.0 * CROP)
        assert set(mask.unique().tolist()) <= values  # nearest: no new labels
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert out["path"] == "loveda/1.png"
        sizes.add(h)
    assert len(sizes) > 5
    assert loveda_sample["image"].shape == (3, CROP, CROP)  # input untouched


def test_random_resize_sizes_follow_the_factor(loveda_sample):
    tall = {**loveda_sample, "image": loveda_sample["image"][:, :, :96], "mask": loveda_sample["mask"][:, :96]}
    assert random_resize(tall, ratio_range=(1.5, 1.5))["mask"].shape == (192, 144)
    assert random_resize(tall, ratio_range=(0.5, 0.5))["image"].shape == (3, 64, 48)
    # mmcv keep_ratio rule: square scale → long side = ratio × scale
    assert random_resize(tall, ratio_range=(1.0, 1.0), scale=512)["mask"].shape == (512, 384)
    assert random_resize(tall, ratio_range=(0.5, 0.5), scale=(512, 512))["mask"].shape == (256, 192)
    # ADE20K-style (2048, 512): the short side hits 512 first; 128 × 512 / 96 = 682.67 → 683
    assert random_resize(tall, ratio_range=(1.0, 1.0), scale=(2048, 512))["mask"].shape == (683, 512)
    assert random_resize(tall, ratio_range=(1.0, 1.0), scale=(512, 2048))["mask"].shape == (683, 512)


def test_random_resize_ratio_one_is_identity(loveda_sample):
    out = random_resize(loveda_sample, ratio_range=(1.0, 1.0), generator=_gen(0))
    assert torch.equal(out["image"], loveda_sample["image"])
    assert torch.equal(out["mask"], loveda_sample["mask"])


def test_random_resize_mask_is_nearest_on_pixel_centres(loveda_sample):
    import torch.nn.functional as F

    mask = loveda_sample["mask"]
    for ratio in (0.55, 0.8, 1.3, 1.9):
        out = random_resize(loveda_sample, ratio_range=(ratio, ratio))["mask"]
        n = out.shape[0]
        ref = F.interpolate(mask[None, None].float(), size=(n, n), mode="nearest-exact")[0, 0].long()
        # an output centre exactly on an input pixel edge is a tie that float rounding may send either way
        tie = (2 * torch.arange(n) + 1) * CROP % (2 * n) == 0
        keep = ~(tie[:, None] | tie[None, :])
        assert torch.equal(out[keep], ref[keep])


def test_random_resize_image_matches_pil_bilinear(loveda_sample):
    # PIL's bilinear resize antialiases when shrinking: an independent reference for both directions
    rgb = (loveda_sample["image"] * 255).round().byte().permute(1, 2, 0).numpy()
    for ratio in (0.5, 0.75, 1.5):
        out = random_resize(loveda_sample, ratio_range=(ratio, ratio))["image"]
        size = (out.shape[2], out.shape[1])
        ref = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)).astype(np.float32) / 255.0
        diff = np.abs(out.permute(1, 2, 0).numpy() - ref)
        assert diff.max() <= 2.5 / 255 and diff.mean() < 0.5 / 255


def test_random_resize_deterministic(loveda_sample):
    a = random_resize(loveda_sample, generator=_gen(7))
    b = random_resize(loveda_sample, generator=_gen(7))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    torch.manual_seed(11)
    c = random_resize(loveda_sample)
    torch.manual_seed(11)
    d = random_resize(loveda_sample)
    assert torch.equal(c["image"], d["image"]) and torch.equal(c["mask"], d["mask"])


def test_random_resize_without_mask_and_float64(loveda_sample):
    out = random_resize({"image": loveda_sample["image"].double()}, ratio_range=(0.5, 0.5))
    assert set(out) == {"image"} and out["image"].dtype == torch.float64 and out["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("bad", [(0.0, 2.0), (-1.0, 1.0), (2.0, 1.0), (math.nan, 1.0), (1.0, math.inf), (1.0,), "ab"])
def test_random_resize_rejects_bad_ratio_range(loveda_sample, bad):
    with pytest.raises(ValueError, match="ratio_range"):
        random_resize(loveda_sample, ratio_range=bad)
    with pytest.raises(ValueError, match="ratio_range"):
        RandomResize(ratio_range=bad)


def test_random_resize_rejects_bad_inputs(loveda_sample):
    with pytest.raises(ValueError, match="scale"):
        random_resize(loveda_sample, scale=0)
    with pytest.raises(ValueError, match="scale"):
        RandomResize(scale=(512, 512, 3))
    with pytest.raises(ValueError, match="mask"):
        random_resize({**loveda_sample, "mask": loveda_sample["mask"][:64]})
    with pytest.raises(TypeError, match="floating-point"):
        random_resize({**loveda_sample, "image": (loveda_sample["image"] * 255).byte()})
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        random_resize({**loveda_sample, "image": loveda_sample["image"][0]})


def test_random_resize_class(loveda_sample):
    t = RandomResize(ratio_range=(0.5, 2.0), scale=512)
    assert repr(t) == "RandomResize(ratio_range=(0.5, 2.0), scale=512)"
    a = t(loveda_sample, generator=_gen(3))
    b = random_resize(loveda_sample, (0.5, 2.0), generator=_gen(3), scale=512)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


# --------------------------------------------------------------------------- photometric_distortion


def _reference(image: torch.Tensor, seed: int, delta=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=36.0):
    """The documented steps in numpy + scikit-image's HSV, from the module's draw layout (5 coins, 4 magnitudes)."""
    from skimage.color import hsv2rgb, rgb2hsv

    u = torch.rand(9, generator=_gen(seed), dtype=torch.float64).numpy()
    x = image.double().numpy()
    if u[0] < 0.5:
        x = np.clip(x + (-delta + 2 * delta * u[5]), 0, 1)
    alpha = contrast[0] + (contrast[1] - contrast[0]) * u[6]
    if u[1] < 0.5 and u[2] < 0.5:
        x = np.clip(x * alpha, 0, 1)
    if x.shape[0] == 3 and (u[3] < 0.5 or u[4] < 0.5):
        hsv = rgb2hsv(x.transpose(1, 2, 0))
        if u[3] < 0.5:
            hsv[..., 1] = np.clip(hsv[..., 1] * (saturation[0] + (saturation[1] - saturation[0]) * u[7]), 0, 1)
        if u[4] < 0.5:
            hsv[..., 0] = (hsv[..., 0] + (-hue + 2 * hue * u[8]) / 360.0) % 1.0
        x = np.clip(hsv2rgb(hsv).transpose(2, 0, 1), 0, 1)
    if u[1] >= 0.5 and u[2] < 0.5:
        x = np.clip(x * alpha, 0, 1)
    return x


def test_photometric_matches_reference(loveda_sample, four_band):
    changed = 0
    for seed in range(24):
        for sample in (loveda_sample, four_band):
            out = photometric_distortion(sample, generator=_gen(seed))["image"]
            np.testing.assert_allclose(out.numpy(), _reference(sample["image"], seed), atol=2e-5)
            changed += not torch.equal(out, sample["image"])
    assert changed > 30


def test_photometric_range_mask_and_passthrough(loveda_sample):
    for seed in range(16):
        out = photometric_distortion(loveda_sample, generator=_gen(seed))
        assert out["image"].shape == (3, CROP, CROP) and out["image"].dtype == torch.float32
        assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
        assert out["mask"] is loveda_sample["mask"] and out["path"] == loveda_sample["path"]


def test_photometric_four_bands_brightness_contrast_only(four_band):
    # every band goes through the same monotone map x -> clamp(clamp(x + b) * a): equal inputs stay equal
    # and the order of values is kept, across bands; hue/saturation would mix the bands
    image = four_band["image"].clone()
    image[3] = image[0]
    flat = image.flatten()
    order = flat.argsort()
    colour_mixed = False
    for seed in range(24):
        out = photometric_distortion({"image": image}, generator=_gen(seed))["image"]
        assert torch.equal(out[3], out[0])
        assert bool((out.flatten()[order].diff() >= -1e-7).all())
        rgb = photometric_distortion({"image": image[:3]}, generator=_gen(seed))["image"]
        colour_mixed |= not bool((rgb.flatten()[image[:3].flatten().argsort()].diff() >= -1e-7).all())
    assert colour_mixed  # the RGB path does apply saturation/hue on some seeds


def test_photometric_neutral_parameters_are_identity(loveda_sample):
    for seed in range(8):
        out = photometric_distortion(
            loveda_sample, 0.0, (1.0, 1.0), (1.0, 1.0), 0.0, generator=_gen(seed)
        )  # every step applied or not, all neutral
        torch.testing.assert_close(out["image"], loveda_sample["image"], atol=2e-6, rtol=0)


def test_photometric_deterministic(loveda_sample):
    a = photometric_distortion(loveda_sample, generator=_gen(5))["image"]
    b = photometric_distortion(loveda_sample, generator=_gen(5))["image"]
    assert torch.equal(a, b)
    torch.manual_seed(2)
    c = photometric_distortion(loveda_sample)["image"]
    torch.manual_seed(2)
    d = photometric_distortion(loveda_sample)["image"]
    assert torch.equal(c, d)
    outs = {photometric_distortion(loveda_sample, generator=_gen(s))["image"].sum().item() for s in range(8)}
    assert len(outs) > 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"brightness_delta": -0.1}, "brightness_delta"),
        ({"brightness_delta": math.nan}, "brightness_delta"),
        ({"contrast_range": (1.5, 0.5)}, "contrast_range"),
        ({"contrast_range": (-0.1, 1.0)}, "contrast_range"),
        ({"saturation_range": (math.nan, 1.0)}, "saturation_range"),
        ({"saturation_range": (0.5,)}, "saturation_range"),
        ({"hue_delta": 200}, "hue_delta"),
        ({"hue_delta": -1}, "hue_delta"),
    ],
)
def test_photometric_rejects_bad_parameters(loveda_sample, kwargs, match):
    with pytest.raises(ValueError, match=match):
        photometric_distortion(loveda_sample, **kwargs)
    with pytest.raises(ValueError, match=match):
        PhotometricDistortion(**kwargs)


def test_photometric_rejects_integer_images(loveda_sample):
    with pytest.raises(TypeError, match="floating-point"):
        photometric_distortion({"image": (loveda_sample["image"] * 255).byte()})


def test_photometric_class(loveda_sample):
    t = PhotometricDistortion()
    assert repr(t) == (
        "PhotometricDistortion(brightness_delta=0.12549, contrast_range=(0.5, 1.5), "
        "saturation_range=(0.5, 1.5), hue_delta=36)"
    )
    a = t(loveda_sample, generator=_gen(4))["image"]
    b = photometric_distortion(loveda_sample, generator=_gen(4))["image"]
    assert torch.equal(a, b)
