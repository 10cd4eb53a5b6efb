"""collect.py and offline_train.py end to end (subprocesses, real walker physics, tiny networks)."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import envs
from conftest import REPO, TINY, compose_config
from test_exorl import rollout, write_npz
from utils.runner import build_agent
from utils.snapshot import save_snapshot

CONSOLE_TRAIN = re.compile(
    r"^\| train \| F: \d+ \| S: \d+ \| E: \d+ \| L: \d+ \| R: -?\d+\.\d{4} \| FPS: \d+\.\d{4} \| T: \d+:\d\d:\d\d$")
CONSOLE_EVAL = re.compile(r"^\| eval \| F: \d+ \| S: \d+ \| E: \d+ \| L: \d+ \| R: -?\d+\.\d{4} \| T: \d+:\d\d:\d\d$")
# Offline lines: updates only (S), no frames, episodes or returns (nothing is made up for them).
OFFLINE_TRAIN = re.compile(r"^\| train \| S: \d+ \| T: \d+:\d\d:\d\d \| updates_per_s: \d+\.\d{4}$")
OFFLINE_EVAL = re.compile(r"^\| eval \| S: \d+ \| T: \d+:\d\d:\d\d$")
SEED_COMMAND = ["configs=dmc_states", "agent=choreo", "dataset=exorl", "collection_method=rnd", "domain=walker",
                "seed=1"]
SMALL = ["preset=cpu", "batch_size=4", "batch_length=16", "imag_starts=32", "num_train_updates=30",
         "snapshots=[20,30]", "log_every_updates=10", "eval_every_updates=10"]


def run(script: str, args: list[str], cwd, timeout: int = 600, run_name: str | None = None
        ) -> subprocess.CompletedProcess:
    run_dir = cwd / (run_name or f"run_{script[:-3]}")
    return subprocess.run([sys.executable, str(REPO / script), *args, f"hydra.run.dir={run_dir}"],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def tensors(tree, prefix=""):
    """Every tensor of a nested state dict, by dotted path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {path: t for key, value in items for path, t in tensors(value, f"{prefix}.{key}").items()}


def check_episode_file(path, length=1000):
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    rows = length + 1
    assert arrays["observation"].shape == (rows, 24) and arrays["observation"].dtype == np.float32
    assert arrays["action"].shape == (rows, 6) and arrays["action"].dtype == np.float32
    assert arrays["reward"].shape == (rows, 1) and arrays["reward"].dtype == np.float32
    assert arrays["discount"].shape == (rows, 1) and arrays["discount"].dtype == np.float32
    assert arrays["physics"].shape == (rows, 18) and arrays["physics"].dtype == np.float64
    assert not arrays["action"][0].any() and arrays["reward"][0, 0] == 0 and (arrays["discount"] == 1).all()
    assert np.abs(arrays["action"]).max() <= 1
    return arrays


