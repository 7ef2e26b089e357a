"""Checkpoints that are safe to write, to resume from and to load.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file *beside* its target
  and renames it into place (Lightning's default writes through fsspec's transaction, whose
  temporary file lands in the system temp folder and is left there by a kill); it refuses to
  write a checkpoint whose weights are not finite.
- :func:`resolve_resume` picks the newest checkpoint of a run among ``last.ckpt`` and the
  numbered ones, so a kill between writing the numbered checkpoint and ``last.ckpt`` loses
  nothing, and removes temporary files a kill left behind.
- :func:`load_checkpoint` reads with ``torch.load(weights_only=True)``: a checkpoint from
  someone else cannot run code.

.. versionadded:: 0.2
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO

from rsfm.models.export import mismatch_summary, non_finite_tensors
from rsfm.utils.errors import CheckpointError, OutputError, TrainingDiverged
from rsfm.utils.files import atomic_write, remove_stale_temporaries

__all__ = [
    "AtomicCheckpointIO",
    "checkpoint_step",
    "load_checkpoint",
    "load_weights",
    "resolve_resume",
    "resumable_checkpoints",
    "weights_mismatch",
]

_STEP = re.compile(r"step(\d+)")


class AtomicCheckpointIO(CheckpointIO):
    """Lightning checkpoint IO: atomic writes beside the target, finite weights only, safe loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Serialise ``checkpoint`` and write it atomically to ``path``.

        Raises:
            TrainingDiverged: if a weight of ``checkpoint["state_dict"]`` is NaN or infinite
                (the file is not written; the run's earlier checkpoints stay).
        """
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise TrainingDiverged(
                f"training diverged by step {checkpoint.get('global_step')}: {len(bad)} weight tensors hold NaN or "
                f"infinite values (e.g. {bad[0]}), so {Path(path).name} was not written and the checkpoints "
                f"already in {Path(path).parent} keep the last good state; lower optim.lr (or optim.blr) and rerun "
                "the same command to continue from there with the new rate"
            )
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()  # a view: the serialised checkpoint is held once
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read with ``weights_only=True`` (see :func:`load_checkpoint`)."""
        return load_checkpoint(path, map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        """Delete a checkpoint file."""
        Path(path).unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint without executing code (``torch.load(weights_only=True)``).

    Args:
        path: a file written by ``torch.save`` (a Lightning ``.ckpt``).
        map_location: where the tensors go.
        mmap: map the tensors' storage from the file instead of reading it (a check that a
            large checkpoint is safe costs little memory).

    Raises:
        CheckpointError: if the file is missing, not a torch checkpoint, or holds objects
            other than tensors and plain Python values.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt"))[:3]
        hint = f" (it holds {', '.join(found)}: give one of them)" if found else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch's zip format, or legacy pickle
        raise CheckpointError(f"{path} is not a checkpoint (not a file written by torch.save)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and magic.startswith(b"PK"))
    except Exception as err:  # pickle, zip and unpickler errors of every kind
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "Weights only load failed" in str(err) or "weights_only" in str(err):
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain values; rsfm does not load it, because "
                "loading such a file can run code"
            ) from None
        raise CheckpointError(f"{path} is not a checkpoint ({text[:120]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it holds a {type(state).__name__})")
    return state


def load_weights(module: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load ``state["state_dict"]`` into ``module``, strictly, explaining a mismatch in one line.

    Raises:
        CheckpointError: if the checkpoint has no weights or they do not fit the module
            (counts of missing / unexpected / mis-shaped tensors and the first names).
    """
    if "state_dict" not in state:
        raise CheckpointError(f"{path} is not a Lightning checkpoint of rsfm (it has no 'state_dict')")
    weights = state["state_dict"]
    mismatch = weights_mismatch(module, weights)
    if mismatch:
        raise CheckpointError(
            f"{path} does not fit the model the recipe builds: {mismatch}; "
            "pass the recipe and overrides it was trained with"
        )
    module.load_state_dict(weights)


def weights_mismatch(module: torch.nn.Module, weights: dict[str, Any]) -> str | None:
    """One line on how ``weights`` (a state dict) fails to fit ``module``, or None if it fits.

    Counts the missing, unexpected and mis-shaped tensors and names the first few of each.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    return mismatch_summary(missing, unexpected, shapes) if missing or unexpected or shapes else None


def checkpoint_step(path: Path) -> int:
    """Optimiser step of a checkpoint: from its ``stepNNNNNN`` name, else read from the file."""
    m = _STEP.search(path.name)
    if m:
        return int(m.group(1))
    try:
        return int(load_checkpoint(path).get("global_step", -1))
    except CheckpointError:
        return -1


def resumable_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """``last.ckpt`` and the numbered ``epochNNN-stepNNNNNN.ckpt`` files of a run (not ``best.ckpt``)."""
    if not checkpoint_dir.is_dir():
        return []
    last = checkpoint_dir / "last.ckpt"
    return sorted(p for p in checkpoint_dir.glob("*.ckpt") if p.is_file() and (p == last or _STEP.search(p.name)))


def resolve_resume(checkpoint_dir: Path, resume: str | None) -> str | None:
    """The checkpoint a run resumes from.

    ``"auto"``: the newest of ``last.ckpt`` and the numbered ``epochNNN-stepNNNNNN.ckpt``
    checkpoints of ``checkpoint_dir`` (by optimiser step; ``last.ckpt`` on ties; ``best.ckpt``,
    saved after validation, is never resumed from), or None when there is none; temporary
    files a killed write left there are removed first. ``None``/``"none"``: a fresh run, in a
    run folder without checkpoints. Any other value: that path.

    Raises:
        CheckpointError: if an explicit path does not exist.
        OutputError: for a fresh run whose folder already holds checkpoints (an earlier run's
            would mix with the new ones and win a later ``resume: auto``).
    """
    found = sorted(p for p in checkpoint_dir.glob("*.ckpt") if p.is_file()) if checkpoint_dir.is_dir() else []
    if resume in (None, "", "none", "None"):
        if found:
            raise OutputError(
                f"resume: none, but {checkpoint_dir} holds checkpoints of an earlier run ({found[0].name} ...); "
                "choose another run_name, delete them, or continue it with resume: auto"
            )
        return None
    if resume == "auto":
        remove_stale_temporaries(checkpoint_dir)
        last = checkpoint_dir / "last.ckpt"
        candidates = resumable_checkpoints(checkpoint_dir)
        if not candidates:
            return None
        return str(max(candidates, key=lambda p: (checkpoint_step(p), p == last)))
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume: checkpoint not found: {path}")
    return str(path)
