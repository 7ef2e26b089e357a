"""Which checkpoint a run resumes from, and a fresh run in a folder that already has some."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsfm.engine.checkpoint import resolve_resume
from rsfm.utils.errors import CheckpointError, OutputError


def _ckpt(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    return path


def test_auto_takes_the_newest_of_last_and_numbered_never_best(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    assert resolve_resume(d, "auto") is None  # no folder yet
    _ckpt(d / "epoch000-step000004.ckpt", 4)
    last = _ckpt(d / "last.ckpt", 4)
    assert resolve_resume(d, "auto") == str(last)  # ties go to last.ckpt
    newer = _ckpt(d / "epoch001-step000008.ckpt", 8)  # a kill between numbered and last
    assert resolve_resume(d, "auto") == str(newer)
    _ckpt(d / "best.ckpt", 12)  # saved at validation end: not a resumable training state
    assert resolve_resume(d, "auto") == str(newer)
    (d / ".last.ckpt.123.tmp").write_bytes(b"partial")  # a killed write
    resolve_resume(d, "auto")
    assert not (d / ".last.ckpt.123.tmp").exists()


def test_a_fresh_run_refuses_a_folder_with_checkpoints(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    assert resolve_resume(d, "none") is None
    _ckpt(d / "epoch009-step000090.ckpt", 90)
    with pytest.raises(OutputError, match=r"resume: none, but .*checkpoints holds checkpoints of an earlier run"):
        resolve_resume(d, "none")
    with pytest.raises(OutputError):
        resolve_resume(d, None)


def test_an_explicit_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="resume: checkpoint not found"):
        resolve_resume(tmp_path, str(tmp_path / "nope.ckpt"))
    path = _ckpt(tmp_path / "any.ckpt", 3)
    assert resolve_resume(tmp_path / "other", str(path)) == str(path)
