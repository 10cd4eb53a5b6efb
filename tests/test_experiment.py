"""experiment.py with the local launcher: a tiny real grid (2 agents x walker x 2 seeds, tiny networks,
1000 frames a stage) runs in order, is scored, is idempotent, survives being stopped, and refuses bad
input with one line. The Slurm launcher's tests are in test_slurm_grid.py."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from conftest import REPO

TINY_GRID = ["experiment=compare_cpu", "experiment.agents=[choreo,lbs]", "experiment.seeds=[1,2]",
             "experiment.pretrain.frames=1000", "experiment.finetune.frames=1000",
             "experiment.common.configs=dmc_states", "+experiment.common.num_seed_frames=500",
             "+experiment.common.batch_size=4", "+experiment.common.batch_length=16",
             "+experiment.common.imag_starts=32", "+experiment.common.rssm={deter: 32, hidden: 32, stoch: 4, discrete: 4}",
             "experiment.finetune.settings.eval_every_frames=500", "experiment.finetune.settings.num_eval_episodes=1",
             "experiment.score.resamples=100", "launcher.jobs=2", "launcher.threads=1"]


def experiment(out, *extra, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "experiment.py"), *TINY_GRID, f"out={out}", *extra],
                          cwd=out.parent, capture_output=True, text=True, timeout=kwargs.get("timeout", 900))


def cells_working_directories(out) -> set[str]:
    """Where each cell's script ran, as its Hydra record says (relative paths resolve there)."""
    return {OmegaConf.load(path).hydra.runtime.cwd for path in (out / "runs").glob("*/.hydra/hydra.yaml")}


def compose_grid(*extra):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(REPO / "configs" / "grid"), version_base=None):
        return compose("experiment", overrides=[*TINY_GRID, *extra])


def test_cells_are_the_grid_in_order():
    """4 pre-trainings, each followed by its fine-tuning; dreamer (needs the task reward) has none."""
    from utils.grid import cells
    grid = compose_grid("experiment.agents=[choreo,dreamer]", "experiment.domains=[walker,jaco]",
                        "experiment.tasks.walker=[walker_stand,walker_run]",
                        "+experiment.tasks.jaco=[jaco_reach_top_left]").experiment
    names = [cell.name for cell in cells(grid)]
    assert names == [
        "pt_choreo_walker_s1", "ft_choreo_walker_stand_s1", "ft_choreo_walker_run_s1",
        "pt_choreo_walker_s2", "ft_choreo_walker_stand_s2", "ft_choreo_walker_run_s2",
        "pt_choreo_jaco_s1", "ft_choreo_jaco_reach_top_left_s1", "pt_choreo_jaco_s2", "ft_choreo_jaco_reach_top_left_s2",
        "ft_dreamer_walker_stand_s1", "ft_dreamer_walker_run_s1", "ft_dreamer_walker_stand_s2",
        "ft_dreamer_walker_run_s2", "ft_dreamer_jaco_reach_top_left_s1", "ft_dreamer_jaco_reach_top_left_s2"]
    needs = {cell.name: cell.needs for cell in cells(grid)}
    assert needs["ft_choreo_jaco_reach_top_left_s2"] == "pt_choreo_jaco_s2" and needs["ft_dreamer_walker_run_s1"] is None
    # A domain without a task list fine-tunes on all of its tasks.
    everything = compose_grid("experiment.agents=[lbs]", "experiment.seeds=[1]", "experiment.domains=[quadruped]").experiment
    assert [cell.name for cell in cells(everything)] == ["pt_lbs_quadruped_s1"] + [
        f"ft_lbs_quadruped_{task}_s1" for task in ("walk", "run", "stand", "jump")]


