"""Instance segmentation data: iSAID's PNG layout and COCO JSON, a shared datamodule."""

from rsfm.data.instance.coco import COCOInstanceDataModule, coco_instance_records, decode_segmentation
from rsfm.data.instance.common import (
    INSTANCE_BATCH_KEYS,
    InstanceDataset,
    InstanceRecord,
    InstanceSegmentationDataModule,
    InstanceTrainTransform,
    collate_instances,
    finalize_instances,
    masks_to_boxes,
    random_instance_crop,
    random_instance_flip,
)
from rsfm.data.instance.isaid import (
    ISAID_CLASSES,
    ISAID_COLOURS,
    ISAIDDataModule,
    decode_isaid,
    dota_class_name,
    isaid_records,
    read_isaid_annotations,
)

__all__ = [
    "INSTANCE_BATCH_KEYS",
    "ISAID_CLASSES",
    "ISAID_COLOURS",
    "COCOInstanceDataModule",
    "ISAIDDataModule",
    "InstanceDataset",
    "InstanceRecord",
    "InstanceSegmentationDataModule",
    "InstanceTrainTransform",
    "coco_instance_records",
    "collate_instances",
    "decode_isaid",
    "decode_segmentation",
    "dota_class_name",
    "finalize_instances",
    "isaid_records",
    "masks_to_boxes",
    "random_instance_crop",
    "random_instance_flip",
    "read_isaid_annotations",
]
