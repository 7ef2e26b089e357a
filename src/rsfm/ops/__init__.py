"""Geometry and operators of oriented (rotated) boxes, in plain PyTorch (CPU and CUDA, no compiled code).

- :mod:`rsfm.ops.obb`: the ``(cx, cy, w, h, θ)`` box representation (pixels, radians; ``le90``,
  ``le135`` and ``oc`` angle conventions), conversions to and from 8-point polygons, flips,
  and 90° rotations.
- :mod:`rsfm.ops.rotated_iou`: exact rotated IoU (polygon intersection), batched.
- :mod:`rsfm.ops.rotated_nms`: rotated NMS, class-wise and batched.
- :mod:`rsfm.ops.roi_align_rotated`: RoIAlignRotated.

This layer sits between :mod:`rsfm.utils` and :mod:`rsfm.data` (the data, metrics and models
layers all use it).

.. versionadded:: 0.3
"""
