"""Frozen-encoder probes: pooled features, k-nearest neighbours and a linear classifier."""

from rsfm.tasks.probes.features import extract_features, gather_by_index, pool_features
from rsfm.tasks.probes.knn import knn_predict
from rsfm.tasks.probes.linear import DEFAULT_LR_GRID, LinearProbeResult, linear_probe, train_linear_head

__all__ = [
    "DEFAULT_LR_GRID",
    "LinearProbeResult",
    "extract_features",
    "gather_by_index",
    "knn_predict",
    "linear_probe",
    "pool_features",
    "train_linear_head",
]
