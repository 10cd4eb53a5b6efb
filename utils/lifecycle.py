"""The life of a run, the same for pretrain.py, finetune.py and offline_train.py (docs/decisions.md D32).

1. every setting is checked before anything is created (``utils.settings``);
2. the run folder is locked: one process per folder (``RunLock``);
3. leftovers of interrupted writes are removed (``remove_stale_temporaries``);
4. the runner starts fresh or resumes from the folder's checkpoint and trains;
5. SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 ask the loop to stop after its current step: it writes a
   checkpoint, says how to continue and exits non-zero (``StopSignals``, ``RunStopped``);
6. it ends with the summary lines (``utils.summary``).

The online and offline loops (``utils.runner``, ``utils.offline``) are what differs.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from utils.atomic import atomic_write
from utils.errors import UserError

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"
# What Slurm and people send to end a job: TERM (scancel, preemption, the end of the time limit),
# INT (Ctrl-C), USR1/USR2 (``--signal=USR1@90``: a warning before the time limit).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class RunStopped(Exception):
    """The run was asked to stop by a signal and wrote its checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class RunFolderBusy(UserError):
    """Another live process holds the run folder (its files are left alone)."""


class RunLock:
    """An advisory lock (``filelock``, flock underneath) on ``<run folder>/.lock``, held for the whole
    run. The kernel drops it when the holder dies, however it dies, so a killed run never blocks its
    rerun. Who holds it is written to ``.lock.owner`` for the refusal message."""

    def __init__(self, run_dir: str | os.PathLike, what: str = "run folder", way_out: str = "another hydra.run.dir"):
        self.run_dir, self.what, self.way_out = Path(run_dir), what, way_out
        # Two seconds, not zero: `experiment.py action=status` takes a free lock for an instant to see
        # whether a run is alive, and a run starting just then should not take it for another's.
        self.lock = FileLock(str(self.run_dir / LOCK_NAME), timeout=2)

    def __enter__(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise RunFolderBusy(f"{self.what} {self.run_dir} is in use by another process ({self.holder()}); wait for "
                                f"it to finish or stop it, or use {self.way_out}") from None
        with atomic_write(self.run_dir / OWNER_NAME) as handle:
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                         .encode())
        return self

    def holder(self) -> str:
        try:
            return (self.run_dir / OWNER_NAME).read_text().strip()
        except OSError:
            return "holder unknown"

    def __exit__(self, *exc) -> None:
        (self.run_dir / OWNER_NAME).unlink(missing_ok=True)
        self.lock.release()


class StopSignals:
    """While active, each stop signal only records itself; the loop reads ``requested`` after each
    step and stops there with a checkpoint. A second Ctrl-C stops at once (KeyboardInterrupt)."""

    def __init__(self, restore: bool = True):
        """``restore=False`` (the scripts): on leaving, further stop signals are ignored instead of
        restoring the previous handlers, so a late Ctrl-C cannot interrupt the exit with a traceback."""
        self.requested: int | None = None
        self.restore = restore
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        if signum == signal.SIGINT and self.requested == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = signum
            print(f"\n{signal.Signals(signum).name} received: stopping after the current step with a checkpoint "
                  f"(Ctrl-C again stops at once, without one)", file=sys.stderr, flush=True)

    def stop_line(self, run_dir: Path, where: str) -> RunStopped:
        """The error the loop raises once its checkpoint is written."""
        name = signal.Signals(self.requested).name
        return RunStopped(f"stopped by {name} at {where}; checkpoint written to {Path(run_dir) / 'checkpoint.pt'}: "
                          f"rerun the same command (same hydra.run.dir) to continue", self.requested)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if self.restore else signal.SIG_IGN)
        self._previous.clear()


def remove_stale_temporaries(*folders: str | os.PathLike) -> list[Path]:
    """Temporary files of writes that a crash interrupted (``utils.atomic``: ``.<name>.<random>.tmp``,
    and the CSV logs' ``.csv.tmp``); only called while the run folder is locked, so none is another
    process's write in progress."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in list(folder.glob(".*.tmp")) + list(folder.glob("*.csv.tmp")):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        print(f"removed {len(removed)} temporary file(s) of an interrupted write: "
              f"{', '.join(p.name for p in removed[:3])}{' ...' if len(removed) > 3 else ''}", flush=True)
    return removed


STATUS_NAME = "status.json"


class RunStatus:
    """``<run folder>/status.json``: what a run is doing, for ``experiment.py action=status`` and anyone
    watching a folder: state (running, done, stopped, failed), progress (``done`` of ``target`` in
    ``unit``), seconds of training so far, the process, and for a failure its message. Written whole
    (atomically), at most every ``every_s`` seconds while running."""

    def __init__(self, run_dir: str | os.PathLike, target: int, unit: str, every_s: float = 10.0):
        self.path = Path(run_dir) / STATUS_NAME
        self.target, self.unit, self.every_s = int(target), unit, every_s
        self.written_at = 0.0
        self.fields = {"state": "running", "done": 0, "target": self.target, "unit": unit, "seconds": 0.0,
                       "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def progress(self, done: int, seconds: float, force: bool = False) -> None:
        self.fields.update(done=int(done), seconds=float(seconds))
        if force or time.time() - self.written_at >= self.every_s:
            self.write()

    def end(self, state: str, message: str | None = None) -> None:
        self.fields.update(state=state, message=message, ended=time.time())
        self.write()

    def write(self) -> None:
        import json
        self.fields["updated"] = time.time()
        with atomic_write(self.path) as handle:
            handle.write(json.dumps(self.fields).encode())
        self.written_at = time.time()


def read_status(run_dir: str | os.PathLike) -> dict | None:
    import json
    try:
        return json.loads((Path(run_dir) / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None


def run(cfg, phase: str) -> None:
    """The body of pretrain.py (phase ``pretrain``), finetune.py (``finetune``) and offline_train.py
    (``offline``), inside Hydra's run folder; every failure a user can act on is one ``error:`` line."""
    from hydra.core.hydra_config import HydraConfig
    from utils.errors import exit_with_one_line
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    exit_with_one_line(lambda: train(cfg, phase, run_dir), run_dir)


def train(cfg, phase: str, run_dir: Path) -> None:
    from utils.settings import check_settings
    check_settings(cfg, phase)
    with RunLock(run_dir), StopSignals(restore=False) as stop:
        remove_stale_temporaries(run_dir, run_dir / "buffer")
        status = RunStatus(run_dir, *((cfg.num_train_updates, "updates") if phase == "offline"
                                      else (cfg.num_train_frames, "frames")))
        status.write()
        try:
            if phase == "offline":
                from utils.offline import OfflineRunner
                runner = OfflineRunner(cfg, run_dir)
            else:
                from utils.runner import OnlineRunner
                runner = OnlineRunner(cfg, run_dir, phase)
            runner.stop, runner.status = stop, status
            runner.train()
        except RunStopped as stopped:
            status.end("stopped", str(stopped))
            raise
        except BaseException as error:
            status.end("failed", str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
            raise
        status.end("done")
