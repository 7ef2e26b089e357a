"""Atomic file writing and JSON, the only file-writing helpers of rsfm.

Every file rsfm writes (checkpoints, exported encoders, metrics, figures, predictions) goes
through :func:`atomic_write`: the content is written to a temporary file *beside* the target
and renamed over it, so a crash or a kill never leaves a truncated file, and the temporary
file is removed when writing fails. A kill (SIGKILL) between the write and the rename leaves
a ``.<name>.<random>.tmp`` file in the target's folder, never outside it;
:func:`remove_stale_temporaries` clears those.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsfm.utils.errors import OutputError

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "file_sha256",
    "read_json",
    "remove_stale_temporaries",
    "to_jsonable",
    "write_json",
]

#: suffix of the temporary files of :func:`atomic_write`
TMP_SUFFIX = ".tmp"


def _make_parent(path: Path) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot write {path}: a file stands where a folder is needed on that path") from None
    except PermissionError:
        raise OutputError(f"cannot write {path}: no permission to create the folder {parent}") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: the folder {parent} is not writable")


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], Any]) -> Path:
    """Write a file atomically: ``write(tmp_path)``, then rename the temporary file over ``path``.

    The temporary file lies in ``path``'s folder (so the rename is atomic and nothing is left
    in the system temp folder), is flushed to disk before the rename, and is deleted if
    ``write`` raises. The result gets the
    permissions a plain ``open()`` would give it (``0o666`` minus the umask).

    Args:
        path: destination file; missing parent folders are created.
        write: callable that writes the whole file at the temporary path it is given (str).

    Returns:
        The destination as a ``Path``.

    Raises:
        OutputError: if the destination folder cannot be created or written, or writing
            fails with an OS error such as a full disk (names the file).
        Exception: whatever else ``write`` raises (the temporary file is removed first).
    """
    path = Path(path)
    _make_parent(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise OutputError(f"cannot write in {path.parent}: {err.strerror or err}") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename: a crash leaves the old file or the new
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from None  # a full disk, a quota
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed :func:`atomic_write` left in ``folder``.

    Args:
        folder: a folder (missing: nothing to do).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, paths and sets to plain JSON values (``default=`` of json).

    Raises:
        TypeError: for any other type.
    """
    if hasattr(obj, "detach") and hasattr(obj, "ndim"):  # a torch tensor, without importing torch
        obj = obj.detach().cpu()
        return obj.item() if obj.ndim == 0 else obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _finite(obj: Any) -> Any:
    """NaN and infinities become None (JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; NaN and infinities are written as ``null``.

    Args:
        path: destination file; parent folders are created.
        obj: JSON-serialisable data, plus tensors, numpy values, paths and sets.

    Returns:
        The written path.

    Raises:
        TypeError: if ``obj`` holds a value that cannot be serialised.
        OutputError: if the destination cannot be written.
    """
    plain = json.loads(json.dumps(obj, default=to_jsonable, allow_nan=True))
    text = json.dumps(_finite(plain), indent=2, allow_nan=False) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file.

    Raises:
        FileNotFoundError: if it does not exist.
        ValueError: if it is not valid JSON (naming the file, line and column).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks.

    Raises:
        OSError: if the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
