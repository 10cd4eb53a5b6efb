"""A real single-node Slurm cluster for the tests (no mocks), and small helpers to watch its jobs.

``slurm_cluster`` (session scope) runs ``scripts/slurm_local.sh`` once: as root on Debian/Ubuntu it
installs slurm and munge when missing and starts munged, MariaDB, slurmdbd, slurmctld and slurmd on
this host. Where that cannot work (not root, no apt-get, a daemon that does not start) the tests that
use it skip with the script's one-line reason. ``SLURM_TESTS=0`` skips them without running it;
``SLURM_LOCAL_ACCOUNTING=0`` starts the cluster without slurmdbd (the tests that need sacct skip).

What the tests rely on, found against this cluster (Slurm 22.05, submitit 1.5):

* submitit reads job states only from ``sacct`` (``job.state``, ``job.done()``, ``job.watcher``).
  Without slurmdbd, ``sacct`` exits 1 with "Slurm accounting storage is disabled"; submitit logs
  "Bypassing sacct error ..., status may be inaccurate" on each poll and every ``job.state`` is
  ``UNKNOWN``. ``job.done()`` is then true only once the job's result pickle exists, so
  ``job.result()`` still returns for a job that ends normally (a Python exception is pickled too), but
  waits forever for a job killed from outside (scancel, SIGKILL, node failure): UNKNOWN counts as
  unfinished. With slurmdbd, sacct reports such a job CANCELLED/FAILED, ``job.done()`` turns true and
  ``job.result()`` raises UncompletedJobError (after 15 s spent looking for the result pickle, submitit's
  ``_results_timeout_s``). Hence the script runs slurmdbd by default, and these helpers read the controller
  (``scontrol show job``), which knows a job for MinJobAge (300 s) after it ends, database or not.
* ``scontrol requeue <id>`` on a running batch job (requeueable: ``--requeue``, or the default
  JobRequeue=1) kills it like scancel: each process of the job gets SIGCONT then SIGTERM at once,
  then SIGKILL KillWait seconds later (5 s here, 30 s by default) if still alive. submitit's own
  handler *ignores* SIGTERM ("Bypassing signal SIGTERM") and checkpoints only on SIGUSR2 (sent
  ``signal_delay_s`` before the time limit, not by requeue), so a submitit job that does not install
  its own SIGTERM handler just dies by SIGKILL. The job then waits in PENDING (Reason=BeginTime) for
  AuthInfo=cred_expire seconds (120 s by default, 20 s here) before it runs again from the start,
  with SLURM_RESTART_COUNT=1 and ``scontrol show job`` Restarts=1.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"


@dataclass
class Cluster:
    ready_line: str  # the script's "slurm_local: ready in ..." line
    accounting: bool  # slurmdbd runs, so sacct (and submitit's job states) work


@pytest.fixture(scope="session")
def slurm_cluster():
    """Starts (or finds) the local cluster once per session; skips with the reason when it cannot."""
    if os.environ.get("SLURM_TESTS", "1") == "0":
        pytest.skip("SLURM_TESTS=0: the real-Slurm tests are switched off")
    try:
        proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"scripts/slurm_local.sh could not run: {e}")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        pytest.skip(lines[-1] if lines else f"scripts/slurm_local.sh exited {proc.returncode}")
    ready = proc.stdout.strip()
    yield Cluster(ready_line=ready, accounting="sacct works" in ready)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=check)


def job_info(job_id: str) -> dict[str, str]:
    """The controller's view of a job (``scontrol show job -o``) as a dict; {} once it is forgotten."""
    proc = _run("scontrol", "show", "job", "-o", str(job_id), check=False)
    if proc.returncode != 0:
        return {}
    info = {}
    for word in proc.stdout.split():
        key, sep, value = word.partition("=")
        if sep and key not in info:  # a few keys repeat on continuation fields; the first is the job's
            info[key] = value
    return info


def job_state(job_id: str) -> str:
    """PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, ... or "" for an unknown job."""
    return job_info(job_id).get("JobState", "")


def in_queue(job_id: str) -> bool:
    """Whether squeue still lists the job (pending, running or completing)."""
    proc = _run("squeue", "-h", "-j", str(job_id), "-o", "%i", check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    """Polls ``predicate()`` until it returns something truthy; fails the test after ``timeout`` s."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def wait_left_queue(job_id: str, timeout: float = 120) -> str:
    """Waits until the job leaves the queue; returns its final state (from scontrol)."""
    wait_until(lambda: not in_queue(job_id), timeout, f"job {job_id} to leave the queue")
    return job_state(job_id)


def wait_state(job_id: str, states: set[str] | str, timeout: float = 60) -> str:
    states = {states} if isinstance(states, str) else set(states)
    return wait_until(lambda: (s := job_state(job_id)) in states and s, timeout, f"job {job_id} to be {states}")


def requeue(job_id: str) -> None:
    """``scontrol requeue``: kills the running job (SIGCONT, SIGTERM, SIGKILL after KillWait) and puts
    it back in the queue, where it waits cred_expire seconds before it runs again."""
    _run("scontrol", "requeue", str(job_id))


def sacct_state(job_id: str) -> str:
    """The job's state in the accounting database (what submitit reads), "" without one."""
    proc = _run("sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id), check=False)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""


def config_value(name: str) -> str:
    """A setting of the running cluster (``scontrol show config``), e.g. "5 sec" for KillWait."""
    for line in _run("scontrol", "show", "config").stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    raise KeyError(name)
