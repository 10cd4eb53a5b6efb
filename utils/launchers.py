"""How a grid's cells run (experiment.py; docs/decisions.md D33): one graph, two launchers.

* ``run_local``: on this machine, ``jobs`` cells at a time, each a subprocess of its script with its log
  in ``<grid>/logs/``; a fine-tuning starts once its pre-training is done. SIGINT/SIGTERM to the grid
  are passed on as SIGTERM to the running cells, which write their checkpoints (utils/lifecycle.py);
  rerunning the command continues them.
* ``submit_slurm``: every cell not done is submitted through submitit with ``afterok`` on its
  pre-training's job and ``--requeue``; the scoring job runs ``afterany`` of all. A preempted or
  requeued job gets SIGTERM, writes its checkpoint, and its next start continues from it. The job ids
  are kept in ``<grid>/jobs.json``, so a rerun submits only what is neither done nor queued.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from utils.atomic import atomic_write
from utils.errors import UserError
from utils.grid import REPO, Cell, cell_state, cells, command, log_path


def todo(grid: DictConfig, out: Path) -> list[Cell]:
    """The cells that are not done, in the graph's order."""
    return [cell for cell in cells(grid) if cell_state(out, grid, cell)["state"] != "done"]


# ------------------------------------------------------------------------------------- local
def run_local(grid: DictConfig, out: Path, jobs: int, threads: str | int, poll_s: float = 0.5
              ) -> tuple[list[str], list[str]]:
    """Run every cell that is not done; returns the cells that failed and those skipped because their
    pre-training failed (both empty: the grid is done)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"launcher.jobs={jobs!r} must be a positive integer")
    out = Path(out)
    waiting = todo(grid, out)
    if not waiting:
        print(f"grid {grid.name}: every cell is done; nothing to run", flush=True)
        return [], []
    print(f"grid {grid.name}: {len(waiting)} cell(s) to run, {jobs} at a time; logs in {out / 'logs'}", flush=True)
    done = {cell.name for cell in cells(grid)} - {cell.name for cell in waiting}
    failed: list[str] = []
    skipped: list[str] = []
    running: dict[str, tuple[Cell, subprocess.Popen]] = {}
    stop = {"signal": None}

    def on_signal(signum, _frame):
        if stop["signal"] is None:
            stop["signal"] = signum
            print(f"{signal.Signals(signum).name}: stopping the {len(running)} running cell(s) with a checkpoint; "
                  f"rerun the same command to continue the grid", file=sys.stderr, flush=True)
            for _, process in running.values():
                process.send_signal(signal.SIGTERM)
    from utils.lifecycle import RunLock
    grid_lock = RunLock(out, "grid folder", "another out=").__enter__()  # one launcher per grid: a second stops
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while waiting or running:
            for name, (cell, process) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                if code == 0:
                    done.add(name)
                    print(f"done:    {name}", flush=True)
                elif stop["signal"] is None:
                    failed.append(name)
                    print(f"failed:  {name} (exit {code}): {last_line(out, cell)}", flush=True)
            if stop["signal"] is not None:
                if not running:
                    break
                time.sleep(poll_s)
                continue
            for cell in list(waiting):
                if stop["signal"] is not None:
                    break
                if cell.needs in failed:
                    waiting.remove(cell)
                    skipped.append(cell.name)
                    print(f"skipped: {cell.name} (its pre-training {cell.needs} failed)", flush=True)
                elif len(running) < jobs and (cell.needs is None or cell.needs in done):
                    waiting.remove(cell)
                    running[cell.name] = (cell, start(grid, out, cell, threads))
                    print(f"started: {cell.name}", flush=True)
            time.sleep(poll_s)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        grid_lock.__exit__(None, None, None)
    if stop["signal"] is not None:
        raise GridStopped(stop["signal"])
    return failed, skipped


class GridStopped(Exception):
    def __init__(self, signum: int):
        super().__init__(f"grid stopped by {signal.Signals(signum).name}; running cells wrote their checkpoints; "
                         f"rerun the same command to continue")
        self.exit_code = 128 + int(signum)


def start(grid: DictConfig, out: Path, cell: Cell, threads) -> subprocess.Popen:
    log = log_path(out, cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command(grid, out, cell, threads))}\n")
        # Its own session: a Ctrl-C in the terminal reaches the grid only, which passes SIGTERM on.
        return subprocess.Popen(command(grid, out, cell, threads), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def last_line(out: Path, cell: Cell) -> str:
    from utils.grid import last_log_line
    return last_log_line(out, cell) or "no output"


# ------------------------------------------------------------------------------------- slurm
JOBS_NAME = "jobs.json"


def read_jobs(out: Path) -> dict[str, str]:
    try:
        return json.loads((Path(out) / JOBS_NAME).read_text())
    except (OSError, ValueError):
        return {}


def write_jobs(out: Path, jobs: dict[str, str]) -> None:
    with atomic_write(Path(out) / JOBS_NAME) as handle:
        handle.write(json.dumps(jobs, indent=1, sort_keys=True).encode())


def queued_jobs() -> dict[str, str]:
    """Job id -> Slurm state (PENDING, RUNNING, ...) of this user's jobs in the queue (squeue needs no
    accounting database, unlike sacct)."""
    result = subprocess.run(["squeue", "--noheader", "--me", "--format=%i %T"], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"squeue failed: {(result.stderr.strip().splitlines() or ['no output'])[0]}")
    return dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) >= 2)


def check_slurm() -> None:
    import shutil
    for tool in ("sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise UserError(f"launcher=slurm needs Slurm's {tool}, which is not on PATH; use launcher=local, or run "
                            f"on a machine with Slurm")
    result = subprocess.run(["squeue", "--noheader", "--me"], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"launcher=slurm: squeue cannot reach the cluster "
                        f"({(result.stderr.strip().splitlines() or ['no output'])[0]})")


def slurm_state(out: Path) -> dict[str, str]:
    """Cell name -> ``waiting`` (pending in the queue) or ``running`` for the grid's queued jobs."""
    jobs, queue = read_jobs(out), queued_jobs()
    return {name: ("running" if queue[job] in ("RUNNING", "COMPLETING") else "waiting")
            for name, job in jobs.items() if job in queue}


