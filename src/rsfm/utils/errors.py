"""The errors rsfm reports to its users, and the one boundary that prints them.

A :class:`UserError` is a mistake the user can fix (a misspelt key, a missing folder, a
checkpoint that does not fit, a diverged run): the ``rsfm`` command prints it as one line
naming the file, field or value, and exits with status 2. Anything else is a bug and keeps
its traceback (the command prints one, too, when ``RSFM_DEBUG=1``). Library code raises the
subclass that fits; the command boundary (:func:`rsfm.cli.main`) also treats the
``FileNotFoundError`` and ``ValueError`` that the data and model code raise on bad input as
user errors.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "OutputError",
    "TrainingDiverged",
    "UserError",
]


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """A recipe or command-line value is wrong; the message names ``section.key``."""


class DataError(UserError, ValueError):
    """Input data is missing or malformed; the message names the file or folder."""


class OutputError(UserError, OSError):
    """An output file or folder cannot be written; the message names it."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, not an rsfm checkpoint, unsafe or does not fit the model."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss or a gradient became non-finite; no optimiser step was taken with it."""
