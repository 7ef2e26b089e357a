"""The import contract: rsfm's layers import one way (import-linter), and a backwards import breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(pythonpath), "PATH": str(LINT.parent)}
    return subprocess.run([str(LINT)], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_layers_contract_is_kept() -> None:
    proc = _lint(REPO, REPO / "src")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_a_backwards_import_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(REPO / "src" / "rsfm", tmp_path / "src" / "rsfm")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    # the data layer reaching up into the engine, as `models/adapters.py` once imported `engine/export.py`
    io = tmp_path / "src" / "rsfm" / "data" / "io.py"
    io.write_text(io.read_text() + "\nfrom rsfm.engine.run import run_dir  # noqa: E402, F401\n")
    proc = _lint(tmp_path, tmp_path / "src")
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and "rsfm.data.io -> rsfm.engine.run" in proc.stdout
