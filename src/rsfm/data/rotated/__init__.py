"""Rotated (oriented) object-detection data: one module per layout, a shared datamodule, scene splitting.

Samples are ``{'image', 'obbs', 'polygons', 'labels', 'difficult', 'id'}`` with ``obbs``
``(N, 5)`` ``(cx, cy, w, h, theta)`` in pixels and radians and ``polygons`` ``(N, 8)`` their
source corners (:mod:`rsfm.data.rotated.common`). Layouts:
DOTA v1.0/1.5/2.0 (:class:`DOTARotatedDataModule`), DIOR-R (:class:`DIORRDataModule`),
FAIR1M (:class:`FAIR1MDataModule`), HRSC2016 (:class:`HRSC2016DataModule`), roLabelImg and
HIT-UAV (:class:`RoLabelImgDataModule`, :class:`HITUAVDataModule`) and ultralytics YOLO-OBB
(:class:`YOLOOBBDataModule`). :mod:`rsfm.data.rotated.split` cuts large scenes into
overlapping patches as the DOTA devkit does.
"""

from rsfm.data.rotated.common import (
    ROTATED_BATCH_KEYS,
    RotatedDetectionDataModule,
    RotatedDetectionDataset,
    RotatedRecord,
    RotatedTrainTransform,
    clip_polygons,
    collate_rotated,
    make_rotated_record,
    polygons_to_obbs,
    random_flip_rotate,
    random_rotated_crop,
)
from rsfm.data.rotated.dior_r import DIORRDataModule, dior_r_records
from rsfm.data.rotated.dota import (
    DOTA_CLASSES,
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    DOTA_V15_CLASSES,
    DOTARotatedDataModule,
    dota_obb_records,
)
from rsfm.data.rotated.fair1m import FAIR1M_CLASSES, FAIR1MDataModule, fair1m_records, parse_fair1m_xml
from rsfm.data.rotated.hrsc import HRSC_CLASSES, HRSC2016DataModule, hrsc_records, parse_hrsc_xml
from rsfm.data.rotated.rolabelimg import (
    HIT_UAV_CLASSES,
    HITUAVDataModule,
    RoLabelImgDataModule,
    parse_rolabelimg_xml,
    rolabelimg_records,
)
from rsfm.data.rotated.split import (
    parse_patch_name,
    patch_name,
    patch_to_source,
    patch_windows,
    split_dataset,
    split_image,
    split_record,
)
from rsfm.data.rotated.yolo_obb import YOLOOBBDataModule, parse_yolo_obb_txt, read_yolo_names, yolo_obb_records

__all__ = [
    "DIORRDataModule",
    "DOTARotatedDataModule",
    "DOTA_CLASSES",
    "DOTA_V15_CLASSES",
    "DOTA_V1_CLASSES",
    "DOTA_V2_CLASSES",
    "FAIR1MDataModule",
    "FAIR1M_CLASSES",
    "HITUAVDataModule",
    "HIT_UAV_CLASSES",
    "HRSC2016DataModule",
    "HRSC_CLASSES",
    "ROTATED_BATCH_KEYS",
    "RoLabelImgDataModule",
    "RotatedDetectionDataModule",
    "RotatedDetectionDataset",
    "RotatedRecord",
    "RotatedTrainTransform",
    "YOLOOBBDataModule",
    "clip_polygons",
    "collate_rotated",
    "dior_r_records",
    "dota_obb_records",
    "fair1m_records",
    "hrsc_records",
    "make_rotated_record",
    "parse_fair1m_xml",
    "parse_hrsc_xml",
    "parse_patch_name",
    "parse_rolabelimg_xml",
    "parse_yolo_obb_txt",
    "patch_name",
    "patch_windows",
    "patch_to_source",
    "polygons_to_obbs",
    "random_flip_rotate",
    "random_rotated_crop",
    "read_yolo_names",
    "rolabelimg_records",
    "split_dataset",
    "split_image",
    "split_record",
    "yolo_obb_records",
]
