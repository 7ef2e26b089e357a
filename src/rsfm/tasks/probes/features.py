"""Pooled features of a frozen encoder over a labelled loader (input of kNN and linear probes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rsfm.data.skips import SkipReport
from rsfm.models.encoders.rvsa import VisionTransformerRVSA
from rsfm.utils.distributed import concat_all_gather

__all__ = ["extract_features", "gather_by_index", "pool_features"]


def pool_features(encoder: nn.Module, images: Tensor, pool: Literal["cls", "avg"] = "cls") -> Tensor:
    """One pooled feature vector per image.

    Args:
        encoder: a timm ``VisionTransformer`` (e.g. from :func:`rsfm.models.export.load_encoder`),
            a ViT + RVSA backbone (:class:`~rsfm.models.encoders.rvsa.VisionTransformerRVSA`,
            a ``vit_rvsa`` export), or a CNN such as a timm ``ResNet``: anything without a
            ``patch_embed`` gives its own pooled features (global average pool, 2048-d for
            ResNet-50) for either ``pool``.
        images: ``(B, C, H, W)`` float32, normalised (for ViT + RVSA, sides multiples of the patch).
        pool: ``cls``: the class token after the final norm, i.e.
            ``forward_head(forward_features(x), pre_logits=True)`` of a ``global_pool='token'``
            encoder; ``avg``: the mean of the patch tokens (the encoder's own ``fc_norm``
            applies if it was built with ``global_pool='avg'``; a ViT + RVSA, which has no
            class token, gives its ``forward_pooled``: the mean of the last block's tokens,
            with no final norm, as MTP's classification models).

    Returns:
        ``(B, D)`` features in the encoder's compute dtype.

    Raises:
        ValueError: on an unknown ``pool``, or ``cls`` with an encoder that has no
            class-token pooling (a ViT + RVSA has no class token at all).

    """
    if pool not in ("cls", "avg"):
        raise ValueError(f"unknown pool {pool!r}; expected 'cls' or 'avg'")
    if isinstance(encoder, VisionTransformerRVSA):
        if pool == "cls":
            raise ValueError(
                "pool='cls' needs a class token, but a ViT+RVSA encoder has none; use pool='avg' "
                "(the mean of its last block's tokens)"
            )
        return encoder.forward_pooled(images)
    tokens = encoder.forward_features(images)
    if not hasattr(encoder, "patch_embed"):  # a CNN: (B, C, h, w) maps, pooled by its own head
        return encoder.forward_head(tokens, pre_logits=True)
    global_pool = getattr(encoder, "global_pool", "token")
    if pool == "cls":
        if global_pool != "token":
            raise ValueError(
                f"pool='cls' needs an encoder built with global_pool='token', this one has {global_pool!r}"
            )
        return encoder.forward_head(tokens, pre_logits=True)
    if pool == "avg":
        if global_pool == "avg":
            return encoder.forward_head(tokens, pre_logits=True)
        return tokens[:, getattr(encoder, "num_prefix_tokens", 1) :].mean(dim=1)
    raise ValueError(f"unknown pool {pool!r}; expected 'cls' or 'avg'")


def check_features(train_feats: Tensor, train_labels: Tensor, query_feats: Tensor) -> None:
    """Raise ValueError unless ``(N, D)`` training features, ``(N,)`` labels and ``(M, D)`` queries."""
    if train_feats.ndim != 2 or query_feats.ndim != 2 or train_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(
            f"expected (N, D) and (M, D) features, got {tuple(train_feats.shape)} and {tuple(query_feats.shape)}"
        )
    n = train_feats.shape[0]
    if train_labels.shape != (n,):
        raise ValueError(f"train_labels must have shape ({n},), got {tuple(train_labels.shape)}")


Batches = Iterable[Mapping[str, Any]]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader: Batches,
    device: str | torch.device = "cpu",
    pool: Literal["cls", "avg"] = "cls",
    amp: bool = False,
    return_index: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    skipped: SkipReport | None = None,
    amp_dtype: torch.dtype = torch.bfloat16,
) -> tuple[Tensor, ...]:
    """Run a frozen encoder over a loader and collect pooled features and labels.

    The encoder is put in eval mode and moved to ``device``; gradients are off. Items the
    dataset could not read are already left out of a batch by
    :func:`rsfm.data.skips.collate_skipping` (they are listed under ``skipped``); a batch
    left with no image is passed over.

    Args:
        encoder: a timm ``VisionTransformer`` or ``ResNet``, or a ViT + RVSA backbone.
        loader: yields dicts with ``image`` ``(B, C, H, W)`` float32 (in [0, 1] with ``mean``
            and ``std`` given, else already normalised), ``label`` ``(B,)`` int64 and, for
            ``return_index``, ``index`` ``(B,)`` int64.
        device: where the encoder runs.
        pool: ``cls`` or ``avg`` (see :func:`pool_features`).
        amp: run under autocast to ``amp_dtype``; features are returned as float32 either way.
        return_index: also return each feature's dataset index.
        mean: per-band mean to normalise the images with (None: they are normalised).
        std: per-band std, likewise.
        skipped: a report that receives the ``(path, reason)`` pairs of the files the batches
            left out (None: not recorded).
        amp_dtype: the autocast dtype with ``amp``: ``torch.bfloat16`` (CPU or GPU) or
            ``torch.float16`` (GPU).

    Returns:
        ``(features (N, D) float32, labels (N,) int64)`` on CPU, plus ``indices (N,) int64``
        when ``return_index``.

    Raises:
        ValueError: if the loader yields no image at all.

    .. versionchanged:: 0.3.5
       ``amp_dtype`` (autocast was bfloat16 only).
    """
    device = torch.device(device)
    encoder.eval().to(device)
    m = s = None
    if mean is not None and std is not None:
        m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    indices: list[Tensor] = []
    for batch in loader:
        if skipped is not None and batch.get("skipped"):
            skipped.add(batch["skipped"])
        images = batch.get("image")
        if images is None or images.shape[0] == 0:
            continue
        x = images.to(device, non_blocking=True)
        if m is not None:
            x = (x - m) / s
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            f = pool_features(encoder, x, pool)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(batch["label"]).long().cpu())
        if return_index:
            indices.append(torch.as_tensor(batch["index"]).long().cpu())
    if not feats:
        raise ValueError("the loader yielded no images")
    out = (torch.cat(feats), torch.cat(labels))
    return (*out, torch.cat(indices)) if return_index else out


@torch.no_grad()
def gather_by_index(index: Tensor, *columns: Tensor) -> tuple[Tensor, ...]:
    """The rows that every process extracted, as one set in dataset order.

    Under data parallelism each process extracts the features of its own share of a split
    (an evaluation loader gives each sample to one process). Every process calls this with
    its share; all receive the union, ordered by dataset index, each index once (a split with
    fewer samples than processes gives one sample to two of them). In one process the rows
    are only ordered. Tensors travel on their own device (CUDA tensors for NCCL).

    Args:
        index: ``(n,)`` int64 dataset indices of this process's rows.
        columns: tensors of ``n`` rows each, e.g. features ``(n, D)`` float32 and labels
            ``(n,)`` int64; every process passes the same dtypes and trailing shapes (a process
            with no rows passes ``(0, D)``).

    Returns:
        ``(index (N,), *columns (N, ...))`` over all processes, sorted by index.

    Raises:
        ValueError: if a column does not have ``n`` rows.

    .. versionadded:: 0.3.4
    """
    for c in columns:
        if c.shape[0] != index.shape[0]:
            raise ValueError(f"every column needs {index.shape[0]} rows (one per index), got {tuple(c.shape)}")
    idx = concat_all_gather(index)[0]
    gathered = [concat_all_gather(c)[0] for c in columns]
    order = torch.argsort(idx, stable=True)
    idx = idx[order]
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = idx[1:] != idx[:-1]
    rows = order[first]
    return (idx[first], *(c[rows] for c in gathered))
