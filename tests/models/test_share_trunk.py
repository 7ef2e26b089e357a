"""share_trunk: MTP's decoders shared between datasets, with per-dataset final predictors."""

import pytest
import torch

from rsfm.data.base import DataInfo
from rsfm.models.heads.base import share_trunk
from rsfm.models.heads.rotated_detection import OrientedRCNNHead
from rsfm.models.heads.segmentation import FCNHead, UperNetHead


def _built(cls, classes, **kwargs):
    head = cls(**kwargs)
    head.build([32] * 4, [4, 8, 16, 32], DataInfo(classes=classes, crop_size=64))
    return head


def test_upernet_shares_all_but_its_classifier() -> None:
    a = _built(UperNetHead, ["bg", "x", "y"], channels=16)
    b = _built(UperNetHead, ["bg", "p"], channels=16)
    share_trunk(b, a)
    assert b.decoder is not a.decoder  # descended into: the classifier lives in the decoder
    for name, child in a.decoder.named_children():
        assert (getattr(b.decoder, name) is child) == (name != "classifier"), name
    assert b.decoder.classifier is not a.decoder.classifier
    assert b.decoder.classifier.out_channels == 2 and a.decoder.classifier.out_channels == 3
    shared = {id(p) for p in a.parameters()} & {id(p) for p in b.parameters()}
    own_b = {id(p) for p in b.decoder.classifier.parameters()}
    assert shared and not (shared & own_b)
    # every parameter of b other than its classifier is a's
    assert {id(p) for p in b.parameters()} - own_b <= {id(p) for p in a.parameters()}
    # the shared trunk trains once: a gradient through b reaches a's layers
    maps = [torch.randn(2, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    b.decoder(maps).sum().backward()
    first = next(a.decoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_oriented_rcnn_keeps_per_dataset_cls_and_reg() -> None:
    a = _built(OrientedRCNNHead, ["a", "b"], fpn_channels=16, fc_channels=32)
    b = _built(OrientedRCNNHead, ["c", "d", "e"], fpn_channels=16, fc_channels=32)
    share_trunk(b, a)
    assert b.fpn is a.fpn and b.rpn is a.rpn and b.roi_head.fc1 is a.roi_head.fc1
    assert b.roi_head.cls is not a.roi_head.cls and b.roi_head.reg is not a.roi_head.reg
    assert b.roi_head.cls.out_features == 4 and a.roi_head.cls.out_features == 3


def test_errors() -> None:
    a = _built(UperNetHead, ["bg", "x"], channels=16)
    with pytest.raises(TypeError, match="UperNetHead"):
        share_trunk(_built(FCNHead, ["bg", "x"], channels=16), a)

    class Bad(UperNetHead):
        predictors = ("decoder.nothing",)

    bad = _built(Bad, ["bg", "x"], channels=16)
    with pytest.raises(ValueError, match=r"decoder\.nothing"):
        share_trunk(bad, _built(Bad, ["bg", "x"], channels=16))
