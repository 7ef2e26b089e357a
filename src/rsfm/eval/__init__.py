"""Evaluation protocols for pretrained encoders: kNN, linear probe and fine-tuning."""

from rsfm.eval.features import extract_features, pool_features
from rsfm.eval.finetune import ClassificationModule, finetune
from rsfm.eval.knn import knn_predict
from rsfm.eval.linear import DEFAULT_LR_GRID, LinearProbeResult, linear_probe, train_linear_head
from rsfm.eval.report import classification_report, format_table, write_json
from rsfm.eval.run import PROTOCOLS, evaluate

__all__ = [
    "DEFAULT_LR_GRID",
    "PROTOCOLS",
    "ClassificationModule",
    "LinearProbeResult",
    "classification_report",
    "evaluate",
    "extract_features",
    "finetune",
    "format_table",
    "knn_predict",
    "linear_probe",
    "pool_features",
    "train_linear_head",
    "write_json",
]
