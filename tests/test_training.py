"""Training on real walker data: the world model learns, and pretrain.py runs end to end."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, batch_from_rollout, walker_rollout
from utils.runner import build_agent

CONSOLE_TRAIN = re.compile(
    r"^\| train \| F: \d+ \| S: \d+ \| E: \d+ \| L: \d+ \| R: -?\d+\.\d{4} \| FPS: \d+\.\d{4} \| T: \d+:\d\d:\d\d$")


def world_model_losses(cfg, batch, obs_shape, updates):
    """Model loss per update, less the constant part of the unit-variance Gaussian log-likelihoods
    (observation and reward), so the ratio measures what was learned."""
    constant = 0.5 * np.log(2 * np.pi) * (np.prod(obs_shape) + 1)
    torch.manual_seed(0)
    agent = build_agent(cfg, obs_shape, 6, torch.device("cpu"))
    losses = []
    for _ in range(updates):
        _, _, metrics = agent.update_world_model(batch)
        losses.append(float(metrics["model_loss"]) - constant)
    return losses


def test_world_model_loss_decreases_on_walker_states(tiny_config):
    batch = batch_from_rollout(walker_rollout("states", 200), batch_size=8, length=25)
    losses = world_model_losses(tiny_config("configs=dmc_states", "model_opt.lr=1e-3"), batch, (24,), 50)
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses


def test_world_model_loss_decreases_on_walker_pixels(tiny_config):
    batch = batch_from_rollout(walker_rollout("pixels", 40), batch_size=4, length=10)
    assert batch["observation"].dtype == torch.uint8 and batch["observation"].shape == (4, 10, 3, 64, 64)
    losses = world_model_losses(tiny_config("configs=dmc_pixels", "model_opt.lr=1e-3"), batch, (3, 64, 64), 50)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_pretrain_script_writes_snapshot_csv_and_console_line(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, str(REPO / "pretrain.py"), "configs=dmc_states", "agent=choreo", "domain=walker",
               "preset=cpu", "batch_size=4", "batch_length=16", "imag_starts=32", "num_train_frames=1200",
               "num_seed_frames=1000", "snapshots=[1200]", "log_every_frames=100", "use_wandb=false",
               f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("| train")]
    assert lines and all(CONSOLE_TRAIN.match(line) for line in lines), result.stdout
    assert lines[0].startswith("| train | F: 1000 | S: 1000 | E: 1 | L: 1000 |")
    snapshot = tmp_path / "pretrained_models" / "states" / "walker" / "choreo" / "1" / "snapshot_1200.pt"
    assert snapshot.is_file()
    payload = torch.load(snapshot, weights_only=True)
    assert payload["global_frame"] == 1200 and payload["updates"] == 20
    csv_text = (run_dir / "train.csv").read_text().splitlines()
    assert "episode_reward" in csv_text[0] and len(csv_text) == 2
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(list((run_dir / "buffer").glob("*_000000_1000.npz"))) == 1


def test_unknown_domain_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "pretrain.py"), "domain=cheetah", "preset=cpu",
                             f"hydra.run.dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "cheetah" in last and "walker" in last and "Traceback" not in result.stderr, result.stderr