def submit_slurm(grid: DictConfig, out: Path, launcher: DictConfig, threads, score_command: list[str]) -> list[str]:
    """Submit every cell neither done nor queued, each after its own pre-training; then the scoring job
    (``score_command``). Returns the submitted cell names."""
    check_slurm()
    out = Path(out)
    jobs, queue = read_jobs(out), queued_jobs()
    in_queue = {name for name, job in jobs.items() if job in queue}
    submitted = []
    for cell in todo(grid, out):
        if cell.name in in_queue:
            if cell.needs not in submitted:
                continue
            # Still waiting on the job of a pre-training that failed or was cancelled (afterok never
            # holds): cancel it and submit it again after the new pre-training job.
            subprocess.run(["scancel", jobs[cell.name]], capture_output=True)
            queue.pop(jobs[cell.name], None)
        resources = grid[cell.stage].resources
        executor = slurm_executor(out)
        parameters = {"requeue": True}
        if cell.needs and cell.needs in jobs and jobs[cell.needs] in queue:
            parameters["dependency"] = f"afterok:{jobs[cell.needs]}"
        elif cell.needs and cell_state(out, grid, cell_by_name(grid, cell.needs))["state"] != "done":
            continue  # its pre-training is neither done nor queued: submitted with it below on a rerun
        parameters.update(dict(launcher.additional or {}))
        executor.update_parameters(
            name=cell.name, timeout_min=int(resources.time_min), cpus_per_task=int(resources.cpus),
            gpus_per_node=int(resources.gpus), mem_gb=float(resources.mem_gb), slurm_partition=launcher.partition,
            slurm_signal_delay_s=int(launcher.signal_delay_s), slurm_additional_parameters=parameters)
        job = submit(executor, CellJob(command(grid, out, cell, threads), str(log_path(out, cell))))
        jobs[cell.name] = str(job.job_id)
        queue[str(job.job_id)] = "PENDING"
        submitted.append(cell.name)
        write_jobs(out, jobs)
    if submitted:
        executor = slurm_executor(out)
        after = [jobs[name] for name in jobs if jobs[name] in queue]
        executor.update_parameters(name=f"score_{grid.name}", timeout_min=60, cpus_per_task=1, mem_gb=4,
                                   slurm_partition=launcher.partition,
                                   slurm_additional_parameters={"dependency": "afterany:" + ":".join(after)})
        job = submit(executor, CellJob(score_command, str(out / "logs" / "score.log")))
        jobs["score"] = str(job.job_id)
        write_jobs(out, jobs)
    return submitted


