"""Reliability: a run killed with SIGKILL resumes to exactly the run it would have been, resume=never
refuses, non-finite losses stop the run, and bad input gets one line naming it."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, compose_config
from utils.checkpoint import open_checkpoint, set_aside_unfinished_run, write_checkpoint
from utils.errors import UserError
from utils.runner import OnlineRunner, TrainingDiverged, check_finite
from utils.snapshot import SnapshotError, load_snapshot, save_snapshot

# threads=1: a thread count that follows the runs alive on the machine (threads=auto) could differ
# between the two runs compared, and with it the rounding of every matrix product.
RUN = ["configs=dmc_states", "num_train_frames=3000", "num_seed_frames=1000", "log_every_frames=100",
       "checkpoint_every_min=0", "snapshots=[]", "seed=3", "threads=1"]


def pretrain_command(run_dir, *extra):
    return [sys.executable, str(REPO / "pretrain.py"), *TINY, *RUN, *extra, f"hydra.run.dir={run_dir}"]


def csv_rows(path, drop=("fps", "updates_per_s", "total_time")):
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def replay_files(run_dir):
    return {path.name.split("_", 1)[1]: np.load(path) for path in sorted((run_dir / "buffer").glob("*.npz"))}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run the interrupted ones must come out as: the same settings, never stopped."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = subprocess.run(pretrain_command(run_dir, "prefetch_batches=false"), cwd=run_dir.parent,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def kill_during_third_episode(command, cwd):
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith("| train | F: 2000"):
            break
    time.sleep(1.5)  # well into the third episode: updates running, replay partly filled
    process.send_signal(signal.SIGKILL)
    process.wait()


def assert_same_run(straight, other):
    final_straight = load_snapshot(straight / "checkpoint.pt")
    final_other = load_snapshot(other / "checkpoint.pt")
    assert final_straight["global_step"] == final_other["global_step"] == 3000
    assert final_straight["updates"] == final_other["updates"]
    modules_a, modules_b = final_straight["agent"]["modules"], final_other["agent"]["modules"]
    for key, value in modules_a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, modules_b[key]), key
    assert csv_rows(straight / "train.csv") == csv_rows(other / "train.csv")
    files_a, files_b = replay_files(straight), replay_files(other)
    assert files_a.keys() == files_b.keys() and len(files_a) == 3
    for name in files_a:
        for key in files_a[name].files:
            np.testing.assert_array_equal(files_a[name][key], files_b[name][key])


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, straight):
    """The killed run also prefetches its batches: prefetching and resuming must both leave the
    batches, hence every weight, those of a plain uninterrupted run."""
    killed = tmp_path / "killed"
    kill_during_third_episode(pretrain_command(killed, "prefetch_batches=true"), tmp_path)
    resumed = subprocess.run(pretrain_command(killed, "prefetch_batches=true"), cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "at frame 2000" in resumed.stdout, resumed.stdout
    assert_same_run(straight, killed)


def test_a_run_killed_before_its_first_checkpoint_starts_fresh_and_keeps_the_old_logs(tmp_path, straight):
    """No checkpoint yet (only the final one is due): the rerun has nothing to continue. Its logs and
    episodes must be those of a fresh run, not the dead run's rows and episode files with its own
    appended, and the dead run's files are moved aside, not deleted."""
    run_dir = tmp_path / "run"
    kill_during_third_episode(pretrain_command(run_dir, "checkpoint_every_min=1000"), tmp_path)
    assert not (run_dir / "checkpoint.pt").exists()
    old_rows = csv_rows(run_dir / "train.csv")
    assert len(list((run_dir / "buffer").glob("*.npz"))) == 2 and old_rows
    rerun = subprocess.run(pretrain_command(run_dir), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from" not in rerun.stdout and "starting fresh" in rerun.stdout, rerun.stdout
    assert_same_run(straight, run_dir)
    (aside,) = (run_dir / "interrupted").iterdir()
    assert csv_rows(aside / "train.csv") == old_rows
    assert len(list((aside / "buffer").glob("*.npz"))) == 2


def stop_with(signals, command, cwd, after="| train | F: 2000", delay=1.5):
    """Run ``command``, send each of ``signals`` once the line starting with ``after`` was printed and
    ``delay`` seconds more have passed (well inside the next episode), and return the finished process
    with its stderr."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith(after):
            break
    time.sleep(delay)
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=600)
    return process, stderr


STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2]


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_a_stop_signal_checkpoints_mid_episode_and_the_rerun_matches_an_uninterrupted_run(tmp_path, straight, signum):
    """What Slurm sends before a time limit or preemption (TERM, USR1/USR2) and Ctrl-C: the run finishes
    its step, writes a checkpoint inside the episode, says how to continue and exits with 128 + signal;
    the rerun replays the episode's actions and ends exactly as the uninterrupted run."""
    run_dir = tmp_path / "run"
    process, stderr = stop_with([signum], pretrain_command(run_dir), tmp_path)
    assert process.returncode == 128 + signum, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signum.name} at frame ") and "rerun the same command" in last, stderr
    assert "Traceback" not in stderr
    saved = load_snapshot(run_dir / "checkpoint.pt")
    assert saved["episode_in_progress"] is not None and 2000 < saved["global_step"] < 3000
    rerun = subprocess.run(pretrain_command(run_dir), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"at frame {saved['global_step']} " in rerun.stdout and "mid-episode" in rerun.stdout, rerun.stdout
    assert_same_run(straight, run_dir)


FINETUNE = ["configs=dmc_states", "task=walker_stand", "snapshot_ts=0", "num_train_frames=3000",
            "num_seed_frames=1000", "eval_every_frames=1000", "num_eval_episodes=1", "log_every_frames=100",
            "checkpoint_every_min=0", "seed=3", "threads=1"]
OFFLINE = ["configs=dmc_states", "domain=walker", "num_train_updates=300", "log_every_updates=10",
           "eval_every_updates=100", "snapshots=[]", "checkpoint_every_min=0", "seed=3", "holdout_fraction=0.34",
           "threads=1"]


def script_command(script, run_dir, *extra):
    return [sys.executable, str(REPO / script), *TINY, *extra, f"hydra.run.dir={run_dir}"]


def assert_same_weights_and_rows(straight, other, csvs=("train.csv", "eval.csv")):
    final_straight = load_snapshot(straight / "checkpoint.pt")
    final_other = load_snapshot(other / "checkpoint.pt")
    assert final_straight["global_step"] == final_other["global_step"]
    assert final_straight["updates"] == final_other["updates"]
    for key, value in final_straight["agent"]["modules"].items():
        if torch.is_tensor(value):
            assert torch.equal(value, final_other["agent"]["modules"][key]), key
    for name in csvs:
        assert csv_rows(straight / name) == csv_rows(other / name), name


def test_sigterm_on_a_fine_tuning_run_then_the_rerun_matches_an_uninterrupted_one(tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run(script_command("finetune.py", straight, *FINETUNE), cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    stopped = tmp_path / "stopped"
    process, stderr = stop_with([signal.SIGTERM], script_command("finetune.py", stopped, *FINETUNE), tmp_path)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert load_snapshot(stopped / "checkpoint.pt")["episode_in_progress"] is not None
    rerun = subprocess.run(script_command("finetune.py", stopped, *FINETUNE), cwd=tmp_path, capture_output=True,
                           text=True, timeout=900)
    assert rerun.returncode == 0 and "mid-episode" in rerun.stdout, rerun.stderr[-2000:]
    assert_same_weights_and_rows(straight, stopped)


def test_sigterm_during_an_evaluation_stops_it_and_the_rerun_evaluates_again_as_an_uninterrupted_run(tmp_path):
    """A long evaluation (100 zero-shot episodes) must not outlast a cluster's grace period: the stop is
    taken at the next evaluation step, the checkpoint is that of the moment before the evaluation, and
    the rerun makes the whole evaluation again with the same numbers."""
    settings = [item for item in FINETUNE if not item.startswith(("num_train_frames=", "num_eval_episodes="))]
    # One evaluation, at frame 1000, of 20 episodes (about ten seconds); no checkpoint at the episode
    # end before it, so the signal cannot fall into a slow checkpoint write.
    settings = [item for item in settings if not item.startswith("checkpoint_every_min=")]
    settings += ["num_train_frames=2000", "num_eval_episodes=20", "checkpoint_every_min=1000"]
    straight = tmp_path / "straight"
    done = subprocess.run(script_command("finetune.py", straight, *settings), cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    stopped = tmp_path / "stopped"
    # The evaluation starts as soon as the first episode's line is printed and takes seconds.
    process, stderr = stop_with([signal.SIGTERM], script_command("finetune.py", stopped, *settings), tmp_path,
                                after="| train | F: 1000", delay=0.5)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM at frame 1000, during an evaluation"), last
    assert not (stopped / "eval.csv").exists() or len(csv_rows(stopped / "eval.csv")) == 0
    saved = load_snapshot(stopped / "checkpoint.pt")
    assert saved["global_step"] == 1000 and saved["episode_in_progress"]["episode_step"] == 0
    rerun = subprocess.run(script_command("finetune.py", stopped, *settings), cwd=tmp_path, capture_output=True,
                           text=True, timeout=900)
    assert rerun.returncode == 0 and "at frame 1000 " in rerun.stdout, rerun.stderr[-2000:]
    assert_same_weights_and_rows(straight, stopped)


def test_sigterm_on_an_offline_run_then_the_rerun_matches_an_uninterrupted_one(tmp_path, straight):
    dataset = [f"dataset_dir={straight / 'buffer'}"]
    reference = tmp_path / "straight"
    done = subprocess.run(script_command("offline_train.py", reference, *OFFLINE, *dataset), cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    stopped = tmp_path / "stopped"
    process, stderr = stop_with([signal.SIGTERM], script_command("offline_train.py", stopped, *OFFLINE, *dataset),
                                tmp_path, after="| train | S: 100 |", delay=0.3)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM at update ") and "rerun the same command" in last, stderr
    assert 100 <= load_snapshot(stopped / "checkpoint.pt")["updates"] < 300
    rerun = subprocess.run(script_command("offline_train.py", stopped, *OFFLINE, *dataset), cwd=tmp_path,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0 and "resumed from" in rerun.stdout, rerun.stderr[-2000:]
    assert_same_weights_and_rows(reference, stopped)


def test_a_replay_that_differs_is_one_line_and_on_bad_file_skip_continues(tmp_path):
    """A mid-episode checkpoint whose stored episode the environment no longer reproduces (another
    machine, another library version; here one stored observation changed) is refused with one line
    naming the step, or continued from the replayed environment with on_bad_file=skip."""
    run_dir = tmp_path / "run"
    process, stderr = stop_with([signal.SIGTERM], pretrain_command(run_dir), tmp_path)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    payload = load_snapshot(run_dir / "checkpoint.pt")
    payload["episode_in_progress"]["rows"]["observation"][5] += 1.0
    save_snapshot(payload, run_dir / "checkpoint.pt")
    refused = subprocess.run(pretrain_command(run_dir), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the checkpoint in {run_dir} stopped mid-episode") and "from its step 5 on" in last \
        and "on_bad_file=skip continues" in last, refused.stderr[-2000:]
    went_on = subprocess.run(pretrain_command(run_dir, "on_bad_file=skip"), cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
    assert went_on.returncode == 0, went_on.stderr[-2000:]
    assert "continuing from the replayed environment" in went_on.stdout
    assert load_snapshot(run_dir / "checkpoint.pt")["global_step"] == 3000


def test_a_second_ctrl_c_stops_at_once():
    """The first SIGINT only asks for a stop; the second, before the loop got to it, raises at once."""
    from utils.lifecycle import StopSignals
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        assert stop.requested == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal of another kind does not replace the first
        time.sleep(0.01)
        assert stop.requested == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_two_quick_ctrl_c_end_the_script_with_one_line_and_no_traceback(tmp_path):
    """Whether the second Ctrl-C lands before the step ends (no checkpoint) or while the stop is
    written (ignored), the script ends with exit 130 and one of its two closing lines."""
    process, stderr = stop_with([signal.SIGINT, signal.SIGINT], pretrain_command(tmp_path / "run"), tmp_path,
                                delay=0.5)
    assert process.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(("interrupted: stopped at once, without a checkpoint", "stopped by SIGINT")), stderr
    assert "Traceback" not in stderr


def test_two_processes_on_one_run_folder_the_second_stops_at_once(tmp_path, straight):
    """The second command on a held folder exits non-zero with one line naming the folder and the
    holder's process id, touching nothing; the first finishes; the folder then resumes cleanly (and a
    temporary file of an interrupted write left there is removed)."""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(pretrain_command(run_dir), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    for line in first.stdout:
        if line.startswith("| train | F: 1000"):
            break
    second = subprocess.run(pretrain_command(run_dir), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"error: run folder {run_dir} is in use by another process (pid {first.pid} on "), line
    assert line.endswith("wait for it to finish or stop it, or use another hydra.run.dir"), line
    first.communicate(timeout=600)
    assert first.returncode == 0
    assert_same_run(straight, run_dir)
    stale = run_dir / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"\0" * 3_800_000)
    rerun = subprocess.run(pretrain_command(run_dir), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from" in rerun.stdout and "removed 1 temporary file(s)" in rerun.stdout, rerun.stdout
    assert not stale.exists()
    assert_same_run(straight, run_dir)


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    """The holder dies by SIGKILL while holding the lock (as on a lost node): the next run takes it."""
    from utils.lifecycle import RunFolderBusy, RunLock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from utils.lifecycle import RunLock; "
        "lock = RunLock(sys.argv[2]).__enter__(); print('held', flush=True); time.sleep(600)"),
        str(REPO), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderBusy, match=f"in use by another process \\(pid {holder.pid} on "):
        RunLock(tmp_path / "run").__enter__()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path / "run") as lock:
        assert f"pid {os.getpid()} " in lock.holder()


def test_another_runs_snapshot_is_never_replaced(tmp_path, monkeypatch):
    """A second run with the same domain, agent and seed (other settings, another run folder) stops
    before training, naming the file, the folder that wrote it and the ways out; the writing run may
    rewrite its own; overwrite_snapshots=true replaces it."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "pretrained_models" / "states" / "walker" / "choreo" / "3" / "snapshot_2000.pt"
    first_run = tmp_path / "first"
    save_snapshot({"run_dir": str(first_run.resolve()), "weights": torch.ones(3)}, target)
    before = target.read_bytes()
    overrides = TINY + ["seed=3", "snapshots=[2000]", "model_opt.lr=1e-3"]
    with pytest.raises(UserError) as error:
        OnlineRunner(compose_config(overrides), tmp_path / "second")
    message = str(error.value)
    assert "\n" not in message
    for text in (f"snapshot {target} exists, written by run folder {first_run.resolve()}", "not replacing it",
                 "another seed=", "another snapshot_base_dir=", "overwrite_snapshots=true"):
        assert text in message, message
    assert target.read_bytes() == before
    own = OnlineRunner(compose_config(overrides), first_run)
    assert own.save_snapshot(2000) == target and load_snapshot(target)["run_dir"] == str(first_run.resolve())
    other = OnlineRunner(compose_config(overrides + ["overwrite_snapshots=true"]), tmp_path / "third")
    other.save_snapshot(2000)
    assert load_snapshot(target)["run_dir"] == str((tmp_path / "third").resolve())


def test_a_snapshot_published_between_the_check_and_the_write_is_not_replaced(tmp_path, monkeypatch):
    """Two runs with the same domain, agent and seed start together: both find the name free, the
    other publishes first (here: right after this run's check). This run's write is refused, naming
    the other run; the other's file and no temporary file are left."""
    import utils.run_loop
    monkeypatch.chdir(tmp_path)
    overrides = TINY + ["seed=4", "snapshots=[2000]"]
    runner = OnlineRunner(compose_config(overrides), tmp_path / "mine")
    target = runner.snapshot_path(2000)
    other_run = (tmp_path / "other").resolve()
    real_check = utils.run_loop.check_snapshot_owner

    def check_then_lose_the_race(path, run_dir, overwrite):
        real_check(path, run_dir, overwrite)
        if not Path(path).exists():
            save_snapshot({"run_dir": str(other_run), "weights": torch.zeros(2)}, path)

    monkeypatch.setattr(utils.run_loop, "check_snapshot_owner", check_then_lose_the_race)
    with pytest.raises(UserError, match=f"written by run folder {re.escape(str(other_run))}"):
        runner.save_snapshot(2000)
    assert load_snapshot(target)["run_dir"] == str(other_run)
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]


def test_leftovers_are_set_aside_only_without_a_checkpoint_and_only_for_a_valid_resume(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "buffer").mkdir(parents=True)
    (run_dir / "eval.csv").write_text("frame,episode_reward\n5000,10.0\n")
    (run_dir / "buffer" / "20260101T000000_000000_500.npz").write_bytes(b"x")
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="resume='sometimes' is not valid"):
        set_aside_unfinished_run(run_dir, "sometimes")
    assert (run_dir / "eval.csv").exists()
    aside = set_aside_unfinished_run(run_dir, "never")
    assert aside.parent == run_dir / "interrupted"
    assert (aside / "eval.csv").read_text().endswith("5000,10.0\n")
    assert [path.name for path in (aside / "buffer").iterdir()] == ["20260101T000000_000000_500.npz"]
    assert not (run_dir / "eval.csv").exists() and not (run_dir / "buffer").exists()
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert set_aside_unfinished_run(run_dir, "auto") is None  # nothing left to move
    (run_dir / "train.csv").write_text("frame\n1000\n")
    save_snapshot({"phase": "pretrain"}, run_dir / "checkpoint.pt")
    assert set_aside_unfinished_run(run_dir, "auto") is None and (run_dir / "train.csv").exists()


def test_resuming_onto_a_log_without_the_x_column_is_one_line_and_leaves_the_log(tmp_path):
    from utils.logger import Logger
    log = tmp_path / "train.csv"
    log.write_text("frame,loss\n100,0.5\n200,0.4\n")  # an offline run's log from when its x was the frame
    with pytest.raises(UserError, match=r"train.csv has no 'step' column \(its columns: frame, loss\)"):
        Logger(tmp_path, use_tb=False, resume_frame=100, x_key="step")
    assert log.read_text() == "frame,loss\n100,0.5\n200,0.4\n"
    # Only eval.csv lacks it: train.csv, which the resume would cut at the checkpoint, is left whole too.
    log.write_text("step,loss\n100,0.5\n200,0.4\n")
    (tmp_path / "eval.csv").write_text("frame,loss\n100,0.5\n")
    with pytest.raises(UserError, match=r"eval.csv has no 'step' column"):
        Logger(tmp_path, use_tb=False, resume_frame=100, x_key="step")
    assert log.read_text() == "step,loss\n100,0.5\n200,0.4\n"


def test_resume_never_refuses_a_folder_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_snapshot({"phase": "pretrain"}, run_dir / "checkpoint.pt")
    cfg = compose_config(TINY + ["resume=never"])
    with pytest.raises(UserError, match="already holds a checkpoint.*resume=never"):
        OnlineRunner(cfg, run_dir)


def test_a_checkpoint_of_another_phase_is_refused_not_mixed_in(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_checkpoint(run_dir, {"updates": 3}, "pretrain", total_time=1.5, wandb_run=None)
    path, payload = open_checkpoint(run_dir, "auto", "pretrain", "cpu")
    assert path.name == "checkpoint.pt" and payload["updates"] == 3 and payload["total_time"] == 1.5
    assert payload["wandb_id"] is None and "torch" in payload["rng"]
    with pytest.raises(UserError, match=r"checkpoint in .*run is from pretrain, not offline"):
        open_checkpoint(run_dir, "auto", "offline", "cpu")
    assert open_checkpoint(tmp_path, "auto", "offline", "cpu") is None


def test_non_finite_loss_stops_with_step_and_loss_named():
    metrics = {"model_loss": torch.tensor(1.0), "actor_loss": torch.tensor(float("nan")), "critic": torch.tensor(2.0)}
    with pytest.raises(TrainingDiverged, match=r"step 42 \(frame 84\): actor_loss=nan"):
        check_finite(metrics, 42, 84)
    check_finite({"model_loss": torch.tensor(1.0)}, 1, 1)


def _corrupt_snapshot(path):
    save_snapshot({"agent": {}, "obs_type": "states", "domain": "walker"}, path)
    path.write_bytes(path.read_bytes()[:40])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def _pickled_snapshot(path):
    torch.save({"agent": _Payload()}, path)


BAD_CONFIGS = [
    (["domain=cheetah"], "unknown domain 'cheetah'; valid domains: walker"),
    (["task=walker_jog"], "walker_jog"),
    (["num_train_frames=-5"], "num_train_frames=-5 must be a positive number"),
    (["num_train_frames=abc"], "num_train_frames='abc' must be a positive number"),
    (["batch_size=0"], "batch_size=0 must be a positive number"),
    (["batch_length=1"], "batch_length=1 must be at least 2"),
    (["num_seed_frames=-1"], "num_seed_frames=-1 must be >= 0"),
    (["precision=8"], "precision=8 is not supported; valid: 32, 16"),
    (["device=tpu"], "device='tpu' is not valid"),
    (["resume=maybe"], "resume='maybe' is not valid; valid: auto, never"),
    (["obs_type=rgb"], "unknown obs_type 'rgb'; valid: states, pixels"),
    (["action_repeat=0"], "action_repeat=0 must be a positive number"),
    (["task=mw_reach", "seed=12"], "seed 12"),
    (["task=mw_reach", "seed=1", "+task_id=60"], "task_id"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_values_get_one_line_naming_them(tmp_path, overrides, message):
    cfg = compose_config(TINY + overrides)
    with pytest.raises(UserError) as error:
        OnlineRunner(cfg, tmp_path / "run")
    text = str(error.value)
    assert message in text and "\n" not in text, text


BAD_SNAPSHOTS = [
    ("missing", None, "snapshot not found"),
    ("truncated", _corrupt_snapshot, "is corrupt or truncated"),
    ("pickled code", _pickled_snapshot, "refusing to load"),
    ("not a dict", lambda path: torch.save([1, 2, 3], path), "does not hold a dict"),
]


@pytest.mark.parametrize("name, write, message", BAD_SNAPSHOTS, ids=[b[0] for b in BAD_SNAPSHOTS])
def test_bad_snapshot_files_get_one_line(tmp_path, capsys, name, write, message):
    path = tmp_path / "snapshot_100.pt"
    if write:
        write(path)
    with pytest.raises(SnapshotError) as error:
        load_snapshot(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "this must never run" not in capsys.readouterr().out


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a real full disk (needs root, as CI has)."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_keeps_the_last_good_snapshot_and_says_so(small_disk):
    path = small_disk / "snapshot_100.pt"
    save_snapshot({"weights": torch.zeros(1000)}, path)  # about 4 KB: fits
    with pytest.raises(SnapshotError, match="No space left on device") as error:
        save_snapshot({"weights": torch.zeros(200_000)}, path)  # about 800 KB: does not
    assert str(path) in str(error.value)
    assert torch.equal(load_snapshot(path)["weights"], torch.zeros(1000))
    assert [p.name for p in small_disk.iterdir()] == ["snapshot_100.pt"], "no temporary file left behind"


def test_disk_full_while_writing_an_episode_keeps_earlier_episodes(small_disk):
    from utils.replay import load_episode, write_episode
    rng = np.random.default_rng(0)
    small = {"observation": rng.normal(size=(11, 24)).astype(np.float32), "reward": np.zeros((11, 1), np.float32)}
    first = write_episode(small, small_disk, 0)
    large = {"observation": rng.normal(size=(20001, 24)).astype(np.float32),
             "reward": np.zeros((20001, 1), np.float32)}
    with pytest.raises(OSError, match="No space left on device"):
        write_episode(large, small_disk, 1)
    np.testing.assert_array_equal(load_episode(first)["observation"], small["observation"])
    assert [p.name for p in small_disk.iterdir()] == [first.name]
