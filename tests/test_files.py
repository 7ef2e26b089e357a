"""Atomic writes: the destination holds the old file or the whole new one, never a part."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from rsfm.utils.errors import OutputError
from rsfm.utils.files import atomic_write, read_json, write_json


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, lambda tmp: Path(tmp).write_text("one"))
    atomic_write(path, lambda tmp: Path(tmp).write_text("two"))
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("ne")
        raise RuntimeError("writer bug")

    with pytest.raises(RuntimeError, match="writer bug"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_full_disk_is_an_output_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"

    def disk_full(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=rf"cannot write {path}: No space left on device"):
        atomic_write(path, disk_full)
    assert list(tmp_path.iterdir()) == []


def test_json_round_trip_without_nan(tmp_path: Path) -> None:
    path = write_json(tmp_path / "m.json", {"OA": float("nan"), "mIoU": 41.5})
    assert read_json(path) == {"OA": None, "mIoU": 41.5}
