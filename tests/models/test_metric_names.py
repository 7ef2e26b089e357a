"""Every head's metric set lists, in ``names``, exactly the scalars its ``compute()`` returns.

The task checks ``model.monitor`` against ``names`` before training, so a name missing there
would refuse a valid monitor, and a stale one would accept a metric that is never logged.
"""

from __future__ import annotations

import pytest
import torch

from rsfm.models.heads.change import ChangeMetricSet
from rsfm.models.heads.classification import ClassificationMetricSet
from rsfm.models.heads.detection import DetectionMetricSet
from rsfm.models.heads.segmentation import SegmentationMetricSet


def test_segmentation_classification_and_change_names_match_compute() -> None:
    mask = torch.tensor([[[0, 1], [2, 1]]])
    seg = SegmentationMetricSet(["a", "b", "c"])
    seg.update(mask.clone(), {"mask": mask})
    assert list(seg.compute()) == list(seg.names) == ["mIoU", "OA", "mF1"]

    cls = ClassificationMetricSet(["a", "b"])
    cls.update(torch.tensor([0, 1]), {"label": torch.tensor([0, 0])})
    assert list(cls.compute()) == list(cls.names)

    change = ChangeMetricSet()
    change_mask = torch.tensor([[[0, 1], [1, 1]]])
    change.update(change_mask.clone(), {"mask": change_mask, "id": ["p"]})
    assert sorted(change.compute()) == sorted(change.names)


@pytest.mark.parametrize("metric", ["voc12", "voc07", "coco"])
def test_detection_names_match_compute(metric: str) -> None:
    det = DetectionMetricSet(["plane", "ship"], metric=metric)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    preds = [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    batch = {"boxes": [box], "labels": [torch.tensor([0])], "difficult": [torch.tensor([False])]}
    det.update(preds, batch)
    scores = det.compute()
    assert sorted(scores) == sorted(det.names)
    assert scores["mAP50"] == pytest.approx(100.0)


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_rotated_detection_names_match_compute(metric: str) -> None:
    from rsfm.models.heads.rotated_detection import RotatedDetectionMetricSet

    det = RotatedDetectionMetricSet(["plane", "ship"], metric=metric)
    obb = torch.tensor([[20.0, 10.0, 16.0, 6.0, 0.4]])
    preds = [{"obbs": obb, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    batch = {"obbs": [obb], "labels": [torch.tensor([0])], "difficult": [torch.tensor([False])]}
    det.update(preds, batch)
    assert list(det.compute()) == list(det.names) == ["mAP50"]
    assert det.compute()["mAP50"] == pytest.approx(100.0)
