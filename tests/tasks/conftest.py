"""Fixtures of the downstream-task tests.

``finetuned`` runs ``rsfm finetune`` once per recipe and session (in-process, a few seconds
each: 64 px crops, a patch-32 ViT-Tiny, two training batches, one validation and one test
image) and hands the run folder and the overrides to the tests of ``rsfm test`` and
``rsfm predict``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from task_helpers import AID_CLASSES, DATA_FOLDER, FAST, RECIPES, SMALL, Run


@pytest.fixture(scope="session")
def finetuned(datasets: Path, aid_subset, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """Factory: ``finetuned(recipe name)`` -> the :class:`Run` of ``rsfm finetune``, made once per session."""
    runs: dict[str, Run] = {}

    def make(name: str) -> Run:
        if name in runs:
            return runs[name]
        out = tmp_path_factory.mktemp(name)
        if name == "classification_aid":
            root = aid_subset(AID_CLASSES, 20)
        else:
            root = datasets / DATA_FOLDER[name]
        overrides = [f"output_dir={out}", f"run_name={name}", f"data.root={root}", *FAST, *SMALL[name]]
        run = Run(RECIPES / f"{name}.yaml", out / name, overrides, extra={"root": root})
        code, stdout, stderr = run.cli("finetune")
        assert code == 0, stderr
        run.stdout = stdout
        runs[name] = run
        return run

    return make
