"""What the ``rsfm`` commands do, given a checked recipe: pretrain, fine-tune, test, predict, export.

Every command builds the datamodule first (which checks the data folder at once), then the
model, and creates the run folder (``output_dir/run_name``) only once both exist: a bad data
path or a bad model option leaves nothing behind. Runs resume from the newest checkpoint of
their run folder (``resume: auto``), exactly where they stopped, with their logs kept.

.. versionadded:: 0.2
"""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

from rsfm.data.base import DataModule
from rsfm.utils.errors import CheckpointError, ConfigError, OutputError
from rsfm.utils.files import write_json

__all__ = ["build_data", "export_checkpoint", "finetune", "predict", "pretrain", "run_dir", "test", "train_task"]

log = logging.getLogger(__name__)


def run_dir(recipe: dict[str, Any]) -> Path:
    """``output_dir/run_name``: checkpoints, logs, figures, metrics and exports of a run.

    Raises:
        OutputError: if ``output_dir`` (or the run folder) exists as a file.
    """
    out = Path(recipe["output_dir"])
    for p in (out, out / recipe["run_name"]):
        if p.exists() and not p.is_dir():
            raise OutputError(f"output_dir: {p} is a file, expected a folder (or nothing) there")
    return out / recipe["run_name"]


def _make_run_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise OutputError(f"output_dir: cannot create {path} (permission denied)") from None
    except OSError as err:
        raise OutputError(f"output_dir: cannot create {path} ({err.strerror or err})") from None
    probe = path / ".rsfm_write_test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise OutputError(f"output_dir: {path} is not writable") from None


def build_data(recipe: dict[str, Any]) -> DataModule:
    """The datamodule of a recipe's ``data`` section (checks its folders at once).

    Raises:
        DataError: on a missing or malformed data folder, naming the key.
        ConfigError: on options the class rejects.
    """
    spec = recipe["data"]
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = dict(spec.get("init_args") or {})
    if args.get("seed") is None:
        args["seed"] = int(recipe.get("seed", 0))
    try:
        return cls(**args)
    except TypeError as err:
        raise ConfigError(f"data: {name}: {err}") from None


def _resume(recipe: dict[str, Any], out: Path) -> tuple[str | None, int | None]:
    from rsfm.engine.checkpoint import checkpoint_step, resolve_resume

    ckpt = resolve_resume(out / "checkpoints", recipe.get("resume"))
    return ckpt, (checkpoint_step(Path(ckpt)) if ckpt else None)


def _check_resume_fits(module: Any, ckpt: str | None, trained_tensors: bool = False) -> None:
    """Refuse, in one line, a checkpoint to resume whose weights do not fit the recipe's model.

    Lightning would stop mid-start with PyTorch's many-line ``load_state_dict`` error; this
    runs before anything of the run folder (its ``config.yaml``) is rewritten. With
    ``trained_tensors`` (fine-tuning, whose optimiser holds every trainable parameter) the
    checkpoint's optimiser must also hold as many tensors as the model trains.

    Raises:
        CheckpointError: naming the checkpoint, the mismatched tensors and what to do.
    """
    import torch

    from rsfm.engine.checkpoint import weights_mismatch

    if ckpt is None or not Path(ckpt).is_file():
        return
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (an unreadable file: Lightning's own error says why)
        return
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        return
    mismatch = weights_mismatch(module, weights)
    if not mismatch and trained_tensors:
        # the optimiser's state must cover the same parameters: a fine-tuning run started when
        # rsfm kept the ViT's position embedding fixed trained one tensor fewer
        groups = [g for opt in state.get("optimizer_states") or () for g in opt.get("param_groups", ())]
        saved = sum(len(g.get("params", ())) for g in groups)
        now = sum(1 for p in module.parameters() if p.requires_grad)
        if groups and saved != now:
            mismatch = (
                f"it trained {saved} parameter tensors, the recipe's model trains {now}; a run started before rsfm "
                "trained the ViT's position embedding resumes with model.encoder.init_args.pos_embed=fixed"
            )
    if mismatch:
        raise CheckpointError(
            f"{ckpt} does not fit the model the recipe builds ({mismatch}): "
            "the recipe's model changed since this run was checkpointed; start a new run (another run_name "
            "or output_dir) or resume with the recipe it was trained with (stored in the checkpoint as rsfm_recipe)"
        )


def _plain(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in recipe.items() if not k.startswith("_")}


def _write_recipe(out: Path, recipe: dict[str, Any]) -> None:
    from rsfm.utils.files import atomic_write

    atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(recipe["_yaml"], encoding="utf-8"))