def test_collect_then_offline_train_seed_command(tmp_path):
    result = run("collect.py", ["domain=walker", "episodes=2", "seed=3", f"out_dir={tmp_path}/data"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((tmp_path / "data" / "buffer").glob("*.npz"))
    assert [f.name for f in files] == ["episode_000000_1000.npz", "episode_000001_1000.npz"]
    arrays = check_episode_file(files[0])
    # The stored rewards are walker_stand's, recomputable from the stored physics states.
    env = envs.make("walker_stand", "states", 1, 0)
    np.testing.assert_array_equal(arrays["reward"][1:, 0],
                                  [np.float32(env.reward_from_physics(p)) for p in arrays["physics"][1:]])
    env.close()
    again = run("collect.py", ["domain=walker", "episodes=1", f"out_dir={tmp_path}/data"], tmp_path)
    assert again.returncode != 0 and "already holds 2 episode file(s)" in again.stderr.strip().splitlines()[-1]

    result = run("offline_train.py", SEED_COMMAND + SMALL + [f"dataset_dir={tmp_path}/data/buffer"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    train_lines = [line for line in result.stdout.splitlines() if line.startswith("| train")]
    eval_lines = [line for line in result.stdout.splitlines() if line.startswith("| eval")]
    assert len(train_lines) == 3 and all(OFFLINE_TRAIN.match(line) for line in train_lines), result.stdout
    assert train_lines[0].startswith("| train | S: 10 | T: ")
    assert train_lines[-1].startswith("| train | S: 30 |")
    assert len(eval_lines) == 4 and all(OFFLINE_EVAL.match(line) for line in eval_lines), result.stdout

    folder = tmp_path / "offline_models" / "exorl" / "rnd" / "walker" / "choreo" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["snapshot_20.pt", "snapshot_30.pt"]
    payload = torch.load(folder / "snapshot_20.pt", weights_only=True)
    assert payload["updates"] == 20 and payload["action_repeat"] == 1 and payload["obs_type"] == "states"
    assert (payload["dataset"], payload["collection_method"], payload["domain"], payload["task"]) == \
        ("exorl", "rnd", "walker", "walker_stand")
    cfg = OmegaConf.create(payload["config"])
    agent = build_agent(cfg, (24,), 6, torch.device("cpu"))
    agent.load_snapshot_state(payload["agent"])
    final = torch.load(folder / "snapshot_30.pt", weights_only=True)
    assert final["updates"] == 30
    modules, earlier = tensors(final["agent"]["modules"]), tensors(payload["agent"]["modules"])
    assert any(not torch.equal(value, earlier[key]) for key, value in modules.items())  # training went on

    run_dir = tmp_path / "run_offline_train"
    train = read_csv(run_dir / "train.csv")
    assert [row["step"] for row in train] == ["10", "20", "30"]
    assert {"model_loss", "skill_actor_loss", "rec_loss", "updates_per_s"} <= set(train[0])
    assert not {"frame", "fps", "episode", "episode_reward", "episode_length"} & set(train[0])
    assert "lbs_loss" not in train[0] and "actor_loss" not in train[0]  # no exploration offline
    evals = read_csv(run_dir / "eval.csv")
    assert [row["step"] for row in evals] == ["0", "10", "20", "30"]
    for key in ("model_loss", "observation_loss", "kl_loss", "reward_loss"):
        assert all(np.isfinite(float(row[key])) for row in evals)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))

    # The seed's fine-tuning command picks the offline snapshot up (snapshot_ts counted in updates).
    result = run("finetune.py", ["configs=dmc_states", "agent=choreo", "task=walker_run", "from_offline=True",
                                 "dataset=exorl", "collection_method=rnd", "snapshot_ts=30", "seed=1",
                                 "preset=cpu", "batch_size=4", "batch_length=16", "imag_starts=32",
                                 "num_train_frames=1100", "num_seed_frames=1000", "eval_every_frames=1000",
                                 "num_eval_episodes=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning" not in result.stdout
    assert any(CONSOLE_EVAL.match(line) for line in result.stdout.splitlines()), result.stdout
    finetuned = torch.load(tmp_path / "run_finetune" / "finetuned_snapshot.pt", weights_only=True)
    assert finetuned["agent"]["phase"] == "finetune" and finetuned["updates"] == 10


def test_offline_pixels_render_once_and_record_action_repeat_1(tmp_path):
    directory = tmp_path / "data" / "buffer"
    for index, seed in enumerate((0, 1)):
        write_npz(directory / f"episode_{index}_12.npz", rollout(steps=12, seed=seed))
    args = ["configs=dmc_pixels", "domain=walker", "dataset=ours", "collection_method=random", *TINY,
            "batch_length=8", "num_train_updates=2", "snapshots=[2]", "log_every_updates=1", "eval_every_updates=1",
            f"dataset_dir={directory}"]
    result = run("offline_train.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rendering 2 episode(s)" in result.stderr
    cache = sorted((tmp_path / "data" / "pixels_64").glob("*.npz"))
    assert [p.name for p in cache] == ["episode_0_12.npz", "episode_1_12.npz"]
    with np.load(cache[0]) as data:
        assert data["observation"].shape == (13, 3, 64, 64) and data["observation"].dtype == np.uint8
    payload = torch.load(tmp_path / "offline_models/ours/random/walker/choreo/1/snapshot_2.pt", weights_only=True)
    assert payload["action_repeat"] == 1 and payload["obs_type"] == "pixels" and payload["updates"] == 2
    # A second run (another seed, so another run folder) reads the cache instead of rendering again.
    result = run("offline_train.py", args + ["seed=2"], tmp_path, run_name="run_seed2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rendering" not in result.stderr


@pytest.mark.parametrize("agent_name", ["choreo", "lbs"])
def test_collect_with_a_pretraining_snapshot(tmp_path, agent_name):
    tiny = TINY if agent_name == "choreo" else [o for o in TINY if not o.startswith("agent.")]  # choreo's keys
    cfg = compose_config(tiny + ["configs=dmc_states", f"agent={agent_name}"], "pretrain")
    agent = build_agent(cfg, (24,), 6, torch.device("cpu"))
    payload = {"agent": agent.snapshot_state(), "obs_type": "states", "domain": "walker", "task": "walker_stand",
               "action_repeat": 2, "config": OmegaConf.to_container(cfg, resolve=True)}
    snapshot = save_snapshot(payload, tmp_path / "snapshot_100.pt")
    result = run("collect.py", ["episodes=1", f"snapshot={snapshot}", f"out_dir={tmp_path}/data"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = list((tmp_path / "data" / "buffer").glob("*.npz"))
    assert [f.name for f in files] == ["episode_000000_1000.npz"]
    assert f"of walker_stand ({agent_name}) to" in result.stdout  # the dataset is named after the agent that acted
    actions = check_episode_file(files[0])["action"][1:]
    # Action repeat 2 of the snapshot: each decision is held for two control steps.
    np.testing.assert_array_equal(actions[0::2], actions[1::2])
    assert not np.array_equal(actions[0], actions[2])

    wrong = run("collect.py", ["episodes=1", "domain=quadruped", f"snapshot={snapshot}",
                               f"out_dir={tmp_path}/other"], tmp_path)
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: snapshot") and "domain=walker" in wrong.stderr


@pytest.mark.parametrize("extra,expected", [
    (["dataset_dir=/nonexistent/exorl-x/buffer"], ["error: dataset folder /nonexistent/exorl-x/buffer does not exist",
                                                   "<prefix>_<index>_<length>.npz"]),
    (["on_bad_file=maybe"], ["error: on_bad_file='maybe'"]),
    (["holdout_fraction=1.5"], ["error: holdout_fraction=1.5"]),
])
def test_offline_train_errors_are_one_line(tmp_path, extra, expected):
    result = run("offline_train.py", SEED_COMMAND + ["preset=cpu", *extra], tmp_path, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in last, last


def test_offline_resume_continues_exactly(tmp_path):
    directory = tmp_path / "data" / "buffer"
    for index, seed in enumerate((0, 1, 2)):
        write_npz(directory / f"episode_{index}_30.npz", rollout(steps=30, seed=seed))
    common = ["domain=walker", *TINY, "batch_length=8", "snapshots=[4,6]", "log_every_updates=1",
              "eval_every_updates=2", "holdout_fraction=0.3", f"dataset_dir={directory}", "use_tb=false"]

    def train(run_dir, base, updates, prefetch):
        # The split run prefetches its batches, the straight one does not: the same weights either way.
        args = common + [f"num_train_updates={updates}", f"snapshot_base_dir={base}", f"hydra.run.dir={run_dir}",
                         f"prefetch_batches={prefetch}"]
        result = subprocess.run([sys.executable, str(REPO / "offline_train.py"), *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    train(tmp_path / "straight", tmp_path / "a", 6, "false")
    first = train(tmp_path / "split", tmp_path / "b", 4, "true")
    assert "snapshots [6] lie beyond num_train_updates=4" in first.stderr
    second = train(tmp_path / "split", tmp_path / "b", 6, "true")
    assert "resumed from" in second.stdout and "at update 4" in second.stdout
    straight = torch.load(tmp_path / "a/exorl/rnd/walker/choreo/1/snapshot_6.pt", weights_only=True)
    resumed = torch.load(tmp_path / "b/exorl/rnd/walker/choreo/1/snapshot_6.pt", weights_only=True)
    resumed_tensors = tensors(resumed["agent"])
    for key, value in tensors(straight["agent"]).items():
        assert torch.equal(value, resumed_tensors[key]), key
    for name in ("train.csv", "eval.csv"):
        rows_a, rows_b = read_csv(tmp_path / "straight" / name), read_csv(tmp_path / "split" / name)
        assert [row["step"] for row in rows_a] == [row["step"] for row in rows_b]
        for row_a, row_b in zip(rows_a, rows_b):
            assert row_a["model_loss"] == row_b["model_loss"], name
    assert [row["step"] for row in read_csv(tmp_path / "split" / "eval.csv")] == ["0", "2", "4", "6"]
    never = subprocess.run([sys.executable, str(REPO / "offline_train.py"), *common, "resume=never",
                            f"hydra.run.dir={tmp_path / 'split'}"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert never.returncode != 0 and "resume=never" in never.stderr.strip().splitlines()[-1]
