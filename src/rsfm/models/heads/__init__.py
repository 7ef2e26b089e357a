"""Task heads: each owns its layers, loss, metrics and sample keys (:class:`~rsfm.models.heads.base.Head`)."""

from rsfm.models.heads.base import Features, Head, HeadMetrics
from rsfm.models.heads.change import ChangeHead
from rsfm.models.heads.classification import ClassificationHead
from rsfm.models.heads.detection import FasterRCNNHead
from rsfm.models.heads.instance_segmentation import MaskRCNNHead as MaskRCNNHead
from rsfm.models.heads.rotated_detection import OrientedRCNNHead
from rsfm.models.heads.segmentation import FCNHead, SegmentationHead, UperNetHead

__all__ = [
    "ChangeHead",
    "ClassificationHead",
    "FCNHead",
    "FasterRCNNHead",
    "Features",
    "Head",
    "HeadMetrics",
    "OrientedRCNNHead",
    "SegmentationHead",
    "UperNetHead",
]
