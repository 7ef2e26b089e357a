"""``data.decode: device``: JPEGs decoded and images augmented on the training device, on real AID images.

On a CPU device the device pipeline must give the worker pipeline's batches bit for bit (same
crops and flips from the same seeded draws, same decoder, same resize kernel), with every
unreadable file skipped and counted with the same reason, from a folder and from a corpus of
JPEG tiles, in the training process and in loader workers.
"""

from pathlib import Path

import pytest
import torch
from PIL import Image
from shard_helpers import folder_corpus

from rsfm.data.device_decode import DeferredAugment, collate_deferred, decode_and_augment
from rsfm.data.pretrain import PretrainDataModule
from rsfm.engine.data import LightningData

SETTINGS = {"img_size": 48, "batch_size": 8, "seed": 7, "pin_memory": False, "test_fraction": 0.0}


@pytest.fixture(scope="module")
def tree(aid_subset, damaged_jpeg) -> Path:
    """30 AID JPEGs of three classes, plus the files the device path must tell apart.

    ``Beach``: handed back to the workers, a PNG, a CMYK JPEG, a truncated JPEG (its first
    half) and a JPEG with bytes after its end-of-image marker; deferred to the device, a
    greyscale JPEG, a JPEG whose entropy data is overwritten (header and end marker intact,
    so only the decoder finds it broken) and one damaged in its middle (libjpeg-turbo decodes
    it with a "Corrupt JPEG data" warning: rsfm's strict decoder refuses it).
    """
    root = aid_subset(("Beach", "Forest", "Port"), 10, copy=True)
    source = sorted((root / "Beach").glob("*.jpg"))[0]
    data = source.read_bytes()
    with Image.open(source) as img:
        img.save(root / "Beach" / "as_png.png")
        img.convert("L").save(root / "Beach" / "grey.jpg", quality=90)
        img.convert("CMYK").save(root / "Beach" / "cmyk.jpg", quality=90)
    (root / "Beach" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "Beach" / "trailing.jpg").write_bytes(data + b"trailing bytes")
    start = data.index(b"\xff\xda")  # start of scan: header before it, entropy-coded data after
    (root / "Beach" / "garbled.jpg").write_bytes(data[: start + 2] + b"\x00\x01" * 64 + data[-2:])
    (root / "Beach" / "damaged.jpg").write_bytes(damaged_jpeg(source))
    return root


def _epoch(dm: PretrainDataModule) -> list[dict]:
    """One training epoch, finished on the CPU device as the engine finishes it."""
    dm.setup("fit")
    adapter = LightningData(dm)
    return [adapter.transfer_batch_to_device(batch, torch.device("cpu"), 0) for batch in dm.train_dataloader()]


def _same_epochs(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got, strict=True):
        assert set(a) == set(b)
        assert torch.equal(a["index"], b["index"])
        assert a["image"].dtype == b["image"].dtype == torch.float32
        assert torch.equal(a["image"], b["image"])
        assert sorted(a["skipped"]) == sorted(b["skipped"])
        if "id" in a:
            assert torch.equal(a["id"], b["id"])


@pytest.mark.parametrize("workers", [0, 1])
def test_device_decoding_gives_the_worker_batches_on_cpu(tree: Path, workers: int) -> None:
    expected = _epoch(PretrainDataModule(str(tree), num_workers=0, **SETTINGS))
    device = PretrainDataModule(str(tree), num_workers=workers, decode="device", **SETTINGS)
    got = _epoch(device)
    _same_epochs(expected, got)
    skipped = dict(s for batch in got for s in batch["skipped"])
    # the truncated file is decoded (and rejected) in the worker, the garbled one on the device and then the CPU
    assert {Path(p).name: r for p, r in skipped.items()} == {
        "truncated.jpg": "truncated",
        "garbled.jpg": "unreadable",
        "damaged.jpg": "corrupt",
    }
    # what travelled undecoded: the plain JPEGs; decoded in the worker: the PNG, CMYK, truncated, trailing files
    raw = {
        Path(name).name: item.ndim
        for batch in device.train_dataloader()
        for name, item in zip(batch["name"], batch["raw"], strict=True)
    }
    assert raw["as_png.png"] == raw["cmyk.jpg"] == raw["trailing.jpg"] == 3
    assert raw["grey.jpg"] == raw["garbled.jpg"] == raw["damaged.jpg"] == 1
    assert sum(ndim == 1 for ndim in raw.values()) >= 20


