"""Oriented R-CNN's parts: anchors, box coders, assignment and sampling, oriented RPN, rotated RoI head, losses.

Xie et al., "Oriented R-CNN for Object Detection", ICCV 2021. The registered head that
assembles them is :class:`rsfm.models.heads.rotated_detection.OrientedRCNNHead`.

- :mod:`~rsfm.models.rotated.anchors`: horizontal anchors per pyramid level.
- :mod:`~rsfm.models.rotated.coders`: :class:`MidpointOffsetCoder` (the RPN's six deltas) and
  :class:`DeltaXYWHTCoder` (the RoI head's five deltas).
- :mod:`~rsfm.models.rotated.sampling`: max-IoU assignment and random sampling.
- :mod:`~rsfm.models.rotated.rpn`: :class:`OrientedRPN`.
- :mod:`~rsfm.models.rotated.roi_head`: :class:`RotatedRoIHead`.
- :mod:`~rsfm.models.rotated.losses`: both stages' losses.
- :mod:`~rsfm.models.rotated.postprocess`: class-wise rotated NMS, merging of tiles.

Boxes are ``(cx, cy, w, h, θ)`` in pixels and radians, ``le90`` (:mod:`rsfm.ops.obb`).

.. versionadded:: 0.3
"""

from rsfm.models.rotated.coders import DeltaXYWHTCoder, MidpointOffsetCoder
from rsfm.models.rotated.roi_head import RotatedRoIHead
from rsfm.models.rotated.rpn import OrientedRPN

__all__ = ["DeltaXYWHTCoder", "MidpointOffsetCoder", "OrientedRPN", "RotatedRoIHead"]
