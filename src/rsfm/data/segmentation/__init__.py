"""Semantic-segmentation data: one module per dataset layout, a shared datamodule."""

from rsfm.data.segmentation.common import IGNORE_INDEX, ColourTable, SegmentationDataModule, colourise
from rsfm.data.segmentation.dubai import DUBAI_COLOURS, DubaiDataModule
from rsfm.data.segmentation.folder import SegmentationFolderDataModule
from rsfm.data.segmentation.isprs import ISPRS_COLOURS, ISPRSDataModule
from rsfm.data.segmentation.loveda import LOVEDA_CLASSES, LoveDADataModule

__all__ = [
    "DUBAI_COLOURS",
    "IGNORE_INDEX",
    "ISPRS_COLOURS",
    "LOVEDA_CLASSES",
    "ColourTable",
    "DubaiDataModule",
    "ISPRSDataModule",
    "LoveDADataModule",
    "SegmentationDataModule",
    "SegmentationFolderDataModule",
    "colourise",
]
