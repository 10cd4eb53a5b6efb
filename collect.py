"""Collect a dataset in the ExORL layout (docs/algorithm.md §11.7) for offline_train.py.

    python collect.py domain=walker episodes=100                                  # uniform random actions
    python collect.py domain=walker episodes=100 snapshot=./pretrained_models/states/walker/choreo/1/snapshot_2000000.pt

Episodes are stepped at action repeat 1 in the states environment of the task (Jaco: ExORL's site
variant) and written atomically to ``<out_dir>/buffer/episode_<index>_<length>.npz`` with
observation float32, action float32, reward (T, 1) float32, discount (T, 1) float32 and physics
float64, row 0 being the reset step (zero action and reward). The stored physics states let
``offline_train.py configs=dmc_pixels`` render pixels later and ``relabel=true`` recompute rewards.
With ``snapshot=`` the exploration policy of a pre-training snapshot acts (sampled actions), every
``action_repeat`` control steps of its own config, on states or, for a pixel agent, on frames
rendered from the current physics state.
"""
from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from hydra.core.hydra_config import HydraConfig

from utils.errors import UserError, exit_with_one_line


def output_dir(cfg: DictConfig, method: str) -> Path:
    if cfg.get("out_dir"):
        return Path(hydra.utils.to_absolute_path(str(Path(str(cfg.out_dir)).expanduser())))
    from utils.exorl import default_dataset_dir
    return default_dataset_dir(cfg.dataset, cfg.domain, method).parent


class SnapshotPolicy:
    """The exploration agent of a pre-training snapshot, acting every ``action_repeat`` control steps."""

    def __init__(self, payload: dict, path: str, env, device):
        from utils.agents import agent_from_snapshot
        self.env = env
        self.pixels = payload["obs_type"] == "pixels"
        self.action_repeat = int(payload["action_repeat"])
        obs_shape = (3, 64, 64) if self.pixels else env.obs_shape
        try:
            self.agent = agent_from_snapshot(payload, path, obs_shape, env.action_dim, device)
        except UserError as error:
            raise UserError(f"{error} (the collection env has observations {obs_shape}, {env.action_dim} "
                            f"actions; Jaco collects ExORL's site variant)") from error
        self.step = 0

    def begin_episode(self) -> None:
        self.state, self.meta = None, self.agent.init_meta()

    def act(self, time_step: dict) -> np.ndarray:
        if self.pixels:
            time_step = dict(time_step, observation=self.env.render_physics(self.env.physics_state()))
        self.meta = self.agent.update_meta(self.meta, self.step)
        action, self.state = self.agent.act(time_step, self.meta, self.step, eval_mode=False, state=self.state)
        self.step += 1
        return action


class RandomPolicy:
    action_repeat = 1

    def __init__(self, action_dim: int, seed):
        self.action_dim, self.rng = action_dim, np.random.default_rng(seed)

    def begin_episode(self) -> None:
        pass

    def act(self, time_step: dict) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)


def run_episode(env, policy) -> dict[str, np.ndarray]:
    """One full episode at action repeat 1, in the ExORL row layout."""
    policy.begin_episode()
    time_step = env.reset()
    rows = [(time_step, env.physics_state())]
    action, control_step = None, 0
    while not time_step["is_last"]:
        if control_step % policy.action_repeat == 0:
            action = policy.act(time_step)
        time_step = env.step(action)
        rows.append((time_step, env.physics_state()))
        control_step += 1
    return {
        "observation": np.stack([ts["observation"] for ts, _ in rows]).astype(np.float32),
        "action": np.stack([ts["action"] for ts, _ in rows]).astype(np.float32),
        "reward": np.array([[ts["reward"]] for ts, _ in rows], dtype=np.float32),
        "discount": np.array([[ts["discount"]] for ts, _ in rows], dtype=np.float32),
        "physics": np.stack([physics for _, physics in rows]).astype(np.float64),
    }


def collect(cfg: DictConfig) -> Path:
    import envs
    from tqdm import tqdm

    from utils.device import resolve_device
    from utils.exorl import parse_episode_name, write_episode_file
    from utils.seeding import seed_everything

    episodes = cfg.episodes
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes <= 0:
        raise UserError(f"episodes={episodes!r} must be a positive integer")
    if cfg.domain not in envs.TASKS:
        raise UserError(f"unknown domain '{cfg.domain}'; valid domains: {', '.join(envs.TASKS)}")
    task = cfg.get("task") or envs.primal_task(cfg.domain)
    if task not in envs.TASKS[cfg.domain]:
        raise UserError(f"task={task} is not a {cfg.domain} task; valid: {', '.join(envs.TASKS[cfg.domain])}")
    payload = snapshot_path = None
    if cfg.get("snapshot"):
        from utils.agents import read_snapshot
        snapshot_path = hydra.utils.to_absolute_path(str(cfg.snapshot))
        payload = read_snapshot(snapshot_path, "a snapshot of this project")
        if payload.get("domain") not in (None, cfg.domain):
            raise UserError(f"snapshot {snapshot_path} was pre-trained on {payload['domain']}; "
                            f"set domain={payload['domain']}")
    method = cfg.get("collection_method") or (payload["config"]["agent"]["name"] if payload else "random")
    buffer = output_dir(cfg, method) / "buffer"
    existing = sorted(buffer.glob("*.npz")) if buffer.is_dir() else []
    first = 0
    if existing:
        if not cfg.append:
            raise UserError(f"{buffer} already holds {len(existing)} episode file(s); choose another out_dir "
                            f"or add append=true")
        indices = []
        for path in existing:
            try:
                indices.append(parse_episode_name(path)[0])
            except ValueError:
                pass
        first = max(indices, default=-1) + 1
    try:
        device = resolve_device(cfg.device)
    except ValueError as error:
        raise UserError(str(error)) from error
    seed_everything(cfg.seed + first)
    try:
        env = envs.make(task, "states", 1, cfg.seed + first, exorl=True)
    except ValueError as error:
        raise UserError(str(error)) from error
    if payload is not None:
        policy = SnapshotPolicy(payload, snapshot_path, env, device)
    else:
        policy = RandomPolicy(env.action_dim, [cfg.seed, first])
    transitions = 0
    for index in tqdm(range(first, first + episodes), desc=f"collecting {task} ({method})", unit="episode"):
        episode = run_episode(env, policy)
        length = len(episode["reward"]) - 1
        write_episode_file(buffer / f"episode_{index:06d}_{length}.npz", episode)
        transitions += length
    env.close()
    print(f"wrote {episodes} episode(s), {transitions} transitions, of {task} ({method}) to {buffer}", flush=True)
    return buffer


@hydra.main(config_path="configs", config_name="collect", version_base=None)
def main(cfg: DictConfig) -> None:
    exit_with_one_line(lambda: collect(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