def test_corpus_of_jpeg_tiles_decodes_on_device_alike(tree: Path, tmp_path: Path) -> None:
    corpus = folder_corpus(tree, tmp_path / "corpus", chunk_size=16)
    expected = _epoch(PretrainDataModule(shards=str(corpus), num_workers=0, **SETTINGS))
    got = _epoch(PretrainDataModule(shards=str(corpus), num_workers=0, decode="device", **SETTINGS))
    _same_epochs(expected, got)
    assert all("id" in batch for batch in got)
    assert any(reason == "truncated" for batch in got for _, reason in batch["skipped"])


def test_later_epochs_and_hflip_follow_the_seed(tree: Path) -> None:
    """Epoch 1 draws other crops than epoch 0, the same in both pipelines; flips happen."""
    workers = PretrainDataModule(str(tree), num_workers=0, **SETTINGS)
    device = PretrainDataModule(str(tree), num_workers=0, decode="device", **SETTINGS)
    for dm in (workers, device):
        dm.setup("fit")
    w_ds, d_ds = workers.datasets["train"], device.datasets["train"]
    flips, crops = 0, {0: [], 1: []}
    for index in range(len(d_ds)):
        for epoch in (0, 1):
            item = d_ds[(index, epoch)]
            if "skipped" in item:
                continue
            flips += int(item["params"][4])
            crops[epoch].append(item["params"][:4].tolist())
            batch = decode_and_augment(collate_deferred([item]), "cpu", SETTINGS["img_size"])
            expected = w_ds[(index, epoch)]
            if "skipped" in expected:  # garbled.jpg: only the device finds out
                assert batch["skipped"] == [expected["skipped"]] and batch["image"].shape[0] == 0
                continue
            assert torch.equal(batch["image"][0], expected["image"])
    assert flips > 0
    assert len(crops[0]) == len(crops[1]) > 20 and crops[0] != crops[1]


def test_all_skipped_batch_is_empty_with_the_image_shape() -> None:
    batch = collate_deferred([{"skipped": ("a.jpg", "truncated"), "index": 3}])
    out = decode_and_augment(batch, "cpu", 32, num_channels=4)
    assert out["image"].shape == (0, 4, 32, 32) and out["index"].shape == (0,)
    assert out["skipped"] == [("a.jpg", "truncated")]


def test_decode_option_is_checked(tree: Path) -> None:
    with pytest.raises(ValueError, match="data.decode"):
        PretrainDataModule(str(tree), decode="gpu")
    with pytest.raises(ValueError, match="data.scale"):
        DeferredAugment(32, scale=(0.5, 0.2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_cuda_decoding_is_close_to_the_worker_batches(tree: Path) -> None:
    """On a GPU (nvJPEG, CUDA resize) the batches match the workers' up to the decoders' rounding.

    Same files in the same order, same crops and flips, same skipped files; pixels differ only by
    the IDCT and resize rounding of the two implementations: mean absolute difference under
    2/255 and PSNR over 30 dB per batch (values in [0, 1]).
    """
    expected = _epoch(PretrainDataModule(str(tree), num_workers=0, **SETTINGS))
    dm = PretrainDataModule(str(tree), num_workers=0, decode="device", **SETTINGS)
    dm.setup("fit")
    adapter = LightningData(dm)
    cuda = torch.device("cuda")
    got = [adapter.transfer_batch_to_device(batch, cuda, 0) for batch in dm.train_dataloader()]
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got, strict=True):
        assert b["image"].device.type == "cuda" and b["image"].dtype == torch.float32
        assert torch.equal(a["index"], b["index"].cpu())
        assert sorted(a["skipped"]) == sorted(b["skipped"])
        diff = a["image"] - b["image"].cpu()
        assert diff.abs().mean() < 2 / 255
        assert 10 * torch.log10(1 / diff.square().mean()) > 30
