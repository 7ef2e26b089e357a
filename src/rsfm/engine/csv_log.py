"""A CSV logger that keeps the history of a run across resumes.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it finds one, so a resumed run loses
every row logged before the stop. :class:`ResumableCSVLogger` keeps the file: rows up to the
step the run resumes from stay, rows after it (logged by the stopped run after its last
checkpoint, and about to be logged again) are dropped, and new rows are appended.

.. versionadded:: 0.2
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from rsfm.utils.files import atomic_write

__all__ = ["ResumableCSVLogger", "truncate_metrics"]


def truncate_metrics(path: str | os.PathLike[str], resume_step: int) -> int:
    """Keep the rows of a ``metrics.csv`` logged before the checkpoint a run resumes from.

    Lightning labels a row with the number of optimiser steps done *before* the step that
    logged it (a row of step ``s`` belongs to update ``s + 1``; epoch-end rows carry the step
    of the epoch's last update), so a checkpoint of ``resume_step`` steps covers the rows
    with ``step < resume_step``; later rows are about to be logged again.

    Returns:
        The number of rows kept.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if not r.get("step") or int(float(r["step"])) < resume_step]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
    return len(rows)


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, minus the deletion of an existing ``metrics.csv``."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it.

    Args:
        save_dir: parent folder.
        name: sub-folder (``logs``).
        version: sub-sub-folder (``""``: none).
        resume_step: the optimiser steps of the checkpoint the run resumes from; rows logged
            after it are dropped first (see :func:`truncate_metrics`).
    """

    def __init__(
        self, save_dir: str | Path, name: str = "logs", version: str = "", resume_step: int | None = None
    ) -> None:
        super().__init__(save_dir, name=name, version=version)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The writer; created once, after truncating the history of a resumed run."""
        if self._experiment is not None:
            return self._experiment
        os.makedirs(self.root_dir, exist_ok=True)
        log_dir = self.log_dir
        if self.resume_step is not None:
            truncate_metrics(Path(log_dir) / ExperimentWriter.NAME_METRICS_FILE, self.resume_step)
        else:
            Path(log_dir, ExperimentWriter.NAME_METRICS_FILE).unlink(missing_ok=True)
        self._experiment = _KeepingWriter(log_dir=log_dir)
        return self._experiment
