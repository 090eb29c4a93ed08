"""The errors a user can fix: bad config, missing stage, unreadable checkpoints, bad data.

Raising a `UserError` means mmar anticipated the situation and its message says what was found
and what to do, in one line; the command line prints that line and exits with status 1, with
the traceback only under `--verbose` (or `MMAR_VERBOSE=1`). Any other exception is a bug and
keeps its traceback. Classes that are also a builtin error (`ValueError`, ...) stay catchable
as that builtin, so library callers need not know this module.

This module imports nothing: every layer may raise these.
"""
from __future__ import annotations


class UserError(Exception):
    """An anticipated, user-fixable failure; the message is the one line the CLI prints."""


class MissingStageError(UserError, FileNotFoundError):
    """A job needs the output of an earlier stage that the run directory lacks."""


class CheckpointError(UserError, RuntimeError):
    """Checkpoints exist but none can be restored (the run refuses to start over silently)."""


class MeshError(UserError, ValueError):
    """The `mesh` section does not fit the devices present."""


class WorkdirError(UserError, OSError):
    """The run directory cannot be written (read-only, full, not a directory)."""