# --------------------------------------------------------------------------- pretraining


def pretrain(recipe: dict[str, Any], callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Pretrain, export the encoder and (``evaluate.enabled``) evaluate it on the held-out split.

    Args:
        recipe: a checked recipe (:func:`rsfm.engine.config.load_recipe`).
        callbacks: extra Lightning callbacks.

    Returns:
        ``run_dir``, ``encoder`` (the export), ``checkpoint`` (``last.ckpt``), ``skipped``
        (counts by reason) and ``metrics`` (the evaluation, or None).
    """
    out = run_dir(recipe)
    data = build_data(recipe)  # first: a bad data folder fails before anything heavy loads
    ev = recipe.get("evaluate") or {}
    if ev.get("enabled") and not ev.get("root") and getattr(data, "root", None) is None:
        source = f"reads the sharded corpus {data.shards}" if getattr(data, "shards", None) else "has no image folder"
        raise ConfigError(
            f"evaluate.enabled: {type(data).__name__} {source}, which has no class labels to evaluate on; "
            "set evaluate.root to a scene-classification folder or evaluate.enabled=false"
        )
    import lightning as L

    from rsfm.engine.data import LightningData
    from rsfm.engine.figures import ReconstructionFigures
    from rsfm.engine.trainer import build_trainer
    from rsfm.methods.base import MaskedImageModel
    from rsfm.methods.module import PretrainTask
    from rsfm.models.export import export_encoder

    L.seed_everything(recipe["seed"], workers=True)
    info = data.info()
    module = PretrainTask(
        model=recipe["model"],
        optim=recipe["optim"],
        data=info.to_dict(),
        batch_size=data.batch_size,
        seed=recipe["seed"],
    )
    compile_mode = recipe["trainer"].get("compile", False)
    if compile_mode:
        module.model.compile_step(mode=None if compile_mode is True else str(compile_mode))
    ckpt, step = _resume(recipe, out)  # before the run folder: a wrong resume path leaves none
    _check_resume_fits(module, ckpt)
    _make_run_dir(out)
    callbacks = list(callbacks or [])
    if isinstance(module.model, MaskedImageModel):
        callbacks.append(
            ReconstructionFigures(out / "figures", recipe["viz"]["every_n_epochs"], recipe["viz"]["num_images"])
        )
    trainer = build_trainer(
        out,
        recipe["trainer"],
        recipe["checkpoint"],
        _plain(recipe),
        numbered=True,
        resume_step=step,
        callbacks=callbacks,
        validate=False,
    )
    if trainer.is_global_zero:
        _write_recipe(out, recipe)
        if ckpt:
            print(f"resuming from {ckpt}")
    with warnings.catch_warnings():
        # pretraining has no validation loop; the datamodule's loader is for the tasks that do
        warnings.filterwarnings("ignore", message=r".*`val_dataloader` but have no `validation_step`")
        trainer.fit(module, datamodule=LightningData(data), ckpt_path=ckpt, weights_only=True)
    skip = next(c for c in trainer.callbacks if type(c).__name__ == "SkipReportCallback")
    result: dict[str, Any] = {"run_dir": str(out), "encoder": None, "metrics": None, "skipped": skip.report.counts()}
    if not trainer.is_global_zero:
        return result
    meta = module.export_meta()
    meta.update(
        data_root=str(getattr(data, "root", None) or ""),
        test_fraction=getattr(data, "test_fraction", None),
        split_seed=getattr(data, "split_seed", None),
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
    )
    if getattr(data, "natural_root", None) is not None:
        meta["natural_root"] = str(data.natural_root)
    if getattr(data, "shards", None):
        meta["data_shards"] = str(data.shards)
    encoder = export_encoder(module.model.encoder, out / "encoder.safetensors", meta)
    result.update(encoder=str(encoder), checkpoint=str(out / "checkpoints" / "last.ckpt"))
    print(f"encoder exported to {encoder}")
    if ev.get("enabled"):
        import torch.distributed as dist

        from rsfm.engine.evaluate import evaluate

        if dist.is_available() and dist.is_initialized():
            # rank 0 evaluates alone (the other ranks have returned): the fine-tuning protocols
            # build a one-device trainer, whose metrics would otherwise sync over the finished
            # run's process group and wait for ranks that are gone
            dist.destroy_process_group()
        fraction = getattr(data, "test_fraction", 0.2)
        if fraction <= 0:
            fraction = 0.2
            log.warning("data.test_fraction is 0: pretraining saw every image, so the evaluation split is not unseen")
        result["metrics"] = evaluate(
            encoder_path=str(encoder),
            data_root=ev.get("root") or str(data.root),
            protocols=list(ev["protocols"]),
            out_dir=str(out / "eval"),
            test_fraction=fraction,
            split_seed=getattr(data, "split_seed", 0),
            batch_size=ev["batch_size"],
            num_workers=ev["num_workers"],
            k=ev["k"],
            temperature=ev["temperature"],
            finetune_epochs=ev["finetune_epochs"],
            finetune_max_time=ev["finetune_max_time"],
            precision=ev.get("precision"),
            seed=recipe["seed"],
        )
    from rsfm.models.model_card import write_model_card

    # the card export_encoder wrote, now with the recipe and the held-out scores
    write_model_card(encoder, meta, metrics=result["metrics"], recipe=recipe)
    return result


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Export the encoder of a pretraining checkpoint (``rsfm export``).

    Args:
        checkpoint: a ``.ckpt`` of an ``rsfm pretrain`` run.
        out: the ``.safetensors`` file to write (weights + build metadata).

    Returns:
        ``out`` as a path.

    Raises:
        CheckpointError: if the file is missing, unsafe, not an rsfm pretraining checkpoint
            (a fine-tuning one included), or holds non-finite weights.
    """
    from rsfm.engine.checkpoint import load_checkpoint, load_weights
    from rsfm.methods.module import PretrainTask
    from rsfm.models.export import export_encoder

    state = load_checkpoint(checkpoint)
    hp = state.get("hyper_parameters") or {}
    if not {"model", "optim", "data"} <= set(hp) or "rsfm_recipe" not in state:
        raise CheckpointError(f"{checkpoint} is not an rsfm pretraining checkpoint (no method or recipe in it)")
    if "heads" in hp["model"] or not {"model", "optim", "data", "batch_size", "seed"} >= set(hp):
        raise CheckpointError(
            f"{checkpoint} is a fine-tuning checkpoint (encoder and task heads); "
            "rsfm export takes the checkpoint of an `rsfm pretrain` run"
        )
    module = PretrainTask(**hp)
    load_weights(module, state, checkpoint)
    recipe = state["rsfm_recipe"]
    data_args = recipe.get("data", {}).get("init_args", {})
    meta = module.export_meta()
    meta.update(
        data_root=str(data_args.get("root", "")),
        test_fraction=data_args.get("test_fraction"),
        split_seed=data_args.get("split_seed"),
        epochs=state.get("epoch"),
        steps=state.get("global_step"),
    )
    if data_args.get("natural_root"):
        meta["natural_root"] = str(data_args["natural_root"])
    path = export_encoder(module.model.encoder, out, meta)
    from rsfm.models.model_card import write_model_card

    write_model_card(path, meta, recipe=recipe)  # the card export_encoder wrote, with the recipe
    return path


# --------------------------------------------------------------------------- downstream


def _downstream(recipe: dict[str, Any], seed: bool = False) -> tuple[Any, DataModule]:
    """The datamodule (built first: a bad data folder fails before the model) and the task."""
    data = build_data(recipe)
    import lightning as L

    if seed:
        L.seed_everything(recipe["seed"], workers=True)
    return _task_module(recipe, data.info().to_dict(), data.batch_size), data


def _task_module(recipe: dict[str, Any], info: dict[str, Any], batch_size: int) -> Any:
    """The recipe's task model for data described by ``info`` (a :class:`~rsfm.data.base.DataInfo` dict)."""
    from rsfm.tasks.module import DownstreamTask

    model = recipe["model"]
    return DownstreamTask(
        model={"encoder": model["encoder"], "neck": model.get("neck"), "heads": model["heads"]},
        optim=recipe["optim"],
        data=info,
        batch_size=batch_size,
        seed=recipe["seed"],
        monitor=model.get("monitor"),
        num_visualisations=model.get("num_visualisations", 4),
    )


def _summary(
    out: Path, recipe: dict[str, Any], tested: list[dict[str, float]], ckpt: str | None, trainer: Any = None
) -> dict[str, Any]:
    result = {
        "checkpoint": ckpt,
        "scale": "percent",
        "metrics": {k: float(v) for k, v in tested[0].items()} if tested else {},
        "details": str(out / "test" / "metrics.json"),
        "config": _plain(recipe),
    }
    skips = next((c for c in getattr(trainer, "callbacks", ()) if type(c).__name__ == "SkipReportCallback"), None)
    if skips is not None and skips.test_report is not None:  # files the test left out, by reason
        result["skipped"] = skips.test_report.counts()
    if trainer is None or trainer.is_global_zero:  # the scores are gathered: every rank holds them
        write_json(out / "metrics.json", result)
    return result


def train_task(recipe: dict[str, Any], callbacks: list[Any] | None = None) -> tuple[Any, Any, Any, Path]:
    """Fine-tune on the train split (resuming when the run folder has a checkpoint).

    Args:
        recipe: a checked recipe.
        callbacks: extra Lightning callbacks.

    Returns:
        ``(trainer, module, lightning datamodule, run folder)`` after ``fit``.
    """
    out = run_dir(recipe)
    if recipe["trainer"].get("compile"):
        raise ConfigError(
            "trainer.compile applies to pretraining (rsfm pretrain: MAE, SelectiveMAE); "
            "fine-tuning runs eagerly: set trainer.compile=false"
        )
    strategy = recipe["trainer"].get("strategy")
    if isinstance(strategy, str) and strategy.lower().startswith("fsdp"):
        raise ConfigError(
            f"trainer.strategy={strategy}: FSDP applies to pretraining (rsfm pretrain: MAE, SelectiveMAE); "
            "fine-tune data-parallel with trainer.strategy=ddp"
        )
    module, data = _downstream(recipe, seed=True)

    from rsfm.engine.data import LightningData
    from rsfm.engine.trainer import build_trainer

    ckpt, step = _resume(recipe, out)  # before the run folder: a wrong resume path leaves none
    _check_resume_fits(module, ckpt, trained_tensors=True)
    _make_run_dir(out)
    has_val = data.val_dataloader() != []
    trainer = build_trainer(
        out,
        recipe["trainer"],
        recipe["checkpoint"],
        _plain(recipe),
        monitor=module.monitor if has_val else None,
        resume_step=step,
        callbacks=list(callbacks or []),
        validate=has_val,
    )
    module.out_dir = str(out / "test")
    if trainer.is_global_zero:
        _write_recipe(out, recipe)
        if ckpt:
            print(f"resuming from {ckpt}")
    lightning_data = LightningData(data)
    trainer.fit(module, datamodule=lightning_data, ckpt_path=ckpt, weights_only=True)
    return trainer, module, lightning_data, out


def finetune(recipe: dict[str, Any], callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Fine-tune on the train split, keep the best validation checkpoint, test it.

    Args:
        recipe: a checked recipe.
        callbacks: extra Lightning callbacks.

    Returns:
        ``run_dir``, ``checkpoint`` (the tested one) and ``metrics`` (test scores, percent).
    """
    trainer, module, lightning_data, out = train_task(recipe, callbacks)
    best = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
    tested_ckpt = best.best_model_path if best is not None and best.best_model_path else None
    tested = trainer.test(module, datamodule=lightning_data, ckpt_path=tested_ckpt, weights_only=True)
    return {"run_dir": str(out), **_summary(out, recipe, tested, tested_ckpt, trainer)}


def _load_task(recipe: dict[str, Any], checkpoint: str | Path, need_data: bool = True) -> tuple[Any, DataModule | None]:
    """The fine-tuned task of a checkpoint, and the recipe's datamodule (None when not needed).

    Without ``need_data`` (``rsfm predict``) the model is built from the data description the
    checkpoint stores (classes, bands, statistics), so the training set need not be on disk;
    checkpoints without one fall back to the recipe's datamodule.
    """
    from rsfm.engine.checkpoint import load_checkpoint, load_weights

    data: DataModule | None = None
    if need_data:
        module, data = _downstream(recipe)
    state = load_checkpoint(checkpoint)
    hparams = state.get("hyper_parameters") or {}
    trained = hparams.get("model")
    if isinstance(trained, dict) and "class_path" in trained and "heads" not in trained:
        method = str(trained["class_path"]).rsplit(".", 1)[-1]
        raise CheckpointError(
            f"{checkpoint} is a pretraining checkpoint ({method}), not a fine-tuned model: export its encoder "
            f"(rsfm export --checkpoint {checkpoint} --out encoder.safetensors) and fine-tune it "
            "(model.encoder.weights=encoder.safetensors)"
        )
    if not need_data:
        if isinstance(hparams.get("data"), dict):
            module = _task_module(recipe, hparams["data"], int(hparams.get("batch_size") or 1))
        else:
            module, data = _downstream(recipe)
    load_weights(module, state, checkpoint)
    norm = state.get("rsfm_normalisation")  # older checkpoints lack it: the recipe's statistics
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        recipe_norm = module.model.mean_std
        module.model.set_normalisation(norm["mean"], norm["std"])
        if module.model.mean_std != recipe_norm:
            print(
                f"normalising inputs as {checkpoint} was trained (mean {norm['mean']}, std {norm['std']}), "
                f"not as the recipe would (mean {recipe_norm[0]}, std {recipe_norm[1]})"
            )
    return module, data


def test(recipe: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """Evaluate a fine-tuned checkpoint on the recipe's test split (``rsfm test``).

    Writes ``metrics.json`` and ``test/`` (reports, pictures) into the recipe's run folder;
    a training run's checkpoints and ``logs/`` there are left as they are.

    Args:
        recipe: a checked fine-tuning recipe (the one the checkpoint was trained with).
        checkpoint: the ``.ckpt`` file.

    Returns:
        ``run_dir``, ``checkpoint`` and ``metrics`` (test scores, percent).

    Raises:
        CheckpointError: if the file is missing, unsafe or does not fit the recipe's model.
        DataError: if the recipe's data cannot be read.
    """
    from rsfm.engine.data import LightningData
    from rsfm.engine.trainer import build_trainer

    out = run_dir(recipe)
    module, data = _load_task(recipe, checkpoint)
    _make_run_dir(out)
    module.out_dir = str(out / "test")
    trainer = build_trainer(out, recipe["trainer"], recipe["checkpoint"], fitting=False)
    tested = trainer.test(module, datamodule=LightningData(data))
    return {"run_dir": str(out), **_summary(out, recipe, tested, str(checkpoint), trainer)}


def predict(
    recipe: dict[str, Any], checkpoint: str | Path, inputs: list[str], output: str | Path, head: str | None = None
) -> Path:
    """Run a fine-tuned checkpoint on image files (``rsfm predict``).

    Args:
        recipe: a checked fine-tuning recipe (the one the checkpoint was trained with).
        checkpoint: the ``.ckpt`` file.
        inputs: image files (two, before and after, for change detection).
        output: file or folder to write (see :func:`rsfm.tasks.predict.predict_files`).
        head: the head to run; None: the model's only or first head.

    Returns:
        The path written.

    Raises:
        DataError: if an input file is missing or unreadable.
        CheckpointError: if the checkpoint is missing, unsafe or does not fit the model.
    """
    from rsfm.tasks.predict import predict_files
    from rsfm.utils.errors import DataError

    for p in inputs:
        if not Path(p).is_file():
            raise DataError(f"--input: file not found: {p}")
    module, _ = _load_task(recipe, checkpoint, need_data=False)
    return predict_files(module, inputs, output, head)