def slurm_executor(out: Path):
    """A submitit executor whose jobs import this checkout first, so a job unpickles the CellJob of the
    code that submitted it whether or not the project is installed, and not another installed copy:
    the checkout goes first on PYTHONPATH, and ``python -P`` (Python 3.11+) keeps the submission
    folder (the job's working directory, where a ``utils/`` of the user's own would shadow ours) off
    the import path.
    Cells run in the submission folder, as local cells do, so relative paths in the grid's overrides
    mean the same under both launchers."""
    import submitit
    no_cwd_on_path = " -P" if sys.version_info >= (3, 11) else ""  # -P is new in Python 3.11
    executor = submitit.AutoExecutor(folder=str(out / "slurm" / "%j"), cluster="slurm",
                                     slurm_python=shlex.quote(sys.executable) + no_cwd_on_path)
    executor.update_parameters(slurm_setup=[f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"])
    return executor


def submit(executor, job: "CellJob"):
    """executor.submit, with sbatch's refusal (a bad partition, account or parameter) as one line."""
    import submitit
    try:
        return executor.submit(job)
    except submitit.core.utils.FailedJobError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        refusal = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")
        raise UserError(f"sbatch refused the job: {refusal.strip()}") from None


def cell_by_name(grid: DictConfig, name: str) -> Cell:
    return next(cell for cell in cells(grid) if cell.name == name)


def _checkpointable():
    import submitit
    return submitit.helpers.Checkpointable


def _exited(pid: int) -> bool:
    """Whether the child ``pid`` has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


class CellJob(_checkpointable()):
    """What a Slurm job runs: the cell's command, its output appended to the cell's log.

    * ``scontrol requeue``, preemption, ``scancel``: Slurm sends SIGTERM to every process of the job,
      the command too, which checkpoints (utils/lifecycle.py) within KillWait; a requeued job runs the
      same command again, which continues from the checkpoint.
    * The time limit: submitit's SIGUSR2 (``signal_delay_s`` before it) reaches the command, which
      checkpoints, and submitit's handler requeues the job (Checkpointable: the same CellJob again).
    SIGTERM and SIGINT reaching this wrapper are passed on, in case they were sent to it alone."""

    def __init__(self, command: list[str], log: str):
        self.command, self.log = command, log
        self._process = None

    def __getstate__(self) -> dict:
        return {"command": self.command, "log": self.log}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _process=None)

    def checkpoint(self, *args, **kwargs):
        """submitit's SIGUSR2 handler (before the time limit) calls this before it requeues the job:
        let the command finish its step and write its checkpoint first (it may have had the signal
        already: Slurm signals every process of the job).

        The handler interrupts ``__call__``'s ``Popen.wait``, which holds the Popen's wait lock: here
        ``poll``/``wait`` would report the command running or block on that lock (for the whole
        timeout), so the command's exit is watched with ``waitid(WNOWAIT)``, which leaves the exit
        status for ``__call__``."""
        process = self._process
        if process is not None and process.returncode is None and not _exited(process.pid):
            os.kill(process.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 600
            while not _exited(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        return super().checkpoint(*args, **kwargs)

    def __call__(self) -> int:
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as handle:
            handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {os.environ.get('SLURM_JOB_ID')} "
                         f"{' '.join(self.command)}\n")
            handle.flush()
            process = self._process = subprocess.Popen(self.command, stdout=handle, stderr=subprocess.STDOUT)

            def forward(signum, _frame):
                process.send_signal(signum)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, forward)
            code = process.wait()
        if code != 0:
            raise RuntimeError(f"{self.command[1]} exited with {code}; see {self.log}")
        return code
