"""Pretraining methods (MAE, SelectiveMAE, GeRSP, MTP) and the pretraining module that runs any of them.

Importing this package registers the built-in methods (``rsfm list methods``). The method
modules import torch at module level and timm only when a method is built.
"""

from rsfm.methods.base import MaskedImageModel, PretrainMethod, StepContext
from rsfm.methods.gersp import GeRSP
from rsfm.methods.mae import MAE
from rsfm.methods.mtp import MTP
from rsfm.methods.selective_mae import SelectiveMAE

__all__ = ["MAE", "MTP", "GeRSP", "MaskedImageModel", "PretrainMethod", "SelectiveMAE", "StepContext"]
