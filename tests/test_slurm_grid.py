"""experiment.py launcher=slurm on a real single-node Slurm cluster (tests/slurm.py): a tiny grid
(2 agents x walker x 2 seeds) through the real sbatch, fine-tunings after their pre-trainings, a
rerun that submits nothing, a job requeued mid-run that ends with the CSV rows of an uninterrupted
run. Skipped, with the reason, where the cluster cannot be started."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO
from slurm import in_queue, requeue, slurm_cluster, wait_until  # noqa: F401 (fixture)
from test_experiment import TINY_GRID, cells_working_directories

SLURM_GRID = [arg for arg in TINY_GRID if not arg.startswith("launcher.")] + [
    "launcher=slurm", "launcher.threads=1", "launcher.partition=debug", "experiment.pretrain.resources.mem_gb=2",
    "experiment.finetune.resources.mem_gb=2", "experiment.pretrain.resources.time_min=20",
    "experiment.finetune.resources.time_min=20"]


def experiment(out, *extra, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "experiment.py"), *SLURM_GRID, f"out={out}", *extra],
                          cwd=out.parent, capture_output=True, text=True, timeout=timeout)


def grid_jobs(out) -> dict[str, str]:
    return json.loads((out / "jobs.json").read_text())


def wait_for_grid(out, timeout=900):
    jobs = grid_jobs(out)
    wait_until(lambda: not any(in_queue(job) for job in jobs.values()), timeout, "the grid's jobs to leave the queue",
               poll=2)


def csv_rows(path, drop=("fps", "updates_per_s", "total_time")):
    with open(path) as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def test_a_slurm_grid_runs_in_order_scores_and_a_rerun_submits_nothing(slurm_cluster, tmp_path):
    out = tmp_path / "grid"
    # A package of the user's own named like ours, in the folder they submit from, must not shadow ours.
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("raise ImportError('the submission folder shadows utils')\n")
    submitted = experiment(out)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    assert "submitted 8 cell(s)" in submitted.stdout
    jobs = grid_jobs(out)
    assert len(jobs) == 9 and "score" in jobs  # 8 cells and the scoring job
    again = experiment(out)  # while the jobs are queued or running: nothing new
    assert "submitted 0 cell(s)" in again.stdout, again.stdout
    assert grid_jobs(out) == jobs
    status = experiment(out, "action=status")
    assert status.returncode == 0 and "8 cells (" in status.stdout.splitlines()[0], status.stdout
    wait_for_grid(out)
    statuses = {path.parent.name: json.loads(path.read_text()) for path in (out / "runs").glob("*/status.json")}
    assert len(statuses) == 8 and all(s["state"] == "done" for s in statuses.values()), statuses
    for name, status_of in statuses.items():
        if name.startswith("ft_"):
            pretraining = statuses[name.replace("ft_", "pt_").replace("walker_stand", "walker")]
            assert status_of["started"] >= pretraining["ended"], name  # afterok held
    assert cells_working_directories(out) == {str(tmp_path)}  # the submission folder, as for local cells
    results = (out / "results.md").read_text()  # written by the scoring job
    for agent in ("choreo", "lbs"):
        assert f"| {agent} | walker_stand | 2 |" in results, results
    rerun = experiment(out)
    assert rerun.returncode == 0 and "submitted 0 cell(s)" in rerun.stdout, rerun.stdout
    assert grid_jobs(out) == jobs


ONE_CELL = ["experiment.agents=[choreo]", "experiment.seeds=[1]", "experiment.tasks.walker=[]",
            "experiment.pretrain.frames=4000"]


@pytest.fixture(scope="module")
def uninterrupted_rows(tmp_path_factory):
    """The train.csv rows of the one-cell grid run locally, never stopped."""
    reference = tmp_path_factory.mktemp("uninterrupted") / "local"
    local = subprocess.run([sys.executable, str(REPO / "experiment.py"), *TINY_GRID, *ONE_CELL, f"out={reference}"],
                           cwd=reference.parent, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-2000:]
    return csv_rows(reference / "runs" / "pt_choreo_walker_s1" / "train.csv")


def stop_mid_run_and_finish(out, stop, timeout=900) -> dict:
    """Submit the one-cell grid, call ``stop(job_id)`` once its first episode is logged, wait (at most
    ``timeout`` s) for the grid to end; the cell's log and status."""
    submitted = experiment(out, *ONE_CELL)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job = grid_jobs(out)["pt_choreo_walker_s1"]
    train_csv = out / "runs" / "pt_choreo_walker_s1" / "train.csv"
    wait_until(lambda: train_csv.exists() and len(train_csv.read_text().splitlines()) >= 2, 300,
               "the first episode of the pre-training", poll=0.2)
    stop(job)
    wait_for_grid(out, timeout)
    return {"job": job, "log": (out / "logs" / "pt_choreo_walker_s1.log").read_text(),
            "status": json.loads((out / "runs" / "pt_choreo_walker_s1" / "status.json").read_text()),
            "rows": csv_rows(train_csv)}


