"""Horizontal object-detection data: one module per dataset layout, a shared datamodule."""

from rsfm.data.detection.coco import COCODataModule, coco_records
from rsfm.data.detection.common import (
    DetectionDataModule,
    DetectionDataset,
    DetectionRecord,
    TrainTransform,
    collate_lists,
    random_crop,
    random_flip,
)
from rsfm.data.detection.dior import DIOR_CLASSES, DIORDataModule, dior_records
from rsfm.data.detection.dota import DOTA_V1_CLASSES, DOTADataModule, dota_records, parse_dota_txt
from rsfm.data.detection.voc import VOCDataModule, parse_voc_xml, voc_records

__all__ = [
    "DIOR_CLASSES",
    "DIORDataModule",
    "dior_records",
    "DOTA_V1_CLASSES",
    "COCODataModule",
    "DOTADataModule",
    "DetectionDataModule",
    "DetectionDataset",
    "DetectionRecord",
    "TrainTransform",
    "VOCDataModule",
    "coco_records",
    "collate_lists",
    "dota_records",
    "parse_dota_txt",
    "parse_voc_xml",
    "random_crop",
    "random_flip",
    "voc_records",
]
