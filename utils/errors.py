"""Errors a user should see as one line, and the scripts' way of showing them."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A bad config value, path or file named by the user; the message names it and what is allowed."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the loss."""


def exit_with_one_line(run: Callable[[], None]) -> None:
    """Run a script body; user mistakes, divergence and I/O failures (a full disk, say) end it with
    one ``error: ...`` line and a non-zero exit instead of a traceback."""
    from utils.snapshot import SnapshotError
    try:
        run()
    except (UserError, SnapshotError, TrainingDiverged, OSError) as error:
        sys.exit(f"error: {error}")
