"""The one LightningModule that fine-tunes any task: an encoder, a neck and any set of heads.

:class:`DownstreamTask` builds a :class:`~rsfm.models.task_model.TaskModel` from the recipe's
``model`` section and knows nothing about the heads it trains: each head brings its loss, its
metrics, its evaluation-time prediction and its pictures (:class:`~rsfm.models.heads.base.Head`).
The training loss is the weighted sum of the heads' losses over one shared encoder pass;
validation and testing score every evaluated head on whole images; the checkpoint that is
tested is selected by :attr:`DownstreamTask.monitor` (the first evaluated head's metric,
e.g. ``val/mIoU``). All scores are percentages.

.. versionadded:: 0.2
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from rsfm.data.base import DataInfo
from rsfm.models.heads.base import Head
from rsfm.models.task_model import TaskModel
from rsfm.optim import param_groups
from rsfm.training import TrainingModule
from rsfm.utils.errors import ConfigError, DataError
from rsfm.utils.files import write_json

__all__ = ["DownstreamTask"]


class DownstreamTask(TrainingModule):
    """Fine-tunes and evaluates a :class:`~rsfm.models.task_model.TaskModel`.

    Batches are the datamodule's sample dicts (images in [0, 1]; the model normalises). Files
    the loaders could not read are already left out of them and listed under ``skipped`` (the
    skip report counts them); a batch may thus hold fewer samples than ``batch_size``, or none.

    Args:
        model: ``{"encoder": spec, "neck": spec | None, "heads": {name: spec}}``, each spec
            ``{"class_path": ..., "init_args": {...}}``.
        optim: the ``optim`` section (:class:`rsfm.optim.OptimConfig` fields); ``layer_decay``
            applies to the encoder, necks and heads train at the full ``lr``.
        data: the datamodule's :class:`~rsfm.data.base.DataInfo` as a dict.
        batch_size: per-device batch (for ``optim.blr`` scaling).
        seed: run seed (dropout and sampling of every batch derive from it).
        monitor: the metric that selects the tested checkpoint, e.g. ``val/mIoU``; None: the
            first evaluated head's.
        num_visualisations: test samples drawn per head (PNG files under ``visualisations/``).

    Raises:
        ConfigError: on a bad model specification or a monitor no head logs.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        data: dict[str, Any],
        batch_size: int = 8,
        seed: int = 0,
        monitor: str | None = None,
        num_visualisations: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        info = DataInfo(**{**data, "sample_keys": tuple(data.get("sample_keys", ("image",)))})
        if info.palette is not None:
            info.palette = [tuple(int(v) for v in c) for c in info.palette]  # type: ignore[misc]
        self.info = info
        self.model = TaskModel(model["encoder"], model["heads"], model.get("neck"), info)
        evaluated = [name for name, head in self.model.heads.items() if head.evaluate and head.monitor]
        if not evaluated:
            raise ConfigError("model.heads: no head is evaluated (every one has evaluate: false)")
        self.evaluated = evaluated
        self.val_metrics = nn.ModuleDict({n: self.model.heads[n].make_metrics() for n in evaluated})
        self.test_metrics = nn.ModuleDict({n: self.model.heads[n].make_metrics() for n in evaluated})
        first = self.model.heads[evaluated[0]]
        self.monitor = monitor or self.metric_key("val", evaluated[0], str(first.monitor))
        self._check_monitor()
        #: folder of the test outputs (``metrics.json``, ``visualisations/``); None: the log folder
        self.out_dir: str | None = None
        self._visuals: dict[str, list[tuple[str, Any]]] = {}
        self._warned_single = False
        self._probe_features: dict[str, tuple[Tensor, Tensor, int]] = {}

    def _check_monitor(self) -> None:
        """Refuse a ``model.monitor`` that no evaluated head logs (before any training).

        Raises:
            ConfigError: naming ``model.monitor`` and the validation metrics of this task, or
                ``model.heads.<name>`` whose ``monitor`` its own metrics do not compute.
        """
        known: list[str] = []
        declared = True
        for name in self.evaluated:
            head, names = self.model.heads[name], self.val_metrics[name].names
            if not names:
                declared = False
                continue
            if head.monitor not in names:
                raise ConfigError(
                    f"model.heads.{name}: {type(head).__name__}.monitor {head.monitor!r} is not one of "
                    f"the metrics it computes {list(names)}"
                )
            known += [self.metric_key("val", name, metric) for metric in names]
        if self.monitor in known:
            return
        parts = self.monitor.split("/")
        named = 2 if len(self.evaluated) == 1 else 3  # val/<metric> or val/<head>/<metric>
        well_formed = parts[0] == "val" and len(parts) == named and (named == 2 or parts[1] in self.evaluated)
        if not declared and well_formed:
            return  # a head whose metrics do not list their names: only the form can be checked
        first = self.model.heads[self.evaluated[0]]
        example = self.metric_key("val", self.evaluated[0], str(first.monitor))
        raise ConfigError(
            f"model.monitor: {self.monitor!r} is not a validation metric of this task; "
            + (f"choose one of {known}" if declared else f"they are named like {example!r}")
        )

    def metric_key(self, stage: str, head: str, metric: str) -> str:
        """``stage/metric`` with one evaluated head, ``stage/head/metric`` with several."""
        return f"{stage}/{metric}" if len(self.evaluated) == 1 else f"{stage}/{head}/{metric}"

    @property
    def heads(self) -> dict[str, Head]:
        """The task's heads by name."""
        return dict(self.model.heads.items())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the input normalisation (``rsfm_normalisation``: per-band ``mean``, ``std``).

        The model normalises with buffers that are not weights (an encoder export's statistics
        when it was built from one, else the data's), so ``rsfm test`` and ``rsfm predict`` read
        them from here rather than from a recipe that may lack the export.
        """
        mean, std = self.model.mean_std
        checkpoint["rsfm_normalisation"] = {"mean": list(mean), "std": list(std)}

    # -- linear-probe initialisation (LP-FT) -----------------------------------------------------

    def on_fit_start(self) -> None:
        """Fit the classifiers with ``init: linear_probe`` on frozen features before the first step.

        LP-FT (Kumar et al., ICLR 2022; arXiv:2202.10054): the pooled features of the unaugmented training
        split (:meth:`rsfm.data.base.DataModule.unaugmented_train`) and, when there is one, of
        the validation split are computed once by the encoder as it stands (eval mode, the
        run's precision, no gradients); a linear probe (:func:`rsfm.tasks.probes.linear_probe`,
        seeded by the run's seed) is trained on the training features and folded into the
        head's classifier. Its validation OA (the score fine-tuning starts from), learning
        rate and time are printed and written to ``probe_init.json`` in the run folder (the
        trainer's ``default_root_dir``). Under data parallelism each process extracts the
        features of its own share of the samples and the shares are gathered; every process
        fits the probe on all of them, and the first one's weights are then broadcast (since
        0.3.4; before, every process read every sample). Skipped when the run resumes from
        a checkpoint (its weights already hold the probe and what fine-tuning made of it).

        Raises:
            ConfigError: under a sharded strategy (FSDP), or without a datamodule.
            DataError: if the datamodule cannot give an unaugmented training split.
        """
        heads = [(n, h) for n, h in self.model.heads.items() if getattr(h, "init", None) == "linear_probe"]
        if not heads or self.trainer.ckpt_path is not None:
            return
        from rsfm.training import is_sharded

        field = f"model.heads.{heads[0][0]}.init_args.init"
        if is_sharded(self.trainer):
            raise ConfigError(f"{field}: linear_probe is not supported under a sharded strategy (FSDP); use ddp")
        datamodule = getattr(self.trainer, "datamodule", None)
        data = getattr(datamodule, "data", None)
        if data is None:
            raise ConfigError(f"{field}: linear_probe needs the run's rsfm datamodule (rsfm finetune passes it)")
        reports = {}
        for name, head in heads:
            reports[name] = self._fit_probe(name, head, data)
        if self.trainer.is_global_zero:
            write_json(Path(self.trainer.default_root_dir) / "probe_init.json", {"scale": "percent", "heads": reports})

    def use_probe_features(self, head: str, features: Tensor, labels: Tensor, skipped: int = 0) -> None:
        """Fit ``head``'s LP-FT probe on these training features instead of extracting them at fit start.

        For a caller that already holds the frozen encoder's pooled features of the unaugmented
        training split, e.g. ``rsfm evaluate``, whose kNN and linear protocols computed them:
        the split is then read once, not twice. The caller vouches that they are what this
        model's encoder computes (same images and order, same pooling, same normalisation); the
        validation split, if any, is still extracted. ``probe_init.json`` says
        ``"training_features": "given"`` instead of ``"extracted"``. Every process of a
        data-parallel run must be given the whole split. The module keeps them (on the CPU)
        until the probe is fitted, then lets them go.

        Args:
            head: the name of a head with ``init: linear_probe``.
            features: ``(N, D)`` float pooled features, ``D`` the head's input width.
            labels: ``(N,)`` int64 classes.
            skipped: training files the extraction left out (reported in ``probe_init.json``).

        Raises:
            ConfigError: if ``head`` is not a head of this model with ``init: linear_probe``.
            ValueError: on features of another width, or labels of another length.

        .. versionadded:: 0.3.5
        """
        found = self.model.heads[head] if head in self.model.heads else None
        if found is None or getattr(found, "init", None) != "linear_probe":
            probed = [n for n, h in self.model.heads.items() if getattr(h, "init", None) == "linear_probe"]
            raise ConfigError(
                f"model.heads.{head}: use_probe_features needs a head with init: linear_probe; "
                f"this model's are {probed}"
            )
        width = found.fc.in_features
        if features.ndim != 2 or features.shape[1] != width:
            raise ValueError(f"model.heads.{head}: expected (N, {width}) probe features, got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(
                f"model.heads.{head}: expected {features.shape[0]} labels for the probe features, "
                f"got {tuple(labels.shape)}"
            )
        self._probe_features[head] = (features.detach().float().cpu(), labels.detach().long().cpu(), int(skipped))

    @torch.no_grad()
    def _pooled(self, head: Head, loader: Any, split: str) -> tuple[Tensor, Tensor, int]:
        """``(N, D)`` float32 pooled features and ``(N,)`` labels of a split, in dataset order, and the files left out.

        ``loader`` gives this process its share of the split; the shares of all processes are
        gathered (:func:`rsfm.tasks.probes.gather_by_index`), so every process returns the whole
        split, as one process would. Each batch's features go to host memory as they are
        computed (since 0.3.5; before, the split's features stayed on the accelerator until the
        end); under data parallelism they visit the device once more for the gather, which
        NCCL needs.
        """
        from rsfm.tasks.probes import gather_by_index

        feats: list[Tensor] = []
        labels: list[Tensor] = []
        index: list[Tensor] = []
        skipped = 0
        for batch in loader:
            skipped += len(batch.get("skipped") or ())
            if self.batch_size_of(batch) == 0:
                continue
            batch = self.trainer.datamodule.transfer_batch_to_device(batch, self.device, 0)
            with self.trainer.precision_plugin.forward_context():
                pooled = self.model.features(batch, head).pooled["image"]
            feats.append(pooled.float().cpu())
            labels.append(batch["label"].long().cpu())
            if "index" in batch:
                index.append(torch.as_tensor(batch["index"]).long().cpu())
            elif self.trainer.world_size > 1:  # the shares cannot be put back in order
                raise DataError(
                    f"init: linear_probe under data parallelism needs the dataset index of every sample; "
                    f"the {split} batches of {type(self.trainer.datamodule.data).__name__} have no 'index'"
                )
            else:  # one process reads the split in order
                start = sum(len(i) for i in index)
                index.append(torch.arange(start, start + pooled.shape[0]))
        empty = torch.zeros(0, head.fc.in_features)
        x = torch.cat(feats) if feats else empty
        y = torch.cat(labels) if labels else empty[:, 0].long()
        idx = torch.cat(index) if index else y
        if self.trainer.world_size > 1:  # the collective runs where the process group does (NCCL: CUDA)
            idx, x, y = idx.to(self.device), x.to(self.device), y.to(self.device)
        _, x, y = gather_by_index(idx, x, y)
        if self.trainer.world_size > 1:
            skipped = int(self.trainer.strategy.reduce(torch.tensor(skipped, device=self.device), reduce_op="sum"))
        if not x.shape[0]:
            raise DataError(f"init: linear_probe: the {split} split yielded no readable image")
        return x.cpu(), y.cpu(), skipped

    def _fit_probe(self, name: str, head: Head, data: Any) -> dict[str, Any]:
        """Fit one head's probe (see :meth:`on_fit_start`); return its report."""
        from rsfm.tasks.probes.linear import DEFAULT_LR_GRID, linear_probe

        start = time.perf_counter()
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            given = self._probe_features.pop(name, None)  # used once: not held for the whole run
            if given is not None:
                x, y, skipped = given
            else:
                train = data.loader(data.unaugmented_train(), train=False)
                x, y, skipped = self._pooled(head, train, "training")
            val_ds = data.datasets.get("val")
            xv, yv = x[:0], None
            if val_ds is not None and len(val_ds):
                xv, yv, more = self._pooled(head, data.loader(val_ds, train=False), "validation")
                skipped += more
        finally:
            for m, mode in modes.items():
                m.train(mode)
        grid = head.probe_lr if head.probe_lr is not None else DEFAULT_LR_GRID
        dev = self.device  # the probe trains where the run does (cached features: fast on a GPU)
        result = linear_probe(
            x.to(dev), y.to(dev), xv.to(dev), yv, head.num_classes, epochs=head.probe_epochs, lr=grid,
            seed=int(self.hparams.seed),
        )  # fmt: skip
        assert result.head is not None
        head.load_probe(result.head)
        if self.trainer.world_size > 1:
            state = self.trainer.strategy.broadcast({k: v.cpu() for k, v in head.fc.state_dict().items()})
            head.fc.load_state_dict(state)
        report = {
            "lr": result.lr,
            "epochs": head.probe_epochs,
            "lr_search": {f"{v:g}": acc for v, acc in result.grid.items()},
            "train_samples": int(x.shape[0]),
            "training_features": "extracted" if given is None else "given",
            "val_samples": int(xv.shape[0]),
            "val_OA": result.accuracy,
            "skipped_files": skipped,
            "seconds": round(time.perf_counter() - start, 1),
        }
        val = "no validation split" if result.accuracy is None else f"val OA {result.accuracy:.2f}%"
        self.print(
            f"model.heads.{name}: linear-probe init (LP-FT) on {x.shape[0]} frozen training features: "
            f"lr {result.lr:g}, {head.probe_epochs} epochs, {val}, {report['seconds']:.0f} s"
            + (f"; {skipped} unreadable file(s) left out" if skipped else "")
        )
        return report

    # -- optimisation ----------------------------------------------------------------------------

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Layer-decay groups of the encoder (``optim.layer_decay``); full ``lr`` for neck and heads."""
        cfg = self.optim_config
        return param_groups(self.model, self.model.encoder, lr, cfg.weight_decay, cfg.layer_decay)

    # -- training --------------------------------------------------------------------------------

    @staticmethod
    def batch_size_of(batch: dict[str, Any]) -> int:
        """Number of samples in a batch (tensor or list batches)."""
        for key in ("image", "image_a"):
            if key in batch:
                x = batch[key]
                return int(x.shape[0]) if isinstance(x, Tensor) else len(x)
        return 0

    def _batchnorm_needs_two(self) -> bool:
        """Whether a plain (not synchronised) BatchNorm layer is training: it cannot normalise one sample's 1×1 map."""
        return any(
            isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm) and m.training
            for m in self.model.modules()
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """Weighted sum of every head's loss over one encoder pass.

        A batch with no readable sample is passed over (no optimiser step) in one process and
        contributes a zero loss (touching every parameter) under DDP. So is a batch that
        unreadable files left with a single sample while the model trains plain BatchNorm
        layers (UperNet's pooling pyramid normalises 1×1 maps, which needs two samples); one
        warning says so.
        """
        n = self.batch_size_of(batch)
        single = n == 1 and bool(batch.get("skipped")) and self._batchnorm_needs_two()
        if single and not self._warned_single:
            self._warned_single = True
            warnings.warn(
                "a training batch left with one readable sample by skipped files was passed over: "
                "the model's BatchNorm layers need at least two samples",
                stacklevel=2,
            )
        if n == 0 or single:
            return self.zero_loss() if self.trainer.world_size > 1 else None
        features = self.model.features(batch)
        total: Tensor | None = None
        for name, head in self.model.heads.items():
            for term, value in head.loss(features, batch).items():
                weighted = head.loss_weight * value
                total = weighted if total is None else total + weighted
                self.log(
                    f"train/{name}/{term}", value.detach(), on_step=False, on_epoch=True, batch_size=n, sync_dist=True
                )
        assert total is not None
        self.log("train/loss", total, on_step=True, prog_bar=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], on_step=True, batch_size=n)
        return total

    # -- evaluation ------------------------------------------------------------------------------

    def _evaluate(self, batch: dict[str, Any], metrics: nn.ModuleDict, keep: bool) -> None:
        if self.batch_size_of(batch) == 0:
            return
        for name in self.evaluated:
            head = self.model.heads[name]
            preds = head.predict(self.model, batch)
            metrics[name].update(preds, batch)
            if keep and self.global_rank == 0:
                self._keep_visuals(name, head, batch, preds)

    def _keep_visuals(self, name: str, head: Head, batch: dict[str, Any], preds: Any) -> None:
        kept = self._visuals.setdefault(name, [])
        ids = batch.get("id") or [str(i) for i in range(self.batch_size_of(batch))]
        for i, sample_id in enumerate(ids):
            if len(kept) >= self.hparams.num_visualisations:
                return
            if head.want_visual(batch, i, preds):
                panel = head.render(batch, i, preds)
                if panel is not None:
                    kept.append((str(sample_id), panel))

    def _log_metrics(self, metrics: nn.ModuleDict, stage: str) -> dict[str, float]:
        logged: dict[str, float] = {}
        for name in self.evaluated:
            for metric, value in metrics[name].compute().items():
                key = self.metric_key(stage, name, metric)
                logged[key] = float(value)
                self.log(key, float(value), prog_bar=key == self.monitor.replace("val/", f"{stage}/"), sync_dist=False)
        return logged

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Predict whole validation samples with every evaluated head; accumulate the metrics."""
        self._evaluate(batch, self.val_metrics, keep=False)

    def on_validation_epoch_end(self) -> None:
        """Log the validation scores (percent) and reset."""
        self._log_metrics(self.val_metrics, "val")
        for m in self.val_metrics.values():
            m.reset()

    def on_test_epoch_start(self) -> None:
        """Forget the pictures of an earlier test run."""
        self._visuals = {}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Predict whole test samples; accumulate the metrics; keep the first samples for pictures."""
        self._evaluate(batch, self.test_metrics, keep=True)

    def resolve_out_dir(self) -> Path:
        """:attr:`out_dir`, else the trainer's ``log_dir``, else its ``default_root_dir``."""
        if self.out_dir is not None:
            return Path(self.out_dir)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or self.trainer.default_root_dir)

    def on_test_epoch_end(self) -> None:
        """Log the test scores; write ``metrics.json`` (per head, per class) and the pictures."""
        logged = self._log_metrics(self.test_metrics, "test")
        reports = {name: self.test_metrics[name].report() for name in self.evaluated}
        for m in self.test_metrics.values():
            m.reset()
        if not self.trainer.is_global_zero:
            return
        out = self.resolve_out_dir()
        write_json(out / "metrics.json", {"split": "test", "scale": "percent", "metrics": logged, "heads": reports})
        for name, panels in self._visuals.items():
            self.model.heads[name].save_visuals(panels, out / "visualisations" / name)
        self._visuals = {}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Predictions of every evaluated head for whole samples."""
        return {name: self.model.heads[name].predict(self.model, batch) for name in self.evaluated}

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Same as :meth:`forward`."""
        return self(batch)
