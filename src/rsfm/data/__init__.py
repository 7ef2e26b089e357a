"""Data: image reading, folder datasets, transforms, statistics and datamodules."""

from .datamodule import ClassificationDataModule, EpochSampler, PretrainDataModule
from .folder import (
    ImageFolder,
    LabeledImageFolder,
    SkipReport,
    SkipReportCallback,
    check_image_root,
    collate_skipping,
    scan_folder,
    stratified_split,
)
from .io import (
    IMAGE_EXTENSIONS,
    BadImageError,
    RasterRule,
    UnsupportedImageError,
    read_image,
)
from .stats import compute_mean_std, format_stats
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "ClassificationDataModule",
    "EpochSampler",
    "ImageFolder",
    "LabeledImageFolder",
    "PretrainDataModule",
    "RasterRule",
    "SkipReport",
    "SkipReportCallback",
    "UnsupportedImageError",
    "check_image_root",
    "collate_skipping",
    "compute_mean_std",
    "eval_transform",
    "finetune_transform",
    "format_stats",
    "pretrain_transform",
    "read_image",
    "scan_folder",
    "stratified_split",
]