def test_a_requeued_job_ends_with_the_rows_of_an_uninterrupted_run(slurm_cluster, tmp_path, uninterrupted_rows):
    """``scontrol requeue`` mid-run: SIGTERM reaches the run, which writes its checkpoint; the job runs
    again and continues from it. Its rows equal those of the same cell run locally, never stopped."""
    ended = stop_mid_run_and_finish(tmp_path / "slurm", requeue)
    assert "stopped by SIGTERM" in ended["log"] and "resumed from" in ended["log"], ended["log"][-3000:]
    assert ended["status"]["state"] == "done" and ended["status"]["done"] == 4000
    assert ended["rows"] == uninterrupted_rows


def test_the_time_limit_signal_checkpoints_and_the_job_requeues_itself(slurm_cluster, tmp_path, uninterrupted_rows):
    """What Slurm sends ``signal_delay_s`` before the time limit, SIGUSR2 (here from ``scancel --signal``,
    as submitit's own ``job._interrupt(timeout=True)`` does): submitit's handler asks
    ``CellJob.checkpoint``, which lets the run write its checkpoint and exit first, then requeues the
    job, which continues from the checkpoint with the rows of an uninterrupted run."""
    from slurm import job_info
    # Well under the 600 s the checkpoint hook once hung for (it waited on the Popen its own signal
    # had interrupted).
    ended = stop_mid_run_and_finish(tmp_path / "slurm",
                                    lambda job: subprocess.run(["scancel", "--signal=USR2", job], check=True),
                                    timeout=400)
    assert "stopped by SIGUSR2" in ended["log"] and "resumed from" in ended["log"], ended["log"][-3000:]
    assert ended["log"].count("=== ") == 2  # the command ran twice: before and after the requeue
    assert job_info(ended["job"])["Restarts"] == "1"  # the controller keeps a finished job MinJobAge (300 s)
    assert ended["status"]["state"] == "done" and ended["status"]["done"] == 4000
    assert ended["rows"] == uninterrupted_rows


def test_a_cancelled_pre_training_is_resubmitted_with_its_fine_tuning(slurm_cluster, tmp_path):
    """scancel on a running pre-training: its fine-tuning waits on a job that will never succeed
    (afterok). The rerun submits the pre-training again and moves the fine-tuning after the new job;
    the grid then finishes."""
    from slurm import job_state
    one_chain = ["experiment.agents=[choreo]", "experiment.seeds=[1]", "experiment.pretrain.frames=4000"]
    out = tmp_path / "grid"
    first = experiment(out, *one_chain)
    assert first.returncode == 0 and "submitted 2 cell(s)" in first.stdout, first.stdout + first.stderr[-2000:]
    jobs = grid_jobs(out)
    train_csv = out / "runs" / "pt_choreo_walker_s1" / "train.csv"
    wait_until(lambda: train_csv.exists(), 300, "the pre-training to log its first episode", poll=0.2)
    subprocess.run(["scancel", jobs["pt_choreo_walker_s1"]], check=True)
    wait_until(lambda: not in_queue(jobs["pt_choreo_walker_s1"]), 120, "the cancelled job to leave the queue")
    assert job_state(jobs["ft_choreo_walker_stand_s1"]) == "PENDING"  # afterok can no longer hold
    rerun = experiment(out, *one_chain)
    assert rerun.returncode == 0 and "submitted 2 cell(s)" in rerun.stdout, rerun.stdout + rerun.stderr[-2000:]
    again = grid_jobs(out)
    assert again["pt_choreo_walker_s1"] != jobs["pt_choreo_walker_s1"]
    assert again["ft_choreo_walker_stand_s1"] != jobs["ft_choreo_walker_stand_s1"]
    wait_for_grid(out)
    for cell in ("pt_choreo_walker_s1", "ft_choreo_walker_stand_s1"):
        assert json.loads((out / "runs" / cell / "status.json").read_text())["state"] == "done", cell
    assert "resumed from" in (out / "logs" / "pt_choreo_walker_s1.log").read_text()
