"""Models: encoders, necks, heads and the task model that joins them; encoder files.

Importing this package registers the built-in encoders, necks and heads (``rsfm list``). Its
modules import torch at module level and timm, torchvision and torchmetrics only when a
model is built, so recipes are validated quickly.
"""

from rsfm.models import encoders, heads, necks
from rsfm.models.encoders import Encoder, ResNet, ViT
from rsfm.models.heads import Head
from rsfm.models.necks import FPN, Neck, SimpleFeaturePyramid
from rsfm.models.task_model import TaskModel

__all__ = [
    "FPN",
    "Encoder",
    "Head",
    "Neck",
    "ResNet",
    "SimpleFeaturePyramid",
    "TaskModel",
    "ViT",
    "encoders",
    "heads",
    "necks",
]
