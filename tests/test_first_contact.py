"""What a new user sees of a run: every episode logged (the last one too), plain progress lines
without a terminal, a closing summary of where everything went, no library chatter, no empty run
folder after a bad setting, and each run's share of the cores (real walker physics, tiny networks)."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY
from utils.progress import Progress
from utils.threads import ThreadShare, live_runs, share_of_cores, usable_cores

TRAIN_LINE = re.compile(r"^\| train \| F: (\d+) \| S: \d+ \| E: (\d+) \| L: 1000 \| R: \d+\.\d{4} \| FPS: ")
PROGRESS_LINE = re.compile(r"^progress: frame (\d+)/(\d+) \(\d+\.\d%\) \| \d+\.\d\d updates/s \| elapsed \d+:\d\d:\d\d"
                           r"( \| ETA \d+:\d\d:\d\d)?$")


def pretrain(tmp_path, run_dir, *args):
    command = [sys.executable, str(REPO / "pretrain.py"), *TINY, "num_seed_frames=1500", "snapshots=[2000]",
               f"hydra.run.dir={run_dir}", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def csv_rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_episode_is_logged_and_the_run_ends_with_a_summary(tmp_path):
    run_dir = tmp_path / "run"
    # Walker episodes are 1000 frames at action repeat 1: 2000 frames = 2 episodes, the last ending the run.
    settings = ["progress_every_s=0.5", "concurrent_runs=2"]
    lines = pretrain(tmp_path, run_dir, "num_train_frames=2000", *settings)
    assert lines and (lines[0].startswith("| train |") or lines[0].startswith("progress: ")), lines[:3]
    assert not any("INFO" in line for line in lines), lines

    train = [TRAIN_LINE.match(line) for line in lines if line.startswith("| train |")]
    assert [(m.group(1), m.group(2)) for m in train] == [("1000", "1"), ("2000", "2")], lines
    rows = csv_rows(run_dir / "train.csv")
    assert [row["frame"] for row in rows if row["episode_reward"]] == ["1000", "2000"]
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    assert [event.step for event in events.Scalars("train/episode_reward")] == [1000, 2000]

    # Without a terminal: plain progress lines, and they count up to the budget.
    progress = [PROGRESS_LINE.match(line) for line in lines if line.startswith("progress: ")]
    assert progress and all(progress), [line for line in lines if line.startswith("progress: ")]
    assert all(m.group(2) == "2000" for m in progress)

    snapshot = tmp_path / "pretrained_models" / "states" / "walker" / "choreo" / "1" / "snapshot_2000.pt"
    assert snapshot.is_file()
    summary = lines[lines.index(next(line for line in lines if line.startswith("done: "))):]
    assert summary[0].startswith("done: 2000 frames, 2 episodes, 50 updates in ")
    assert summary[1:] == [
        f"  run folder:  {run_dir}",
        f"  snapshots:   {snapshot}",
        f"  csv logs:    {run_dir / 'train.csv'}",
        f"  threads:     {share_of_cores(usable_cores(), 2)} (auto: {usable_cores()} cores, 2 run(s) given)",
        f"  tensorboard: tensorboard --logdir {run_dir / 'tb'}",
    ]

    # A rerun with a larger budget continues the run, says what changed, and logs only the new episode.
    lines = pretrain(tmp_path, run_dir, "num_train_frames=3000", *settings)
    assert "resuming with changed settings: num_train_frames: 2000 -> 3000" in lines, lines
    assert [line.split(" | ")[1] for line in lines if line.startswith("| train |")] == ["F: 3000"]
    assert [row["frame"] for row in csv_rows(run_dir / "train.csv") if row["episode_reward"]] == \
        ["1000", "2000", "3000"]


def test_a_bad_setting_leaves_no_run_folder(tmp_path):
    command = [sys.executable, str(REPO / "pretrain.py"), *TINY, "domain=cheetah"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown domain 'cheetah'; valid domains: walker, quadruped, jaco, mw"], result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "exp_local").exists(), list((tmp_path / "exp_local").rglob("*"))


def test_a_bad_setting_never_removes_the_working_directory(tmp_path):
    # hydra.run.dir is the folder the command runs in: the error must leave it (and what is in it) alone.
    (tmp_path / "mine.txt").write_text("a file of the user's")
    command = [sys.executable, str(REPO / "pretrain.py"), *TINY, "domain=cheetah", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "mine.txt").read_text() == "a file of the user's"


def test_plain_progress_lines_report_rate_elapsed_and_time_left():
    lines, now = [], [100.0]

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

        def isatty(self):
            return False

    progress = Progress(1000, unit="frame", file=Sink(), every_s=60, clock=lambda: now[0])
    progress.update(100, updates=0)          # at t=0: no line yet
    now[0] += 59
    progress.update(100, updates=10)         # 59 s: still none
    now[0] += 1
    progress.update(100, updates=30)         # 60 s: 300 of 1000 frames, 30 updates in 60 s
    text = "".join(lines).strip().splitlines()
    assert text == ["progress: frame 300/1000 (30.0%) | 0.50 updates/s | elapsed 0:01:00 | ETA 0:02:20"]
    now[0] += 120
    progress.update(100, updates=90)         # 60 updates in the last 120 s; 400 frames in 180 s
    assert "".join(lines).strip().splitlines()[-1] == \
        "progress: frame 400/1000 (40.0%) | 0.50 updates/s | elapsed 0:03:00 | ETA 0:04:30"
    assert Progress(1000, enabled=False, file=Sink(), every_s=0).every_s is None  # progress=false: silent


def test_thread_share_for_one_and_two_runs():
    assert [share_of_cores(2, runs) for runs in (1, 2, 3)] == [2, 1, 1]
    assert [share_of_cores(16, runs) for runs in (1, 2, 3, 4)] == [16, 8, 5, 4]
    assert ThreadShare(threads=3).wanted() == 3
    assert ThreadShare(concurrent_runs=1).wanted() == usable_cores()
    assert ThreadShare(concurrent_runs=2).wanted() == max(1, usable_cores() // 2)


def test_runs_on_one_machine_find_each_other(tmp_path):
    folder = tmp_path / "registry"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    try:
        folder.mkdir()
        (folder / str(other.pid)).touch()
        (folder / str(finished.pid)).touch()  # a run that died without removing its file
        share = ThreadShare(folder=folder)    # counts itself beside the live run
        assert share.runs == 2 and share.count == share_of_cores(usable_cores(), 2)
        assert not (folder / str(finished.pid)).exists()
        assert not (folder / str(os.getpid())).exists()
        share.register()                      # training: now the others count this process
        assert (folder / str(os.getpid())).exists() and len(live_runs(folder)) == 2 and share.runs == 2
        other.kill()
        other.wait()
        assert share.rebalance() == usable_cores()  # alone again: the whole machine
        share.close()
        assert live_runs(folder) == {}
    finally:
        other.kill()


def test_auto_runs_leave_runs_with_fixed_threads_their_threads(tmp_path):
    """A grid's cells run with threads=1: a threads=auto run beside them takes only what is left."""
    folder = tmp_path / "registry"
    cells = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        fixed = ThreadShare(threads=1, folder=folder)
        fixed.register()  # a cell registers its pid, holding its thread count
        assert (folder / str(os.getpid())).read_text() == "1"
        fixed.close()
        folder.mkdir(exist_ok=True)
        for cell in cells:
            (folder / str(cell.pid)).write_text("1")
        assert live_runs(folder) == {cells[0].pid: 1, cells[1].pid: 1}
        share = ThreadShare(folder=folder)
        cores = usable_cores()
        assert share.count == max(1, cores - 2) and share.runs == 3  # 2 cores: 1 thread, not 2
        assert "2 thread(s) set by the others" in share.describe()
        cells[0].kill()
        cells[0].wait()
        assert share.rebalance() == max(1, cores - 1)
    finally:
        for cell in cells:
            cell.kill()


@pytest.mark.parametrize("key, value", [("threads", 0), ("threads", "many"), ("concurrent_runs", -1)])
def test_bad_thread_settings_are_one_line(key, value):
    from utils.errors import UserError
    with pytest.raises(UserError, match=rf"^{key}={value!r} is not valid; valid: auto or a positive whole number$"):
        ThreadShare(**{key: value})
