"""Real training batches for the model tests: a few small crops of each task's dataset.

Each fixture is built once per session from ``../shared/datasets`` through the datamodule of
its layout, and returns ``(batch, info)``: the first training batch (seeded crops, images in
[0, 1]) and the datamodule's :class:`~rsfm.data.base.DataInfo`. Tests must not modify them.
"""

from pathlib import Path

import pytest


def _first_batch(dm):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchdata's deprecation notice
        return next(iter(dm.train_dataloader()))


@pytest.fixture(scope="session")
def loveda_batch(datasets: Path):
    """4 LoveDA crops of 64 px with their masks (7 classes, 255 = no-data)."""
    from rsfm.data.segmentation.loveda import LoveDADataModule

    dm = LoveDADataModule(
        str(datasets / "loveda"), crop_size=64, crops_per_image=4, batch_size=4, test_split=["2"], seed=0
    )
    return _first_batch(dm), dm.info()


@pytest.fixture(scope="session")
def nepu_batch(datasets: Path):
    """2 NEPU-OWOD crops of 96 px, each holding an oil well (lists of images, boxes, labels)."""
    from rsfm.data.detection.voc import VOCDataModule

    dm = VOCDataModule(str(datasets / "nepu_owod"), crop_size=96, batch_size=2, object_crop_prob=1.0, seed=0)
    batch = _first_batch(dm)
    assert all(len(b) for b in batch["boxes"])
    return batch, dm.info()


@pytest.fixture(scope="session")
def levir_batch(datasets: Path):
    """4 LEVIR-CD crop pairs of 64 px with their change masks, some change in the batch."""
    from rsfm.data.change.levir_cd import LEVIRCDDataModule

    dm = LEVIRCDDataModule(str(datasets / "levir_cd"), crop_size=64, batch_size=4, seed=0)
    batch = _first_batch(dm)
    assert 0 < int(batch["mask"].sum()) < batch["mask"].numel()
    return batch, dm.info()


@pytest.fixture(scope="session")
def aid_batch(aid_subset):
    """AID images of 4 classes at 64 px, in file order (no augmentation), with their labels."""
    from rsfm.data.scene import SceneClassificationDataModule

    root = aid_subset(["Airport", "Beach", "Forest", "Parking"], 3)
    dm = SceneClassificationDataModule(
        str(root), img_size=64, val_fraction=0.0, test_fraction=0.25, augment=False, batch_size=16, num_workers=0
    )
    batch = _first_batch(dm)
    assert len(set(batch["label"].tolist())) == 4
    return batch, dm.info()
