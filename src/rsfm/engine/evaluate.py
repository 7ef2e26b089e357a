"""``rsfm evaluate``: score an encoder on a labelled scene folder, one small function per protocol.

The folder (``root/<class>/<image>``) is split once, stratified per class by
``test_fraction`` and ``split_seed`` — the split ``rsfm pretrain`` holds back — into a
training split and a held-out test split. Protocols:

- ``knn``: weighted k-nearest-neighbour vote on frozen pooled features (:func:`run_knn`);
- ``linear``: a linear classifier on frozen features, lr chosen on the training split only
  (:func:`run_linear`);
- ``finetune``: the encoder fine-tuned end to end with a classification head, as
  ``rsfm finetune`` does (:func:`run_finetune`);
- ``lpft``: the same fine-tuning with the classifier initialised by a linear probe on the
  frozen encoder's features (LP-FT; Kumar et al., ICLR 2022), without stochastic depth, as the
  ``classification_aid`` recipe (drop path halved the probe's accuracy on the main job's
  encoder's features: docs/tasks/classification.md); with ``knn`` or ``linear`` in the same run
  its probe is fitted on their training features instead of a second pass over the images;
- ``scratch``: the same fine-tuning from a randomly initialised encoder of the same shape.

Everything is scored on the held-out split, which no protocol trains on or selects
hyper-parameters with, in percent. Results go to ``metrics.json`` and ``metrics.md``; the
files behind the frozen features to ``split.json``.

.. versionadded:: 0.2

.. versionchanged:: 0.3.4
   ``lpft`` fine-tunes without stochastic depth (it used 0.1, as ``finetune``); every
   fine-tuning report gives its ``drop_path_rate``.

.. versionchanged:: 0.3.5
   ``lpft`` reuses the training features of ``knn``/``linear`` in the same run (its
   ``probe_init`` report says ``"training_features": "given"``); ``precision`` (``--precision``)
   sets the arithmetic of the features and the fine-tuning, which each fine-tuning report gives
   (the feature extraction ran under bfloat16 autocast on every GPU before, float32 on the CPU).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rsfm.engine.config import EVAL_PRECISIONS, EVAL_PROTOCOLS
from rsfm.utils.errors import ConfigError, DataError
from rsfm.utils.files import atomic_write, write_json

__all__ = ["PRECISIONS", "PROTOCOLS", "evaluate", "run_finetune", "run_knn", "run_linear"]

#: the protocols of :func:`evaluate` (and the ``evaluate.protocols`` of a pretraining recipe)
PROTOCOLS = EVAL_PROTOCOLS

#: the trainer precisions :func:`evaluate` accepts, with their autocast dtype (none for ``32-true``)
PRECISIONS = EVAL_PRECISIONS
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[rsfm.evaluate] {msg}", flush=True)


def encoder_spec(encoder_path: str | None, scratch_size: str, img_size: int | None, patch_size: int) -> dict[str, Any]:
    """The ``model.encoder`` specification of an export, or of a random ViT of ``scratch_size``.

    An export's ``arch`` picks the encoder class: a timm ResNet name ``ResNet``, ``vit_rvsa``
    :class:`~rsfm.models.encoders.rvsa.ViTRVSA` (rebuilt from the export's own metadata),
    anything else ``ViT`` with the export's ``global_pool``.
    """
    if encoder_path is not None:
        from rsfm.models.export import is_resnet, read_encoder_meta

        meta = read_encoder_meta(encoder_path)
        arch = str(meta.get("arch", ""))
        if is_resnet(arch):
            return {"class_path": "ResNet", "init_args": {"weights": encoder_path}}
        if arch == "vit_rvsa":
            return {"class_path": "ViTRVSA", "init_args": {"weights": encoder_path}}
        # the export's pooling (the ViT encoder's default, "token", does not fit an "avg" export)
        return {
            "class_path": "ViT",
            "init_args": {"weights": encoder_path, "global_pool": meta.get("global_pool", "token")},
        }
    return {
        "class_path": "ViT",
        "init_args": {"size": scratch_size, "img_size": img_size or 224, "patch_size": patch_size},
    }


def scratch_spec(encoder_path: str | None, scratch_size: str | None, img_size: int, patch_size: int) -> dict[str, Any]:
    """A random encoder of the export's shape (ViT size and patch, ViT+RVSA also window and interval, or the ResNet)."""
    if encoder_path is None:
        return encoder_spec(None, scratch_size or "tiny", img_size, patch_size)
    from rsfm.models.export import is_resnet, read_encoder_meta

    meta = read_encoder_meta(encoder_path)
    arch = str(meta.get("arch", ""))
    if is_resnet(arch):
        return {"class_path": "ResNet", "init_args": {"name": meta["arch"]}}
    if arch == "vit_rvsa":
        return {
            "class_path": "ViTRVSA",
            "init_args": {
                "size": scratch_size or meta["size"],
                "img_size": img_size,
                "patch_size": meta["patch_size"],
                "window_size": meta["window_size"],
                "interval": meta["interval"],
            },
        }
    return {
        "class_path": "ViT",
        "init_args": {"size": scratch_size or meta["size"], "img_size": img_size, "patch_size": meta["patch_size"]},
    }


def extract(
    encoder: Any,
    data: Any,
    split: str,
    device: torch.device,
    pool: str,
    mean: Sequence[float],
    std: Sequence[float],
    skipped: Any = None,
    precision: str = "32-true",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen pooled features, labels and dataset indices of one split.

    Unreadable files are left out and, with ``skipped`` (a :class:`~rsfm.data.skips.SkipReport`),
    recorded there with their reasons. ``precision`` (Lightning's name) sets the arithmetic:
    ``32-true`` float32, ``bf16-mixed`` bfloat16 autocast, ``16-mixed`` float16 autocast, as a
    trainer with that precision computes the same features.
    """
    from rsfm.tasks.probes import extract_features

    loader = data.loader(data.datasets[split], train=False)
    return extract_features(
        encoder.model,
        loader,
        device=device,
        pool=pool,
        amp=precision in AUTOCAST,
        amp_dtype=AUTOCAST.get(precision, torch.bfloat16),
        return_index=True,
        mean=mean,
        std=std,
        skipped=skipped,
    )


def run_knn(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    classes: list[str],
    k: int,
    temperature: float,
    device: torch.device,
) -> dict[str, Any]:
    """KNN on frozen features: the test report plus ``k`` and ``temperature``."""
    from rsfm.metrics.classification import classification_report
    from rsfm.tasks.probes import knn_predict

    (xt, yt), (xv, yv) = train, test
    k_used = min(k, len(yt))
    scores = knn_predict(xt.to(device), yt.to(device), xv.to(device), len(classes), k=k_used, temperature=temperature)
    return {**classification_report(scores.argmax(1).cpu(), yv, classes), "k": k_used, "temperature": temperature}


def run_linear(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    classes: list[str],
    epochs: int,
    lr: float | Sequence[float],
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """A linear probe on frozen features: the test report, the chosen lr and the lr search."""
    from rsfm.metrics.classification import classification_report
    from rsfm.tasks.probes import linear_probe

    (xt, yt), (xv, yv) = train, test
    probe = linear_probe(
        xt.to(device), yt.to(device), xv.to(device), yv.to(device), len(classes), epochs=epochs, lr=lr, seed=seed
    )
    return {
        **classification_report(probe.preds, yv, classes),
        "lr": probe.lr,
        "epochs": epochs,
        "lr_search": {f"{v:g}": acc for v, acc in probe.grid.items()},
    }


def run_finetune(
    encoder: dict[str, Any],
    data_args: dict[str, Any],
    out_dir: Path,
    epochs: int,
    max_time: str | None,
    blr: float,
    seed: int,
    accelerator: str,
    drop_path_rate: float = 0.1,
    verbose: bool = True,
    head_init: str = "trunc_normal",
    probe_features: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``encoder`` with a classification head on the training split; score the test split.

    The same module and trainer as ``rsfm finetune`` (MAE's protocol: AdamW, layer decay 0.75,
    label smoothing 0.1, stochastic depth ``drop_path_rate``, warmup ``min(5, epochs / 10)``
    epochs then cosine), without validation or checkpoint selection: the final weights are
    tested. ``head_init``: ``ClassificationHead.init`` (``linear_probe``: LP-FT, the probe
    fitted on the whole training split; its report is under ``probe_init``).
    ``probe_features``: ``(features (N, D) float32, labels (N,) int64, files left out)`` of the
    unaugmented training split as this encoder pools them, for the LP-FT probe instead of a
    second pass over the images (:meth:`~rsfm.tasks.module.DownstreamTask.use_probe_features`).
    ``precision``: the trainer's (Lightning's names); None: :func:`rsfm.engine.precision.default_precision`.

    Returns:
        The test report (OA, mean class accuracy, per class, confusion; percent) and settings,
        ``drop_path_rate`` read back from the encoder that was trained (its largest DropPath
        probability; 0 when it has none).
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from rsfm.data.scene import SceneClassificationDataModule
    from rsfm.engine.data import LightningData
    from rsfm.engine.precision import default_precision
    from rsfm.tasks.module import DownstreamTask

    L.seed_everything(seed, workers=True)
    data = SceneClassificationDataModule(**{**data_args, "val_fraction": 0.0, "augment": True, "seed": seed})
    spec = {
        "class_path": encoder["class_path"],
        "init_args": {**encoder["init_args"], "drop_path_rate": drop_path_rate},
    }
    warmup = min(5.0, epochs / 10)
    module = DownstreamTask(
        model={
            "encoder": spec,
            "heads": {"classification": {"class_path": "ClassificationHead", "init_args": {"init": head_init}}},
        },
        optim={
            "name": "adamw",
            "blr": blr,
            "weight_decay": 0.05,
            "layer_decay": 0.75,
            "warmup_epochs": warmup,
            "min_lr_ratio": 1e-3,
        },
        data=data.info().to_dict(),
        batch_size=data.batch_size,
        seed=seed,
        num_visualisations=0,
    )
    module.out_dir = str(out_dir)
    if probe_features is not None and head_init == "linear_probe":
        module.use_probe_features("classification", *probe_features)
    trainer = L.Trainer(
        max_epochs=epochs,
        max_time=max_time,
        accelerator=accelerator,
        devices=1,
        precision=precision or default_precision(accelerator),
        logger=CSVLogger(str(out_dir), name="csv", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=verbose,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=str(out_dir),
    )
    lightning_data = LightningData(data)
    trainer.fit(module, datamodule=lightning_data)
    trainer.test(module, datamodule=lightning_data, verbose=False)
    from rsfm.utils.files import read_json

    report = read_json(out_dir / "metrics.json")["heads"]["classification"]
    out = {
        **report,
        "epochs": epochs,
        "warmup_epochs": warmup,
        "max_time": max_time,
        "blr": blr,
        "precision": str(trainer.precision),
        "drop_path_rate": max(
            (float(m.drop_prob) for m in module.model.encoder.modules() if hasattr(m, "drop_prob")), default=0.0
        ),
    }
    if head_init == "linear_probe":
        out["probe_init"] = read_json(out_dir / "probe_init.json")["heads"]["classification"]
    return out


def evaluate(
    encoder_path: str | None,
    data_root: str,
    protocols: Sequence[str] = ("knn", "linear"),
    out_dir: str = "runs/eval",
    img_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 2,
    pool: str | None = None,
    k: int = 20,
    temperature: float = 0.07,
    linear_epochs: int = 100,
    linear_lr: float | list[float] | None = None,
    finetune_epochs: int = 10,
    finetune_max_time: str | None = None,
    finetune_batch_size: int = 64,
    finetune_blr: float = 5e-4,
    scratch_size: str | None = None,
    patch_size: int = 16,
    device: str = "auto",
    precision: str | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate an encoder on a labelled image folder (see the module docstring).

    Args:
        encoder_path: an rsfm encoder export (ViT, ViT+RVSA or ResNet), or None for a random ViT of
            ``scratch_size`` (a random-feature baseline).
        data_root: labelled folder, e.g. ``../shared/datasets/aid``.
        protocols: any of :data:`PROTOCOLS`.
        out_dir: where ``metrics.json``, ``metrics.md`` and ``split.json`` go.
        img_size: input side in pixels; default the encoder's (at a different size the ViT's
            position embedding is resampled to the patch grid).
        mean: per-band mean of images in [0, 1] for an encoder without statistics (an
            export's own statistics win, as in fine-tuning); default ImageNet's.
        std: per-band std, likewise.
        test_fraction: share of each class held out (the pretraining hold-out by default).
        split_seed: seed of the split.
        batch_size: feature-extraction batch.
        num_workers: loader processes.
        pool: ``cls`` or ``avg`` ViT features (default: the export's pooling; ``avg`` for a
            ViT+RVSA export, which has no class token); a ResNet's are global-average-pooled.
        k: kNN neighbours (clamped to the training-set size).
        temperature: kNN vote temperature.
        linear_epochs: linear-probe epochs.
        linear_lr: linear-probe lr or grid (searched on the training split); None: the default grid.
        finetune_epochs: epochs of ``finetune``, ``lpft`` and ``scratch``.
        finetune_max_time: wall-clock budget per fine-tuning run, ``DD:HH:MM:SS``.
        finetune_batch_size: fine-tuning batch.
        finetune_blr: fine-tuning base lr per 256 images (``optim.blr``).
        scratch_size: ViT size of a scratch encoder (default: the export's).
        patch_size: patch of a scratch ViT when ``encoder_path`` is None.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        precision: arithmetic of the feature extraction and the fine-tuning, Lightning's names:
            ``32-true``, ``bf16-mixed`` (bfloat16 autocast; on a CPU with bf16 matrix units
            several times faster than float32) or ``16-mixed`` (float16 autocast, CUDA only);
            None: :func:`rsfm.engine.precision.default_precision` (bf16 autocast on a GPU
            that has it, float32 on the CPU).
        seed: seed of models, probes and training.
        verbose: print progress lines and the final table.

    Returns:
        The content of ``metrics.json``: ``protocols`` ``{name: report}`` (percent),
        ``config``, ``encoder`` (path and metadata), ``data`` and ``timings_s``; with kNN or
        linear also ``split`` (the files behind the features).

    Raises:
        ConfigError: on an unknown protocol or precision, ``16-mixed`` on the CPU,
            ``encoder_path=None`` without ``scratch_size``, or ``pool='cls'`` for a ViT+RVSA export.
        DataError, CheckpointError: on a bad folder or encoder file.
    """
    config = {key: value for key, value in locals().items() if key != "verbose"}
    config["protocols"] = list(protocols)
    from rsfm.data.scene import SceneClassificationDataModule
    from rsfm.data.skips import SkipReport
    from rsfm.metrics.classification import format_table
    from rsfm.tasks.module import DownstreamTask
    from rsfm.tasks.probes import DEFAULT_LR_GRID

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"--protocols: unknown {unknown}; expected some of {list(PROTOCOLS)}")
    if encoder_path is None and scratch_size is None:
        raise ConfigError("scratch_size (--scratch-size) is required without an encoder (--encoder), e.g. tiny")
    out = Path(out_dir)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    from rsfm.engine.precision import bf16_hint, default_precision

    accelerator = "gpu" if dev.type == "cuda" else "cpu"
    precision = precision or default_precision(accelerator)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision (--precision): expected one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "16-mixed" and dev.type != "cuda":
        raise ConfigError("precision (--precision): 16-mixed (float16 autocast) needs a CUDA GPU; use bf16-mixed")
    config["precision"] = precision
    timings: dict[str, float] = {}
    spec = encoder_spec(encoder_path, scratch_size or "tiny", img_size, patch_size)
    if pool == "cls" and spec["class_path"] == "ViTRVSA":
        raise ConfigError(f"pool: {encoder_path} is a ViT+RVSA encoder, which has no class token; use pool='avg'")
    # the encoder, built once through the task model (first-layer adaptation, normalisation)
    data_args = {
        "root": data_root, "test_fraction": test_fraction, "split_seed": split_seed, "batch_size": batch_size,
        "num_workers": num_workers, "mean": mean, "std": std, "seed": seed,
    }  # fmt: skip
    probe_data = SceneClassificationDataModule(**data_args, img_size=img_size or 224, val_fraction=0.0, augment=False)
    info = probe_data.info()
    task = DownstreamTask(
        model={"encoder": spec, "heads": {"classification": {"class_path": "ClassificationHead"}}},
        optim={"lr": 0.0},
        data=info.to_dict(),
        num_visualisations=0,
    )
    encoder = task.model.encoder
    meta = dict(encoder.meta)
    img_size = int(img_size or meta.get("img_size") or 224)
    multiple = int(getattr(encoder, "input_multiple", 1) or 1)
    if img_size < 1 or img_size % multiple:
        raise ConfigError(
            f"img_size (--img-size) must be a positive multiple of {multiple} pixels for "
            f"{encoder_path or 'the encoder'} (its patch size), got {img_size}"
        )
    if img_size != probe_data.img_size:
        probe_data = SceneClassificationDataModule(**data_args, img_size=img_size, val_fraction=0.0, augment=False)
    norm_mean, norm_std = task.model.mean_std
    # the export's pooling, which fine-tuning's classifier uses; a ViT+RVSA has no class token
    own_pool = "avg" if meta.get("global_pool") == "avg" or meta.get("arch") == "vit_rvsa" else "cls"
    pool = pool or own_pool
    config.update(img_size=img_size, mean=norm_mean, std=norm_std, pool=pool)
    probe_data.setup("test")
    classes = list(probe_data.classes)
    if len(classes) < 2:
        raise DataError(
            f"{data_root}: the probes need at least 2 classes (one sub-folder of images per class), found {classes}"
        )
    train_set, test_set = probe_data.datasets["train"], probe_data.datasets["test"]
    _say(
        verbose,
        f"{data_root}: {len(classes)} classes, {len(train_set)} train / {len(test_set)} held-out images "
        f"at {img_size}px",
    )
    result: dict[str, Any] = {
        "scale": "percent",
        "encoder": {"path": encoder_path, "meta": meta},
        "config": config,
        "data": {"root": str(data_root), "classes": classes, "n_train": len(train_set), "n_heldout": len(test_set)},
        "protocols": {},
        "timings_s": timings,
    }
    frozen = [p for p in protocols if p in ("knn", "linear")]
    shared: tuple[torch.Tensor, torch.Tensor, int] | None = None  # training features for LP-FT's probe
    if frozen:
        t0 = time.perf_counter()
        skipped = SkipReport(getattr(probe_data, "scan_skipped", None) or ())
        before = skipped.total
        xt, yt, it = extract(encoder, probe_data, "train", dev, pool, norm_mean, norm_std, skipped, precision=precision)
        if pool == own_pool:  # the images, pooling and arithmetic of fine-tuning's classifier: LP-FT reuses them
            shared = (xt, yt, skipped.total - before)
        xv, yv, iv = extract(encoder, probe_data, "test", dev, pool, norm_mean, norm_std, skipped, precision=precision)
        timings["features"] = time.perf_counter() - t0
        _say(verbose, f"features: {len(yt)} + {len(yv)} images -> {xt.shape[1]}-d in {timings['features']:.1f}s")
        result["data"].update(
            n_train_features=len(yt),
            n_heldout_features=len(yv),
            skipped=skipped.total,
            skipped_files=skipped.to_dict(),
        )
        if skipped.total:  # the files behind the count, with their reasons, beside metrics.json
            _say(verbose, f"{skipped.summary()} (listed in {out / 'skipped_files.json'})")
            skipped.write_json(out / "skipped_files.json")
        result["split"] = {
            name: [ds.samples[i].relative_to(ds.root).as_posix() for i in idx.tolist()]
            for name, ds, idx in (("train", train_set, it), ("heldout", test_set, iv))
        }
        if "knn" in frozen:
            t0 = time.perf_counter()
            result["protocols"]["knn"] = run_knn((xt, yt), (xv, yv), classes, k, temperature, dev)
            timings["knn"] = time.perf_counter() - t0
            r = result["protocols"]["knn"]
            _say(verbose, f"knn (k={r['k']}, T={temperature}): OA {r['OA']:.2f}% in {timings['knn']:.1f}s")
        if "linear" in frozen:
            t0 = time.perf_counter()
            grid = linear_lr if linear_lr is not None else DEFAULT_LR_GRID
            result["protocols"]["linear"] = run_linear((xt, yt), (xv, yv), classes, linear_epochs, grid, seed, dev)
            timings["linear"] = time.perf_counter() - t0
            r = result["protocols"]["linear"]
            _say(
                verbose,
                f"linear (lr={r['lr']:g}, {linear_epochs} epochs): OA {r['OA']:.2f}% in {timings['linear']:.1f}s",
            )
    del task, encoder
    tuned = [(name, spec) for name in ("finetune", "lpft") if name in protocols]
    if "scratch" in protocols:
        tuned.append(("scratch", scratch_spec(encoder_path, scratch_size, img_size, patch_size)))
    batch = min(finetune_batch_size, len(train_set))
    hint = bf16_hint(precision) if tuned else None
    if hint:
        _say(verbose, f"hint: {hint}; here: --precision bf16-mixed")
    for name, encoder_cfg in tuned:
        t0 = time.perf_counter()
        _say(
            verbose,
            f"{name}: up to {finetune_epochs} epochs"
            + (f", time budget {finetune_max_time}" if finetune_max_time else ""),
        )
        ft_args = {**data_args, "img_size": img_size, "batch_size": batch, "mean": norm_mean, "std": norm_std}
        result["protocols"][name] = run_finetune(
            encoder_cfg, ft_args, out / name, finetune_epochs, finetune_max_time, finetune_blr, seed,
            accelerator, verbose=verbose, precision=precision,
            head_init="linear_probe" if name == "lpft" else "trunc_normal",
            drop_path_rate=0.0 if name == "lpft" else 0.1,
            probe_features=shared if name == "lpft" else None,
        )  # fmt: skip
        timings[name] = time.perf_counter() - t0
        _say(verbose, f"{name}: OA {result['protocols'][name]['OA']:.2f}% in {timings[name]:.1f}s")
    table = format_table(result["protocols"])
    source = encoder_path if encoder_path is not None else f"random-init ViT-{scratch_size}"
    md = (
        f"# Evaluation of {source}\n\nData: {data_root} ({len(classes)} classes, {len(train_set)} train / "
        f"{len(test_set)} held-out images, {img_size}px). Scores in percent.\n\n{table}\n"
    )
    split = result.pop("split", None)
    write_json(out / "metrics.json", result)
    if split is not None:
        write_json(out / "split.json", split)
        result["split"] = split
    atomic_write(out / "metrics.md", lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    if verbose:
        print(table, flush=True)
    return result
