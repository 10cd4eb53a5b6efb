"""How many compute threads a run takes (``threads``, ``concurrent_runs``).

torch starts one compute thread per core. Two runs that each do so on the same cores slow each
other far more than sharing the cores explains (threads spin and wait on each other: 4.3x each for
two runs on 2 cores, bench/RESULTS.md "Threads"). With
``threads=auto`` each run takes its share: the cores this process may use, less the threads of the
live runs of this project that set their own (``threads=N``, as a grid's cells do), divided among the
``auto`` runs. Runs find each other through one small file per process in a folder under the temp
directory (``<tmp>/choreographer-runs-<uid>/<pid>``, holding the run's thread count when it is fixed),
which also covers a sweep whose launcher starts several jobs at once; the count is looked at again
at every console line, so the first of two runs gives up its extra threads once the second starts.
``concurrent_runs=N`` gives the number of runs instead of looking them up, and ``threads=N`` sets the
thread count outright.
"""
from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

import torch

from utils.errors import UserError


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share_of_cores(cores: int, runs: int) -> int:
    """Each of ``runs`` runs on ``cores`` cores gets an equal share, at least one thread."""
    return max(1, cores // max(1, runs))


def registry_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"choreographer-runs-{uid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def live_runs(folder: Path | None = None) -> dict[int, int | None]:
    """Registered runs whose process is still alive: pid -> its fixed thread count, or None for a
    ``threads=auto`` run. Files of dead processes are removed."""
    folder = registry_dir() if folder is None else folder
    runs = {}
    for entry in folder.glob("*") if folder.is_dir() else ():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                text = entry.read_text().strip()
            except OSError:  # removed just now
                continue
            runs[int(entry.name)] = int(text) if text.isdigit() else None
        else:
            entry.unlink(missing_ok=True)
    return runs


def check_thread_settings(threads, concurrent_runs) -> None:
    for key, value in (("threads", threads), ("concurrent_runs", concurrent_runs)):
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{key}={value!r} is not valid; valid: auto or a positive whole number")


class ThreadShare:
    """Keeps torch's thread count at this run's share of the cores; ``register`` (while training)
    makes this process count as a run for the others."""

    def __init__(self, threads="auto", concurrent_runs="auto", folder: Path | None = None):
        check_thread_settings(threads, concurrent_runs)
        self.threads, self.concurrent_runs = threads, concurrent_runs
        self.folder = registry_dir() if folder is None else folder
        self.entry = None
        self.count = self.runs = self.fixed_threads = 0
        self.rebalance()

    def register(self) -> None:
        """While training, every run is in the registry: an ``auto`` one to share the cores, one
        with a fixed thread count (``threads=N``, or a share of ``concurrent_runs``) to be left its
        threads by the ``auto`` ones."""
        if self.entry is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.entry = self.folder / str(os.getpid())
            fixed = self.threads != "auto" or self.concurrent_runs != "auto"
            self.entry.write_text(str(self.count) if fixed else "")
            atexit.register(self.close)
            self.rebalance()

    def wanted(self) -> int:
        if self.threads != "auto":
            return int(self.threads)
        if self.concurrent_runs != "auto":
            self.runs = int(self.concurrent_runs)
            return share_of_cores(usable_cores(), self.runs)
        runs = live_runs(self.folder)
        runs.setdefault(os.getpid(), None)  # this run counts itself even before it registers
        self.runs, self.fixed_threads = len(runs), sum(t for t in runs.values() if t is not None)
        autos = sum(t is None for t in runs.values())
        return share_of_cores(max(1, usable_cores() - self.fixed_threads), autos)

    def describe(self) -> str:
        if self.threads != "auto":
            return f"{self.count} (threads={self.threads})"
        if self.concurrent_runs != "auto":
            return f"{self.count} (auto: {usable_cores()} cores, {self.runs} run(s) given)"
        fixed = f", {self.fixed_threads} thread(s) set by the others" if self.fixed_threads else ""
        return f"{self.count} (auto: {usable_cores()} cores, {self.runs} run(s) counted{fixed})"

    def rebalance(self) -> int:
        """Set torch's thread count to this run's share now; returns it."""
        count = self.wanted()
        if count != self.count:
            torch.set_num_threads(count)
            self.count = count
        return count

    def close(self) -> None:
        if self.entry is not None:
            self.entry.unlink(missing_ok=True)
            self.entry = None
