"""Errors that the CLI turns into one clear line and a non-zero exit code."""

from __future__ import annotations


class PeftbenchError(Exception):
    """A user-facing error: its message is the whole story (no traceback is shown)."""

    exit_code = 2


class UsageError(PeftbenchError):
    """Bad names or options on the command line or in a suite file."""


class UnsupportedBackbone(UsageError):
    """A method that cannot run on this architecture (raised at build time, before any training); the
    message is the reason, and the caller adds the method and the backbone."""


class DataError(PeftbenchError):
    """A data folder that fails the pre-flight check; the message lists every problem."""


class CheckpointError(PeftbenchError):
    """Weights that cannot be read or do not fit the backbone."""
