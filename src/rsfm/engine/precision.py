"""The default numeric precision of every rsfm trainer."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["bf16_hint", "cpu_bf16_units", "default_precision"]

#: CPU flags (Linux ``/proc/cpuinfo``) of native bf16 matrix units, best first
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def default_precision(accelerator: str = "auto") -> str:
    """Lightning precision for an accelerator setting when the recipe leaves it unset.

    bf16 autocast on a CUDA GPU that supports it (fp16 autocast on older ones), full fp32
    on the CPU.

    Args:
        accelerator: the trainer's ``accelerator`` (``auto``, ``gpu``, ``cuda``, ``cpu``...).

    Returns:
        ``bf16-mixed``, ``16-mixed`` or ``32-true``.
    """
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def cpu_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The flag of this CPU's native bf16 matrix units (``amx_bf16``, ``avx512_bf16``), or None.

    Read from the ``flags`` line of ``cpuinfo``; None where it has neither flag, or where the file
    does not exist or cannot be read (not Linux).
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return next((f for f in BF16_FLAGS if f in flags), None)
    return None


def bf16_hint(precision: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """A one-line hint for a CPU run left at fp32 on a CPU with bf16 matrix units, else None.

    On such CPUs bf16 autocast (``trainer.precision=bf16-mixed``) trains several times faster
    (measured on the benchmarks page of the documentation); the default stays fp32 because CPUs
    without those units run bf16 slower.

    Args:
        precision: the trainer's precision after defaults (:func:`default_precision`).
        cpuinfo: where the CPU flags are read.
    """
    if precision != "32-true" or torch.cuda.is_available():
        return None
    flag = cpu_bf16_units(cpuinfo)
    if flag is None:
        return None
    return (
        f"this CPU has bf16 matrix units ({flag}): trainer.precision=bf16-mixed trains several times "
        "faster than the default fp32 (docs/scaling.md)"
    )
