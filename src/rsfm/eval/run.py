"""One call that evaluates an exported encoder on a labelled scene folder.

Frozen protocols (kNN, linear probe) share one pass of feature extraction over the training
and held-out splits; fine-tuning (and a from-scratch baseline under the same budget) train
with Lightning. Everything is scored on the held-out split only, which no protocol trains
on or selects hyper-parameters with. Results go to ``metrics.json`` and ``metrics.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from rsfm.data.datamodule import ClassificationDataModule
from rsfm.data.folder import LabeledImageFolder, collate_skipping
from rsfm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from rsfm.engine.export import atomic_write, is_resnet, load_encoder, read_encoder_meta
from rsfm.eval.features import extract_features
from rsfm.eval.finetune import finetune
from rsfm.eval.knn import knn_predict
from rsfm.eval.linear import DEFAULT_LR_GRID, linear_probe
from rsfm.eval.report import classification_report, format_table, write_json
from rsfm.models.vit import build_vit, sincos_pos_embed_2d

__all__ = ["PROTOCOLS", "evaluate"]

#: ``knn`` and ``linear`` on frozen features; ``finetune`` the encoder end to end;
#: ``scratch``: fine-tune a randomly initialised encoder of the same shape (ViT or ResNet)
#: under the same budget.
PROTOCOLS = ("knn", "linear", "finetune", "scratch")


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[rsfm.eval] {msg}", flush=True)


def _set_img_size(model: nn.Module, img_size: int) -> nn.Module:
    """Re-grid a ViT to ``img_size``; exact because build_vit's position embedding is sin-cos.

    A CNN (no ``patch_embed``) takes any input size and is returned as is.
    """
    if not hasattr(model, "patch_embed"):
        return model
    if tuple(model.patch_embed.img_size) == (img_size, img_size):
        return model
    model.set_input_size(img_size=(img_size, img_size))
    table = sincos_pos_embed_2d(model.embed_dim, model.patch_embed.grid_size, cls_token=True)
    model.pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)
    return model


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def evaluate(
    encoder_path: str | os.PathLike[str] | None,
    data_root: str | os.PathLike[str],
    protocols: Sequence[str] = ("knn", "linear"),
    *,
    out_dir: str | os.PathLike[str],
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 2,
    pool: str | None = None,
    k: int = 20,
    temperature: float = 0.07,
    linear_epochs: int = 100,
    linear_lr: float | Sequence[float] = DEFAULT_LR_GRID,
    finetune_epochs: int = 50,
    finetune_max_time: str | None = None,
    finetune_batch_size: int = 64,
    finetune_lr: float = 5e-4,
    drop_path_rate: float = 0.1,
    scratch_size: str | None = None,
    patch_size: int = 16,
    device: str = "auto",
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate an encoder on a labelled image folder with kNN, linear and fine-tuning protocols.

    The folder (``<root>/<Class>/<image>``) is split once, per ``val_fraction`` and
    ``split_seed``, into a training split and a held-out split (the datamodule's test split).
    Images are normalised with ``mean``/``std``: by default those stored in the encoder's
    metadata, else ImageNet's.

    Args:
        encoder_path: an encoder written by :func:`rsfm.engine.export.export_encoder` (a ViT,
            or a ResNet such as GeRSP's ``resnet50``), or
            ``None`` for a randomly initialised ViT of ``scratch_size`` (a random-feature
            baseline).
        data_root: labelled folder, e.g. ``shared/datasets/aid``.
        protocols: any of :data:`PROTOCOLS`.
        out_dir: where ``metrics.json``, ``metrics.md`` and fine-tuning logs go.
        img_size: input side in pixels; default the encoder's. A different size re-grids
            the (fixed sin-cos) position embedding.
        mean: per-channel mean of images in [0, 1] used to normalise them, overriding the
            encoder metadata's (default: the metadata's, else ImageNet's). With
            ``encoder_path=None`` pass the data's own statistics (``rsfm stats``).
        std: per-channel std of images in [0, 1], overriding the same way as ``mean``.
        val_fraction: share of each class held out.
        split_seed: seed of the split.
        batch_size: batch of feature extraction.
        num_workers: data-loading workers.
        pool: ``cls`` or ``avg`` features of a ViT for kNN and linear; None: ``avg`` for an
            encoder exported with ``global_pool: avg``, else ``cls``. A ResNet export always
            gives its global-average-pooled features.
        k: kNN neighbours (clamped to the training-set size).
        temperature: kNN vote temperature.
        linear_epochs: linear-probe epochs.
        linear_lr: linear-probe lr or lr grid (searched on the training split only).
        finetune_epochs: fine-tuning epochs (``finetune`` and ``scratch``); the lr warms up
            for ``min(5, finetune_epochs / 10)`` epochs, then follows a cosine.
        finetune_max_time: optional wall-clock budget per fine-tuning run, ``DD:HH:MM:SS``.
        finetune_batch_size: fine-tuning batch.
        finetune_lr: fine-tuning base lr (scaled by batch / 256).
        drop_path_rate: stochastic depth for fine-tuning.
        scratch_size: ViT size for ``encoder_path=None`` and for the ``scratch`` protocol
            (default there: the encoder's size).
        patch_size: patch size of a scratch ViT when ``encoder_path`` is ``None``.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        seed: seed of models, probes and training.
        verbose: print progress lines and the final table.

    Returns:
        The content of ``metrics.json``: ``protocols`` ``{name: report}`` (see
        :func:`rsfm.eval.report.classification_report`, plus protocol settings),
        ``config``, ``encoder`` (path and metadata), ``data`` (classes, split sizes,
        skipped files) and ``timings_s``; with kNN or linear also ``split``: the files
        (relative to ``data_root``) behind the training and held-out features, in feature
        order, also written to ``split.json``.

    Raises:
        ValueError: on an unknown protocol, ``encoder_path=None`` without ``scratch_size``,
            or a ``mean``/``std`` that is not 3 values (std positive).

    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; expected some of {PROTOCOLS}")
    config: dict[str, Any] = dict(
        encoder_path=None if encoder_path is None else str(encoder_path),
        data_root=str(data_root),
        protocols=list(protocols),
        out_dir=str(out_dir),
        val_fraction=val_fraction,
        split_seed=split_seed,
        batch_size=batch_size,
        pool=pool,
        k=k,
        temperature=temperature,
        linear_epochs=linear_epochs,
        linear_lr=linear_lr if isinstance(linear_lr, int | float) else list(linear_lr),
        finetune_epochs=finetune_epochs,
        finetune_max_time=finetune_max_time,
        finetune_batch_size=finetune_batch_size,
        finetune_lr=finetune_lr,
        drop_path_rate=drop_path_rate,
        scratch_size=scratch_size,
        device=str(device),
        seed=seed,
    )
    out_dir = Path(out_dir)
    dev = _resolve_device(device)
    timings: dict[str, float] = {}

    if encoder_path is not None:
        meta = read_encoder_meta(encoder_path)

        def make_encoder(num_classes: int = 0, drop_path: float = 0.0) -> nn.Module:
            model = load_encoder(encoder_path, num_classes=num_classes, drop_path_rate=drop_path)
            return _set_img_size(model, img_size or meta["img_size"])
    else:
        if scratch_size is None:
            raise ValueError("encoder_path=None needs scratch_size (e.g. 'tiny')")
        meta = {
            "arch": "vit",
            "size": scratch_size,
            "img_size": img_size or 224,
            "patch_size": patch_size,
            "in_chans": 3,
            "method": "random-init",
        }

        def make_encoder(num_classes: int = 0, drop_path: float = 0.0) -> nn.Module:
            torch.manual_seed(seed)
            return build_vit(
                scratch_size, img_size or 224, patch_size, num_classes=num_classes, drop_path_rate=drop_path
            )

    img_size = img_size or meta["img_size"]
    if pool is None:
        pool = "avg" if meta.get("global_pool") == "avg" else "cls"
    config["pool"] = pool
    if (mean is None and "mean" not in meta) or (std is None and "std" not in meta):
        _log(verbose, "no mean/std given or in the encoder metadata; normalising with ImageNet statistics")
    mean = tuple(mean if mean is not None else meta.get("mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else meta.get("std", IMAGENET_STD))
    config.update(img_size=img_size, mean=list(mean), std=list(std))

    # Same (val_fraction, split_seed) as the fine-tuning datamodule: one held-out set for all.
    split_kw = dict(
        val_fraction=val_fraction, split_seed=split_seed, seed=seed, transform=eval_transform(img_size, mean, std)
    )
    train_set = LabeledImageFolder(data_root, split="train", **split_kw)
    heldout_set = LabeledImageFolder(data_root, split="val", **split_kw)
    classes = list(train_set.classes)
    _log(
        verbose,
        f"{data_root}: {len(classes)} classes, {len(train_set)} train / "
        f"{len(heldout_set)} held-out images at {img_size}px",
    )

    result: dict[str, Any] = {
        "encoder": {"path": None if encoder_path is None else str(encoder_path), "meta": meta},
        "config": config,
        "data": {"root": str(data_root), "classes": classes, "n_train": len(train_set), "n_heldout": len(heldout_set)},
        "protocols": {},
        "timings_s": timings,
    }

    split_files: dict[str, list[str]] | None = None
    frozen = [p for p in protocols if p in ("knn", "linear")]
    if frozen:
        encoder = make_encoder()
        feats = {}
        for name, ds in (("train", train_set), ("heldout", heldout_set)):
            loader = DataLoader(
                ds,
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
                collate_fn=collate_skipping,
                pin_memory=dev.type == "cuda",
            )
            t0 = time.perf_counter()
            feats[name] = extract_features(
                encoder, loader, device=dev, pool=pool, amp=dev.type == "cuda", return_index=True
            )
            timings[f"features_{name}"] = time.perf_counter() - t0
            n, d = feats[name][0].shape
            _log(
                verbose,
                f"features {name}: {n} images -> {d}-d in {timings[f'features_{name}']:.1f}s ({len(ds) - n} skipped)",
            )
        del encoder
        (xt, yt, it), (xv, yv, iv) = feats["train"], feats["heldout"]
        result["data"].update(
            n_train_features=len(yt),
            n_heldout_features=len(yv),
            skipped=(len(train_set) - len(yt)) + (len(heldout_set) - len(yv)),
        )
        # Dataset indices are positions within each split; files identify images across them.
        split_files = {
            name: [ds.samples[i].relative_to(ds.root).as_posix() for i in idx.tolist()]
            for name, ds, idx in (("train", train_set, it), ("heldout", heldout_set, iv))
        }

        if "knn" in frozen:
            t0 = time.perf_counter()
            k_used = min(k, len(yt))
            scores = knn_predict(xt.to(dev), yt.to(dev), xv.to(dev), len(classes), k=k_used, temperature=temperature)
            report = classification_report(scores.argmax(1).cpu(), yv, classes)
            timings["knn"] = time.perf_counter() - t0
            result["protocols"]["knn"] = {**report, "k": k_used, "temperature": temperature}
            _log(verbose, f"knn (k={k_used}, T={temperature}): OA {report['OA']:.2f}% in {timings['knn']:.1f}s")

        if "linear" in frozen:
            t0 = time.perf_counter()
            probe = linear_probe(
                xt.to(dev),
                yt.to(dev),
                xv.to(dev),
                yv.to(dev),
                len(classes),
                epochs=linear_epochs,
                lr=linear_lr,
                seed=seed,
            )
            report = classification_report(probe.preds, yv, classes)
            timings["linear"] = time.perf_counter() - t0
            result["protocols"]["linear"] = {
                **report,
                "lr": probe.lr,
                "epochs": linear_epochs,
                "lr_search": {f"{lr:g}": acc for lr, acc in probe.grid.items()},
            }
            _log(
                verbose,
                f"linear (lr={probe.lr:g}, {linear_epochs} epochs): OA {report['OA']:.2f}% in {timings['linear']:.1f}s",
            )

    tuned: list[tuple[str, Callable[[], nn.Module]]] = []
    if "finetune" in protocols:
        # Head-less: ClassificationModule adds the head with MAE's initialisation.
        tuned.append(("finetune", lambda: make_encoder(0, drop_path_rate)))
    if "scratch" in protocols:

        def make_scratch() -> nn.Module:
            torch.manual_seed(seed)
            if is_resnet(meta["arch"]):
                return timm.create_model(
                    meta["arch"],
                    pretrained=False,
                    num_classes=0,
                    in_chans=meta.get("in_chans", 3),
                    drop_path_rate=drop_path_rate,
                )
            return build_vit(
                scratch_size or meta["size"],
                img_size,
                meta["patch_size"],
                in_chans=meta.get("in_chans", 3),
                drop_path_rate=drop_path_rate,
            )

        tuned.append(("scratch", make_scratch))
    if tuned and finetune_batch_size > len(train_set):
        # The fine-tuning loader drops its last incomplete batch: keep at least one.
        _log(
            verbose, f"finetune batch {finetune_batch_size} > {len(train_set)} training images; using {len(train_set)}"
        )
        finetune_batch_size = len(train_set)
    for name, make in tuned:
        datamodule = ClassificationDataModule(
            data_root,
            img_size=img_size,
            batch_size=finetune_batch_size,
            num_workers=num_workers,
            mean=mean,
            std=std,
            val_fraction=val_fraction,
            split_seed=split_seed,
            seed=seed,
            train_transform="finetune",
        )
        t0 = time.perf_counter()
        _log(
            verbose,
            f"{name}: up to {finetune_epochs} epochs"
            + (f", time budget {finetune_max_time}" if finetune_max_time else ""),
        )
        # MAE's 5 warmup epochs of 50-100, scaled down for short runs (a warmup as long as the
        # run would leave the whole run at a fraction of the peak lr)
        warmup = min(5.0, finetune_epochs / 10)
        preds, labels = finetune(
            make(),
            datamodule,
            warmup_epochs=warmup,
            max_epochs=finetune_epochs,
            max_time=finetune_max_time,
            accelerator="gpu" if dev.type == "cuda" else "cpu",
            out_dir=out_dir / name,
            seed=seed,
            lr=finetune_lr,
            enable_progress_bar=verbose,
        )
        report = classification_report(preds, labels, classes)
        timings[name] = time.perf_counter() - t0
        result["protocols"][name] = {
            **report,
            "epochs": finetune_epochs,
            "warmup_epochs": warmup,
            "max_time": finetune_max_time,
            "lr": finetune_lr,
        }
        _log(verbose, f"{name}: OA {report['OA']:.2f}% in {timings[name]:.1f}s")

    table = format_table(result["protocols"])
    source = encoder_path if encoder_path is not None else f"random-init ViT-{scratch_size}"
    md = (
        f"# Evaluation of {source}\n\nData: {data_root} ({len(classes)} classes, "
        f"{result['data']['n_train']} train / {result['data']['n_heldout']} held-out images, "
        f"{img_size}px)\n\n{table}\n"
    )
    write_json(out_dir / "metrics.json", result)
    if split_files is not None:
        write_json(out_dir / "split.json", split_files)
        result["split"] = split_files

    def write_md(tmp: str) -> None:
        Path(tmp).write_text(md, encoding="utf-8")

    atomic_write(out_dir / "metrics.md", write_md)
    if verbose:
        print(table, flush=True)
    return result