def test_settings_become_the_scripts_overrides():
    from utils.grid import as_overrides
    settings = OmegaConf.create({"preset": "cpu", "rssm": {"deter": 32}, "eval_goals": True, "goals_file": None,
                                 "snapshots": [1, 2]})
    assert as_overrides(settings) == ["preset=cpu", "rssm.deter=32", "eval_goals=true", "goals_file=null",
                                      "snapshots=[1,2]"]


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "tiny"
    result = experiment(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_a_local_grid_runs_each_fine_tuning_after_its_pre_training_and_scores_every_cell(finished_grid):
    out, result = finished_grid
    statuses = {path.parent.name: json.loads(path.read_text()) for path in (out / "runs").glob("*/status.json")}
    assert sorted(statuses) == sorted(f"{stage}_{agent}_{where}_s{seed}" for agent in ("choreo", "lbs")
                                      for seed in (1, 2) for stage, where in (("pt", "walker"), ("ft", "walker_stand")))
    for name, status in statuses.items():
        assert status["state"] == "done" and status["done"] == status["target"], (name, status)
        if name.startswith("ft_"):
            pretraining = statuses[name.replace("ft_", "pt_").replace("walker_stand", "walker")]
            assert status["started"] >= pretraining["ended"], name
    assert max(len([s for s in statuses.values() if s["started"] <= t < s["ended"]])
               for t in (s["started"] + 0.5 for s in statuses.values())) <= 2  # launcher.jobs=2
    assert cells_working_directories(out) == {str(out.parent)}  # where experiment.py ran
    results = (out / "results.md").read_text()
    for agent in ("choreo", "lbs"):
        assert f"| {agent} | walker_stand | 2 |" in results, results
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("table,agent,group,metric,value,low,high,runs")
    assert any(row.startswith("probability_of_improvement,choreo,lbs,") for row in rows)
    assert (out / "profile.png").stat().st_size > 1000 and (out / "curves.png").stat().st_size > 1000


def test_rerunning_a_finished_grid_launches_nothing_and_status_lists_every_cell(finished_grid):
    out, _ = finished_grid
    rerun = experiment(out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "every cell is done; nothing to run" in rerun.stdout and "started:" not in rerun.stdout
    status = experiment(out, "action=status")
    assert status.returncode == 0, status.stderr[-2000:]
    lines = status.stdout.splitlines()
    assert lines[0].endswith("8 cells (8 done)")
    assert sum(" done " in line for line in lines[1:-1]) == 8
    assert lines[-1].startswith("CPU-hours spent: ")


def test_status_estimates_each_cells_time_left_from_finished_cells_of_its_agent_and_stage(tmp_path):
    """A hand-worked grid folder: status.json as runs write them, the running cells' locks held."""
    table = grid_status(tmp_path / "grid", {  # name: (state, frames done, seconds)
        "pt_choreo_walker_s1": ("done", 1000, 600.0), "pt_choreo_walker_s2": ("running", 250, 30.0),
        "pt_lbs_walker_s1": ("running", 500, 100.0), "ft_choreo_walker_stand_s1": ("done", 1010, 300.0),
        "ft_choreo_walker_stand_s2": ("running", 900, 400.0)})
    rows = {line.split()[0]: line for line in table.splitlines()[1:-1]}
    # Seed frames run fast, so a finished sibling's time beats the cell's own pace early on:
    # 600 s - 30 s = 570 s, not 750 frames x 30/250 s = 90 s.
    assert rows["pt_choreo_walker_s2"].endswith("frame 250/1000, ETA 0:09:30")
    assert rows["pt_lbs_walker_s1"].endswith("frame 500/1000, ETA 0:01:40")  # no finished lbs: its own pace
    # Slower than its sibling (400 s > 300 s): its own pace, 110 x 400/900 = 48.9 s.
    assert rows["ft_choreo_walker_stand_s2"].endswith("frame 900/1010, ETA 0:00:48")
    # Not started: pt_lbs_walker_s2 at the finished pre-trainings' 0.6 s/frame (600 s), each lbs
    # fine-tuning at 300/1010 s/frame (300 s); with the running cells 570 + 100 + 48.9 + 600 + 2 x 300.
    assert table.splitlines()[-1] == f"CPU-hours spent: {1430 / 3600:.2f}; left: {1918.9 / 3600:.2f}"

    # No fine-tuning finished yet: the running one's pace (200 s for 505 of 1010 frames) sizes the
    # others, 400 s each; pt_choreo_walker_s2 takes its sibling's 600 s, lbs pre-trainings 0.6 s/frame.
    table = grid_status(tmp_path / "early", {"pt_choreo_walker_s1": ("done", 1000, 600.0),
                                             "ft_choreo_walker_stand_s1": ("running", 505, 200.0)})
    assert table.splitlines()[-1] == f"CPU-hours spent: {800 / 3600:.2f}; left: {(200 + 3 * 600 + 3 * 400) / 3600:.2f}"


def grid_status(out, cells: dict[str, tuple[str, int, float]]) -> str:
    """The tiny grid's status table over run folders whose status.json says ``cells`` (state, frames
    done, seconds; targets 1000 for a pre-training, 1010 for a fine-tuning), running ones locked."""
    from contextlib import ExitStack

    from utils.grid import status_table
    from utils.lifecycle import RunLock, RunStatus
    with ExitStack() as locks:
        for name, (state, done, seconds) in cells.items():
            status = RunStatus(out / "runs" / name, 1000 if name.startswith("pt_") else 1010, "frames")
            status.progress(done, seconds, force=True)
            if state == "done":
                status.end("done")
            else:
                locks.enter_context(RunLock(out / "runs" / name))
        return status_table(out, compose_grid().experiment)


def test_a_zero_shot_grid_scores_the_success_rates_its_runs_logged(tmp_path):
    """The zero_shot_jaco preset, tiny: each pre-training's snapshot evaluated once at the start with
    eval_goals=True; the zero-shot table is the mean over seeds of the rates in the runs' eval.csv."""
    tiny = [arg for arg in TINY_GRID if arg.startswith(("+experiment.common.", "experiment.score.", "launcher."))]
    out = tmp_path / "zero_shot"
    command = [sys.executable, str(REPO / "experiment.py"), "experiment=zero_shot_jaco", *tiny,
               "experiment.common.configs=dmc_states", "experiment.tasks.jaco=[jaco_reach_top_left]",
               "experiment.seeds=[1,2]", "experiment.pretrain.frames=1000",
               "experiment.finetune.settings.num_eval_episodes=3", f"out={out}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    def scored():
        return {row["metric"]: row for row in csv.DictReader((out / "results.csv").open())
                if row["table"] == "zero_shot" and row["group"] == "jaco_reach_top_left"}

    logged = {}
    for seed in (1, 2):
        rows = list(csv.DictReader((out / "runs" / f"ft_choreo_jaco_reach_top_left_s{seed}" / "eval.csv").open()))
        assert len(rows) == 1 and rows[0]["frame"] == "0"  # one evaluation, before any fine-tuning
        for metric in ("success_rate", "goal_success_rate"):
            logged.setdefault(metric, []).append(float(rows[0][metric]))
    assert scored().keys() == {"success_rate", "goal_success_rate"}
    for metric, values in logged.items():
        assert float(scored()[metric]["value"]) == pytest.approx(sum(values) / 2) and scored()[metric]["runs"] == "2"
    assert "Zero-shot goal reaching" in (out / "results.md").read_text()

    # Tiny agents rarely succeed: score again with distinct rates written into the runs' logs.
    rates = {1: {"success_rate": 0.2, "goal_success_rate": 0.5}, 2: {"success_rate": 0.6, "goal_success_rate": 1.0}}
    for seed, values in rates.items():
        path = out / "runs" / f"ft_choreo_jaco_reach_top_left_s{seed}" / "eval.csv"
        (row,) = list(csv.DictReader(path.open()))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row | {key: str(value) for key, value in values.items()})
    again = subprocess.run(command + ["action=score"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for metric, expected in (("success_rate", 0.4), ("goal_success_rate", 0.75)):
        row = scored()[metric]
        assert float(row["value"]) == pytest.approx(expected), row
        # The bootstrap over the two seeds' rates: the interval lies between them and holds the mean.
        low, high = rates[1][metric], rates[2][metric]
        assert low <= float(row["low"]) <= expected <= float(row["high"]) <= high, row


def test_a_stopped_local_grid_continues_where_it_stopped(tmp_path):
    """SIGTERM to the grid reaches the running cells, which write their checkpoints; the rerun
    continues them (their logs say so) and finishes the grid."""
    out = tmp_path / "grid"
    longer = ["experiment.pretrain.frames=3000", "experiment.agents=[choreo]"]  # stopped after its first episode
    process = subprocess.Popen([sys.executable, str(REPO / "experiment.py"), *TINY_GRID, f"out={out}",
                                "launcher.jobs=1", *longer], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    status = out / "runs" / "pt_choreo_walker_s1" / "status.json"
    first_episode = out / "runs" / "pt_choreo_walker_s1" / "train.csv"
    deadline = time.time() + 300
    while not (first_episode.exists() and len(first_episode.read_text().splitlines()) >= 2) and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("grid stopped by SIGTERM"), stderr
    assert json.loads(status.read_text())["state"] == "stopped"
    rerun = experiment(out, *longer)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resumed from" in (out / "logs" / "pt_choreo_walker_s1.log").read_text()
    assert all(json.loads(path.read_text())["state"] == "done" for path in (out / "runs").glob("*/status.json"))
    assert len(list((out / "runs").glob("*/status.json"))) == 4


def test_a_failing_cell_is_reported_and_its_fine_tunings_skipped(tmp_path):
    out = tmp_path / "grid"
    result = experiment(out, "experiment.agents=[choreo]", "experiment.seeds=[1]",
                        "+experiment.pretrain.settings.checkpoint_every_min=-1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: 1 cell(s) failed, 1 skipped for it (their logs: {out / 'logs'}); rerun the command to retry them"
    ], result.stderr
    assert "skipped: ft_choreo_walker_stand_s1 (its pre-training pt_choreo_walker_s1 failed)" in result.stdout
    status = experiment(out, "experiment.agents=[choreo]", "experiment.seeds=[1]", "action=status")
    line = next(line for line in status.stdout.splitlines() if "pt_choreo_walker_s1" in line)
    assert "failed" in line and "checkpoint_every_min=-1 must be a number >= 0" in line, status.stdout


@pytest.mark.parametrize("override, message", [
    ("experiment.agents=[choreo,sac]", "experiment.agents: unknown agent 'sac'; valid: aps, apt, choreo, diayn"),
    ("experiment.domains=[cheetah]", "experiment.domains: unknown domain 'cheetah'; valid: walker"),
    ("experiment.tasks.walker=[walker_jog]", "experiment.tasks.walker: unknown task 'walker_jog'; valid: walker_stand"),
    ("experiment=urlb", "experiment=urlb names no file configs/grid/experiment/urlb.yaml; valid: compare_cpu"),
    ("launcher=pbs", "launcher=pbs names no file configs/grid/launcher/pbs.yaml; valid: local, slurm"),
    ("experiment.sedes=[1]", "experiment.sedes is not a setting of this script; did you mean experiment.seeds?"),
    ("launcher.jobs=0", "launcher.jobs=0 must be a positive integer"),
    ("action=watch", "action='watch' is not valid; valid: run, status, score"),
])
def test_bad_grid_input_is_one_line_before_anything_runs(tmp_path, override, message):
    out = tmp_path / "grid"
    result = experiment(out, override, timeout=120)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert not (out / "runs").exists()


def test_slurm_launcher_without_sbatch_is_one_line(tmp_path):
    out = tmp_path / "grid"
    env = {"PATH": "/usr/bin/false-only", "HOME": str(tmp_path)}
    grid = [arg for arg in TINY_GRID if not arg.startswith("launcher.jobs")]  # a key of the local launcher only
    result = subprocess.run([sys.executable, str(REPO / "experiment.py"), *grid, f"out={out}", "launcher=slurm"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: launcher=slurm needs Slurm's sbatch, which is not on PATH; use launcher=local, or run on a machine "
        "with Slurm"], result.stderr
    assert not (out / "runs").exists() and not (out / "jobs.json").exists()
