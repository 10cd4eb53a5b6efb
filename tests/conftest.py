"""Shared fixtures: tiny configs composed from the real Hydra files, and real walker data."""
from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_sessionstart(session):
    """Every test imports the environments, which render through EGL here: without the library, say
    so once instead of failing each test deep inside dm_control."""
    if os.environ["MUJOCO_GL"] == "egl" and ctypes.util.find_library("EGL") is None:
        pytest.exit("libEGL is not installed: the tests render headless through EGL (MUJOCO_GL=egl). "
                    "Run `bash scripts/setup.sh` (or apt-get install libegl1 libgl1-mesa-dri)", returncode=4)

TINY = ["preset=cpu", "batch_size=4", "batch_length=16", "imag_horizon=3", "imag_starts=32",
        "rssm.deter=32", "rssm.hidden=32", "rssm.stoch=4", "rssm.discrete=4", "reward_head.units=32",
        "actor.units=32", "critic.units=32", "encoder.mlp_units=32", "decoder.mlp_units=32",
        "encoder.cnn_depth=4", "decoder.cnn_depth=4", "agent.skill_dim=4", "agent.code_dim=2", "agent.knn_k=5"]


def compose_config(overrides: list[str], config_name: str = "pretrain"):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name, overrides=overrides)


@pytest.fixture
def tiny_config():
    return lambda *extra: compose_config(TINY + list(extra))


def walker_rollout(obs_type: str, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``steps + 1`` rows of real walker_stand data under uniform random actions (row 0 = reset)."""
    import envs
    env = envs.make("walker_stand", obs_type, action_repeat=2 if obs_type == "pixels" else 1, seed=seed)
    rng = np.random.default_rng(seed)
    rows = [env.reset()]
    for _ in range(steps):
        rows.append(env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32)))
    env.close()
    return {
        "observation": np.stack([r["observation"] for r in rows]),
        "action": np.stack([r["action"] for r in rows]).astype(np.float32),
        "reward": np.array([[r["reward"]] for r in rows], dtype=np.float32),
        "discount": np.array([[r["discount"]] for r in rows], dtype=np.float32),
    }


def batch_from_rollout(rollout: dict[str, np.ndarray], batch_size: int, length: int) -> dict[str, torch.Tensor]:
    """Consecutive non-overlapping windows of the rollout as a training batch (B, L, ...)."""
    batch = {key: torch.as_tensor(np.stack([value[i * length:(i + 1) * length] for i in range(batch_size)]))
             for key, value in rollout.items()}
    batch["is_first"] = torch.zeros(batch_size, length, dtype=torch.bool)
    batch["is_first"][:, 0] = True
    batch["is_terminal"] = batch["discount"] == 0
    return batch


def synthetic_batch(seed: int, batch: int, length: int, obs_dim: int = 24, action_dim: int = 6) -> dict[str, torch.Tensor]:
    """A seeded batch of random state observations, actions in [-1, 1) and rewards in [0, 1); every
    window starts an episode."""
    gen = torch.Generator().manual_seed(seed)
    data = {
        "observation": torch.randn(batch, length, obs_dim, generator=gen),
        "action": torch.rand(batch, length, action_dim, generator=gen) * 2 - 1,
        "reward": torch.rand(batch, length, 1, generator=gen),
        "discount": torch.ones(batch, length, 1),
        "is_first": torch.zeros(batch, length, dtype=torch.bool),
        "is_terminal": torch.zeros(batch, length, dtype=torch.bool),
    }
    data["is_first"][:, 0] = True
    return data
