"""What every datamodule shares (rsfm.data.base): settings checked at once, DataInfo, folder checks."""

from pathlib import Path

import pytest

from rsfm.data import change, detection, instance, rotated, segmentation
from rsfm.data.base import IMAGENET_MEAN, IMAGENET_STD, DataInfo, DataModule, check_folder, default_stats
from rsfm.data.multitask_module import MultiTaskDataModule
from rsfm.data.paired import PairedDataModule
from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.scene import SceneClassificationDataModule
from rsfm.utils.errors import ConfigError, DataError
from rsfm.utils.registry import DATASETS

#: every built-in datamodule, with the extra arguments it needs besides ``root``
DATAMODULES = {
    PretrainDataModule: {},
    SceneClassificationDataModule: {},
    PairedDataModule: {"natural_root": "cifar10/train"},
    segmentation.LoveDADataModule: {"test_split": ["2"]},
    segmentation.DubaiDataModule: {"test_split": 3},
    segmentation.ISPRSDataModule: {"test_split": "test"},
    segmentation.SegmentationFolderDataModule: {"test_split": "test"},
    detection.VOCDataModule: {},
    detection.DOTADataModule: {},
    detection.COCODataModule: {"train_split": "train.json"},
    detection.DIORDataModule: {},
    change.LEVIRCDDataModule: {},
    change.CDDDataModule: {},
    change.OSCDDataModule: {},
    rotated.DOTARotatedDataModule: {},
    rotated.DIORRDataModule: {},
    rotated.FAIR1MDataModule: {},
    rotated.HRSC2016DataModule: {},
    rotated.RoLabelImgDataModule: {},
    rotated.HITUAVDataModule: {},
    rotated.YOLOOBBDataModule: {},
    instance.ISAIDDataModule: {},
    instance.COCOInstanceDataModule: {"train_split": "train.json"},
}
#: datamodules without one ``root`` (their folders are named per part)
OTHERS = {MultiTaskDataModule}


def test_every_registered_datamodule_is_listed_here() -> None:
    assert set(DATASETS) == {cls.__name__ for cls in (*DATAMODULES, *OTHERS)}
    assert all(issubclass(cls, DataModule) for cls in (*DATAMODULES, *OTHERS))
    # plain classes, not Lightning datamodules: the engine wraps them (rsfm.engine.data.LightningData)
    assert not any("lightning" in c.__module__ for cls in (*DATAMODULES, *OTHERS) for c in cls.__mro__)


def test_multitask_subset_errors_name_the_subset(tmp_path: Path, datasets: Path) -> None:
    missing = tmp_path / "nowhere"
    spec = {"class_path": "ISAIDDOTASource", "init_args": {"isaid_root": str(missing), "dota_root": str(missing)}}
    with pytest.raises(DataError, match=f"data.subsets.sota: .*{missing}"):
        MultiTaskDataModule({"sota": spec})
    with pytest.raises(ConfigError, match="data.subsets.x.class_path: 'Nope' is not a multi-task source.*SAMRSSource"):
        MultiTaskDataModule({"x": {"class_path": "Nope"}})
    with pytest.raises(ConfigError, match="data.subsets is empty"):
        MultiTaskDataModule({})


@pytest.mark.parametrize("cls", list(DATAMODULES), ids=lambda c: c.__name__)
def test_missing_root_is_a_data_error_naming_data_root(cls: type, tmp_path: Path, datasets: Path) -> None:
    kwargs = {k: str(datasets / v) if k.endswith("root") else v for k, v in DATAMODULES[cls].items()}
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data.root: folder not found: {missing}"):
        cls(str(missing), **kwargs)
    with pytest.raises(DataError, match="data.root is required"):
        cls("", **kwargs)


def test_check_folder(tmp_path: Path) -> None:
    assert check_folder(tmp_path) == tmp_path
    with pytest.raises(DataError, match="data.root is required"):
        check_folder(None)
    with pytest.raises(DataError, match="data.natural_root: folder not found"):
        check_folder(tmp_path / "x", "data.natural_root")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="is a file, expected a folder"):
        check_folder(tmp_path / "f.txt")


def test_default_stats() -> None:
    assert default_stats(3, None, None) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert default_stats(1, [0.5], [0.25]) == ([0.5], [0.25])
    with pytest.raises(DataError, match="data.mean and data.std are required for 4-band input"):
        default_stats(4, None, None)
    with pytest.raises(DataError, match="need 2 values"):
        default_stats(2, [0.5], [0.2])
    with pytest.raises(DataError, match="data.std must be positive"):
        default_stats(3, [0.5] * 3, [0.2, 0.0, 0.2])


def test_data_info_to_dict() -> None:
    info = DataInfo(classes=["a", "b"], palette=[(1, 2, 3), (4, 5, 6)], sample_keys=("image", "mask"))
    d = info.to_dict()
    assert d["palette"] == [[1, 2, 3], [4, 5, 6]] and d["sample_keys"] == ["image", "mask"]
    assert d["mean"] == list(IMAGENET_MEAN) and d["num_channels"] == 3 and d["raster_scale"] == "auto"
    assert DataInfo().to_dict()["palette"] is None


def test_base_datamodule_defaults() -> None:
    dm = DataModule(batch_size=2, seed=None)
    assert dm.seed == 0 and dm.world() == (1, 0) and dm.info().sample_keys == ("image",)
    assert dm.scan_skipped == [] and dm.collate() is None
    assert dm.prepare_data() is None and dm.teardown() is None
    with pytest.raises(ValueError, match="data.batch_size and data.eval_batch_size"):
        DataModule(eval_batch_size=0)
