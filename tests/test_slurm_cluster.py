"""Jobs through a real Slurm cluster (scripts/slurm_local.sh, via the ``slurm_cluster`` fixture):
submitit submissions with a dependency, a job requeued mid-run with scontrol, a job cancelled from
outside, submitit's own preemption path (SIGUSR2, checkpoint, requeue, resume).
Skipped, with the reason, where the cluster cannot be started (see tests/slurm.py)."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import cloudpickle
import pytest

from slurm import (config_value, job_info, requeue, sacct_state, slurm_cluster,  # noqa: F401 (fixture)
                   wait_left_queue, wait_state, wait_until)

submitit = pytest.importorskip("submitit")

# The job functions below live in this test module, which the job's Python cannot import (pytest put
# tests/ on sys.path, the job does not): pickle them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _executor(folder, **params):
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1, **params)
    return ex


def _timed(path: str, seconds: float) -> dict:
    """A job: records its start and end time.time() in ``path`` and returns them."""
    start = time.time()
    time.sleep(seconds)
    record = {"start": start, "end": time.time(), "job": os.environ.get("SLURM_JOB_ID")}
    with open(path, "w") as f:
        json.dump(record, f)
    return record


def test_dependency_afterok_orders_two_submitit_jobs(slurm_cluster, tmp_path):
    ex = _executor(tmp_path / "logs")
    first = ex.submit(_timed, str(tmp_path / "first.json"), 3.0)
    ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{first.job_id}"})
    second = ex.submit(_timed, str(tmp_path / "second.json"), 0.5)

    # While the first runs, the controller holds the second back for its dependency.
    wait_state(first.job_id, "RUNNING", timeout=60)
    info = job_info(second.job_id)
    assert info["JobState"] == "PENDING" and info["Reason"] == "Dependency", info

    a, b = first.result(), second.result()  # both come back through submitit's result pickles
    assert a["job"] == first.job_id and b["job"] == second.job_id
    assert b["start"] >= a["end"], (a, b)
    assert json.loads((tmp_path / "second.json").read_text()) == b
    assert wait_left_queue(second.job_id) == "COMPLETED"
    # With the accounting database submitit sees the real final state, without it only UNKNOWN;
    # get_info() forces a sacct call, job.state may answer from submitit's cache.
    if slurm_cluster.accounting:
        wait_until(lambda: sacct_state(second.job_id) == "COMPLETED", 30, "sacct to record the job")
        assert second.get_info()["State"] == "COMPLETED"
    else:
        assert second.get_info() == {} and second.state == "UNKNOWN"


def _requeued(folder: str) -> str:
    """A job: the first run records SIGCONT/SIGTERM and keeps a heartbeat until it is killed; the run
    after the requeue returns at once."""
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    beat = os.path.join(folder, f"heartbeat_{attempt}")

    def record(signum, frame):
        with open(os.path.join(folder, f"signals_{attempt}"), "a") as f:
            f.write(f"{signal.Signals(signum).name} {time.time()}\n")

    for sig in (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, record)  # replaces submitit's handlers (which ignore SIGTERM)
    open(os.path.join(folder, f"started_{attempt}"), "w").close()
    if attempt > 0:
        return f"finished on attempt {attempt}"
    for _ in range(1200):  # 2 min at most; the test requeues it within seconds
        with open(beat, "w") as f:
            f.write(str(time.time()))
        time.sleep(0.1)
    return "never requeued"


def test_requeued_job_sees_sigterm_then_runs_again(slurm_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    ex = _executor(tmp_path / "logs", slurm_additional_parameters={"requeue": True})
    job = ex.submit(_requeued, str(marks))
    wait_until(lambda: (marks / "heartbeat_0").exists(), 60, "the first run to start")

    t_requeue = time.time()
    requeue(job.job_id)
    assert job.result() == "finished on attempt 1"
    t_done = time.time()

    signals = [line.split() for line in (marks / "signals_0").read_text().splitlines()]
    names = [name for name, _ in signals]
    assert "SIGTERM" in names, signals
    assert names.index("SIGCONT") < names.index("SIGTERM"), signals  # Slurm wakes the job, then SIGTERM
    t_term = float(signals[names.index("SIGTERM")][1])
    assert t_term - t_requeue < 5, "SIGTERM comes at once"
    # The handler does not exit, so the run lasts until SIGKILL, KillWait (5 s) after SIGTERM.
    kill_wait = int(config_value("KillWait").split()[0])
    last_beat = float((marks / "heartbeat_0").read_text())
    assert kill_wait - 1 <= last_beat - t_term <= kill_wait + 5, (t_term, last_beat)
    assert not (marks / "signals_1").exists()
    assert (marks / "started_1").exists() and not (marks / "heartbeat_1").exists()

    info = job_info(job.job_id)
    assert info["Restarts"] == "1", info
    assert wait_left_queue(job.job_id) == "COMPLETED"
    print(f"requeue to result: {t_done - t_requeue:.1f}s")


def _sleeps() -> None:
    time.sleep(300)


def test_cancelled_job_is_done_through_sacct(slurm_cluster, tmp_path):
    """A job killed from outside leaves no result pickle: only sacct tells submitit it is over."""
    if not slurm_cluster.accounting:
        pytest.skip("no slurmdbd (SLURM_LOCAL_ACCOUNTING=0): submitit would wait forever on this job")
    job = _executor(tmp_path / "logs").submit(_sleeps)
    wait_state(job.job_id, "RUNNING", timeout=60)
    job.cancel()
    assert wait_left_queue(job.job_id) == "CANCELLED"
    wait_until(lambda: job.done(force_check=True), 30, "submitit to see the job done")
    assert job.state.startswith("CANCELLED")
    # result() then looks for the result pickle for _results_timeout_s (15 s, for slow shared file
    # systems) before it raises; a local folder needs no such wait.
    job._results_timeout_s = 1
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()


class _Counter(submitit.helpers.Checkpointable):
    """A job that counts to ``target``, slowly on its first run; submitit pickles it (its progress
    included) when preempted, and the requeued run resumes from there."""

    def __init__(self):
        self.progress = 0

    def __call__(self, folder: str, target: int) -> dict:
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        resumed_from = self.progress
        while self.progress < target:
            self.progress += 1
            with open(os.path.join(folder, "progress"), "w") as f:
                f.write(str(self.progress))
            if attempt == 0:
                time.sleep(0.1)
        return {"attempt": attempt, "resumed_from": resumed_from, "progress": self.progress}


def test_submitit_preemption_checkpoints_and_requeues(slurm_cluster, tmp_path):
    """submitit's own path: SIGUSR2 (what Slurm sends before a time limit or on preemption, here
    from ``job._interrupt()``: scancel --signal SIGTERM, then USR2) makes the job pickle its
    checkpoint and run ``scontrol requeue`` itself; the next run resumes from the checkpoint."""
    folder = tmp_path / "marks"
    folder.mkdir()
    job = _executor(tmp_path / "logs").submit(_Counter(), str(folder), 600)
    progress = folder / "progress"
    wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= 10, 60, "the job to count")
    job._interrupt()  # preemption: SIGTERM (ignored by submitit), then SIGUSR2
    out = job.result()
    assert out["attempt"] == 1 and out["progress"] == 600, out
    assert 10 <= out["resumed_from"] < 600, out  # the checkpoint kept the first run's progress
    assert job_info(job.job_id)["Restarts"] == "1"
    assert "Bypassing signal SIGTERM" in (job.stderr() or "")
