"""Bi-temporal change-detection data: one module per dataset layout, a shared datamodule."""

from rsfm.data.change.cdd import CDDDataModule
from rsfm.data.change.common import (
    ChangeDataset,
    ChangeDetectionDataModule,
    ChangePairRecord,
    PairedAugment,
    find_pairs,
    read_change_mask,
)
from rsfm.data.change.levir_cd import LEVIRCDDataModule
from rsfm.data.change.oscd import OSCD_BANDS, OSCDDataModule

__all__ = [
    "OSCD_BANDS",
    "CDDDataModule",
    "OSCDDataModule",
    "ChangeDataset",
    "ChangeDetectionDataModule",
    "ChangePairRecord",
    "LEVIRCDDataModule",
    "PairedAugment",
    "find_pairs",
    "read_change_mask",
]
