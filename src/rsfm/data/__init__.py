"""Data: image reading, datasets of every layout, transforms, statistics and datamodules.

Importing this package registers the built-in datamodules (``rsfm list datasets``). Its
modules import only the standard library, numpy, PIL and torch at module level, so recipes
are validated quickly; torchvision, rasterio, torchdata, LitData and pyarrow are imported when used.
"""

from rsfm.data import change, detection, instance, rotated, segmentation
from rsfm.data.base import IMAGENET_MEAN, IMAGENET_STD, DataInfo, DataModule
from rsfm.data.folder import ImageFolder, LabeledImageFolder, check_image_root, scan_folder
from rsfm.data.io import IMAGE_EXTENSIONS, BadImageError, RasterRule, UnsupportedImageError, read_image
from rsfm.data.multitask_module import MultiTaskDataModule
from rsfm.data.paired import PairedDataModule
from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.samplers import EpochSampler, KeyedDataset
from rsfm.data.scene import SceneClassificationDataModule
from rsfm.data.shards import ShardCorpus, ShardDataset
from rsfm.data.skips import SkipReport, collate_skipping
from rsfm.data.splits import seeded_split, split_names, stratified_split

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "DataInfo",
    "DataModule",
    "EpochSampler",
    "ImageFolder",
    "KeyedDataset",
    "LabeledImageFolder",
    "MultiTaskDataModule",
    "PairedDataModule",
    "PretrainDataModule",
    "RasterRule",
    "SceneClassificationDataModule",
    "ShardCorpus",
    "ShardDataset",
    "SkipReport",
    "UnsupportedImageError",
    "change",
    "check_image_root",
    "collate_skipping",
    "detection",
    "instance",
    "read_image",
    "rotated",
    "scan_folder",
    "seeded_split",
    "segmentation",
    "split_names",
    "stratified_split",
]
