"""Callbacks of every rsfm trainer: skipped-file report, non-finite guard, recipe in checkpoints.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from rsfm.data.skips import SkipReport
from rsfm.training import is_sharded
from rsfm.utils.errors import TrainingDiverged

__all__ = ["NonFiniteGuard", "SkipReportCallback", "StoreRecipe", "gather_report"]


def gather_report(report: SkipReport) -> SkipReport:
    """Merge the skip reports of all ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return report
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, report.to_dict())
    merged = SkipReport()
    for part in parts:
        merged.merge(part)
    return merged


class SkipReportCallback(L.Callback):
    """Count the files skipped during a fit or a test and report them at the end.

    Seeded at ``setup`` with the datamodule's ``scan_skipped`` (files that were never
    samples), it adds ``batch['skipped']`` of every train and validation batch (batches from
    :func:`~rsfm.data.skips.collate_skipping`). At the end of ``fit`` the reports of all ranks
    are merged, rank 0 prints a one-line summary (``'3 files skipped: 2 truncated, 1
    zero_byte'`` or ``'no files skipped'``) and writes ``skipped_files.json`` into
    ``trainer.log_dir`` (or ``trainer.default_root_dir``). The report is saved in checkpoints,
    so a resumed run keeps its counts.

    A test (after a fit, or ``rsfm test``) keeps its own report, seeded with the scan's skips
    and fed by the test batches; rank 0 prints it (``'test: 4 files skipped: 4 truncated'``)
    and writes it beside the test's ``metrics.json`` (the module's ``resolve_out_dir()``, else
    ``trainer.default_root_dir``), so a test over fewer samples than the split holds says why.

    Args:
        filename: name of the JSON files written.
        scan_skipped: extra ``(path, reason)`` pairs to seed the report with.

    Attributes:
        report: the :class:`~rsfm.data.skips.SkipReport` of a fit on this rank (all ranks after ``fit``).
        test_report: the report of the last test (all ranks after it), None before one.
        path: the fit's JSON file, once written.
        test_path: the test's JSON file, once written.
    """

    def __init__(self, filename: str = "skipped_files.json", scan_skipped: Iterable[Sequence[str]] = ()) -> None:
        self.filename = filename
        self.report = SkipReport(scan_skipped)
        self.test_report: SkipReport | None = None
        self.path: Path | None = None
        self.test_path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Seed the report of the stage (the test's own one for ``test``) with the scan-time skips."""
        datamodule = getattr(trainer, "datamodule", None)
        scanned = getattr(datamodule, "scan_skipped", None) or ()
        if stage == "test":
            self.test_report = SkipReport(scanned)
        else:
            self.report.add(scanned)

    def _add_batch(self, batch: Any, report: SkipReport | None = None) -> None:
        """Add a batch's skipped files to ``report`` (the fit's by default)."""
        report = self.report if report is None else report
        if not isinstance(batch, Mapping):
            return
        if batch.get("skipped"):
            report.add(batch["skipped"])
        for value in batch.values():  # one batch per subset (multi-task pretraining)
            if isinstance(value, Mapping) and value.get("skipped"):
                report.add(value["skipped"])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record the batch's skipped files."""
        self._add_batch(batch)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Record the batch's skipped files."""
        self._add_batch(batch)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Record the test batch's skipped files (in the test's own report)."""
        if self.test_report is None:
            self.test_report = SkipReport()
        self._add_batch(batch, self.test_report)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge the test reports of all ranks; rank 0 prints the summary and writes the JSON."""
        self.test_report = gather_report(self.test_report or SkipReport())
        if trainer.is_global_zero:
            resolve = getattr(pl_module, "resolve_out_dir", None)
            out = Path(resolve() if callable(resolve) else trainer.default_root_dir)
            self.test_path = self.test_report.write_json(out / self.filename)
            where = f" (listed in {self.test_path})" if self.test_report.total else ""
            print(f"test: {self.test_report.summary()}{where}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge the reports of all ranks; rank 0 prints the summary and writes the JSON."""
        self.report = gather_report(self.report)
        log_dir = trainer.log_dir or trainer.default_root_dir  # log_dir: call on all ranks
        if trainer.is_global_zero:
            print(self.report.summary())
            self.path = self.report.write_json(Path(log_dir) / self.filename)

    def state_dict(self) -> dict[str, Any]:
        """The report, saved in checkpoints."""
        return self.report.to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the report from a checkpoint."""
        self.report.merge(state_dict)


class NonFiniteGuard(L.Callback):
    """Stop a run before an optimiser step would use a NaN or infinite loss or gradient.

    Every step, after the backward pass and before the optimiser step (and before gradient
    clipping), the loss and the total gradient norm are checked on the device and read with
    one synchronisation. A non-finite value raises :class:`~rsfm.utils.errors.TrainingDiverged`
    and the weights never take the step.

    The weights the failing step started from are finite but unusable: resuming from them
    with any learning rate gives the same non-finite gradients. So checkpoints of that step
    (``global_step`` equal to the current one) are set aside as ``*.ckpt.diverged`` and
    ``last.ckpt`` is replaced by the newest remaining checkpoint, whose next step was checked
    finite: ``last.ckpt`` is the last good state, and rerunning with a lower learning rate
    continues from it (from scratch when no good checkpoint exists). With ``16-mixed``
    precision the gradient check is left to the gradient scaler (which skips steps with
    overflowing gradients by design) and only the loss is checked.

    Args:
        checkpoint_dir: the run's checkpoint folder.
    """

    def __init__(self, checkpoint_dir: str | Path | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        """Keep the loss of the step (detached)."""
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        """Raise :class:`TrainingDiverged` if the loss or a gradient is not finite."""
        device = pl_module.device
        loss = self._loss if self._loss is not None else torch.zeros((), device=device)
        finite = torch.isfinite(loss.float()).all()
        if str(trainer.precision) != "16-mixed":
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                norms = torch._foreach_norm(grads)
                finite = finite & torch.isfinite(torch.stack([n.float() for n in norms]).sum())
        if is_sharded(trainer):
            # under FSDP each rank sees only its shard of the gradients: every rank must stop
            # (under DDP the gradients are already the same on every rank after their all-reduce)
            flag = finite.to(torch.int32).reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag[0].bool()
        if bool(finite):
            return
        what = (
            f"loss is {float(loss):g}" if not bool(torch.isfinite(loss.float()).all()) else "a gradient is not finite"
        )
        good = self.set_aside(trainer.global_step) if trainer.is_global_zero else None
        raise TrainingDiverged(self.message(trainer, what, good))

    def set_aside(self, step: int) -> tuple[Path, int] | None:
        """Rename the checkpoints of ``step`` to ``*.ckpt.diverged``; make ``last.ckpt`` the newest good one.

        Returns:
            ``(path, step)`` of the last good checkpoint, or None when there is none.
        """
        import shutil

        from rsfm.engine.checkpoint import checkpoint_step, resumable_checkpoints
        from rsfm.utils.files import atomic_write

        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return None
        steps = {p: checkpoint_step(p) for p in self.checkpoint_dir.glob("*.ckpt")}
        resumable = set(resumable_checkpoints(self.checkpoint_dir))  # best.ckpt is never a resume point
        for p, s in steps.items():
            if s >= step:
                p.replace(p.with_name(p.name + ".diverged"))
        good = {p: s for p, s in steps.items() if s < step and p in resumable}
        if not good:
            return None
        last = self.checkpoint_dir / "last.ckpt"
        newest = max(good, key=lambda p: (good[p], p.name == "last.ckpt"))
        if newest != last:
            atomic_write(last, lambda tmp: shutil.copyfile(newest, tmp))
        return last, good[newest]

    def message(self, trainer: L.Trainer, what: str, good: tuple[Path, int] | None) -> str:
        """The one-line advice: where the last good state is and how to continue."""
        if not trainer.is_global_zero:
            where = "rank 0 sets the checkpoints of this step aside and names the last good state"
        elif good is not None:
            where = f"the last good state is {good[0]} (step {good[1]})"
        else:
            where = "no checkpoint holds a good state, so a rerun starts from scratch"
        return (
            f"training diverged at step {trainer.global_step}: {what}, so the step was not taken; {where}; "
            "lower optim.lr (or optim.blr) and rerun the same command to continue with the new rate"
        )


class StoreRecipe(L.Callback):
    """Keep the resolved recipe inside every checkpoint (``rsfm_recipe``).

    ``rsfm export`` reads the data settings of a pretraining run from it; ``rsfm test`` and
    ``rsfm predict`` take the recipe given on their command line (as the checkpoint was made
    with), so the stored one is the record of how a checkpoint was trained.
    """

    def __init__(self, recipe: dict[str, Any]) -> None:
        self.recipe = recipe

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Add the recipe."""
        checkpoint["rsfm_recipe"] = self.recipe
