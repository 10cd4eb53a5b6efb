"""Errors a user should see as one line, and the scripts' way of showing them."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """A bad config value, path or file named by the user; the message names it and what is allowed."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the loss."""


def exit_with_one_line(run: Callable[[], None], run_dir: str | Path | None = None) -> None:
    """Run a script body; user mistakes, divergence and I/O failures (a full disk, say) end it with
    one ``error: ...`` line and a non-zero exit instead of a traceback. A run folder that holds
    nothing but what Hydra put there and the run lock (a run stopped by a bad setting) is removed. A
    run stopped by a signal (``utils.lifecycle``) prints its one line and exits with 128 + the signal."""
    from utils.lifecycle import RunFolderBusy, RunStopped
    from utils.snapshot import SnapshotError
    try:
        run()
    except RunStopped as stopped:
        print(stopped, file=sys.stderr, flush=True)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped at once, without a checkpoint; rerunning the same command continues from "
              "the last one", file=sys.stderr, flush=True)
        sys.exit(130)
    except (UserError, SnapshotError, TrainingDiverged, OSError) as error:
        if run_dir is not None and not isinstance(error, RunFolderBusy):
            remove_if_untouched(Path(run_dir))
        sys.exit(f"error: {error}")


def remove_if_untouched(run_dir: Path) -> bool:
    """Remove ``run_dir`` if it holds only Hydra's ``.hydra/`` and ``*.log`` files and the lock, then the folders
    above it that this leaves empty, up to (not including) the working directory: ``exp_local/<date>/``
    of a first run. The working directory and the folders above it are never removed. Returns whether
    ``run_dir`` was removed."""
    run_dir, here = run_dir.resolve(), Path.cwd().resolve()
    if not run_dir.is_dir() or run_dir == here or run_dir in here.parents:  # never the working directory
        return False
    if any(entry.name not in (".hydra", ".lock") and entry.suffix != ".log" for entry in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent == here or here not in parent.parents:
            break
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            break
    return True
