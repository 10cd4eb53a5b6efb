"""The training loop shared by the scripts (spec agent.md 11; decisions 17, 18).

``build_run`` turns a config into parts (envs, agent, replay, logger); ``OnlineRunner`` runs the
environment loop: seed phase, act, store, one update every ``train_every_actions`` frames, eval,
log, snapshots. Step = one agent decision; frame = step x action_repeat.
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra.utils
import numpy as np
from omegaconf import DictConfig, OmegaConf

import envs
from agent.choreo import ChoreoAgent
from utils.device import resolve_device
from utils.errors import UserError
from utils.logger import Logger
from utils.replay import EpisodeReplay
from utils.seeding import seed_everything
from utils.snapshot import save_snapshot


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_agent(cfg: DictConfig, obs_shape: tuple[int, ...], action_dim: int, device) -> ChoreoAgent:
    agent_cfg = plain(cfg.agent)
    world_model = dict(encoder=plain(cfg.encoder), decoder=plain(cfg.decoder), rssm=plain(cfg.rssm),
                       kl=plain(cfg.kl), loss_scales=plain(cfg.loss_scales), grad_heads=agent_cfg["grad_heads"],
                       clip_rewards=cfg.clip_rewards)
    behaviour = dict(discount=cfg.discount, discount_lambda=cfg.discount_lambda, slow_target=cfg.slow_target,
                     slow_target_update=cfg.slow_target_update, slow_target_fraction=cfg.slow_target_fraction)
    return ChoreoAgent(obs_shape, action_dim, device=device, seed=cfg.seed, precision=cfg.precision,
                       world_model=world_model, behaviour=behaviour, actor=plain(cfg.actor), critic=plain(cfg.critic),
                       actor_opt=plain(cfg.actor_opt), critic_opt=plain(cfg.critic_opt),
                       reward_head=plain(cfg.reward_head), model_opt=plain(cfg.model_opt),
                       imag_horizon=cfg.imag_horizon, imag_starts=cfg.imag_starts, **agent_cfg)


def make_env(task: str, cfg: DictConfig, **kwargs):
    try:
        return envs.make(task, cfg.obs_type, cfg.action_repeat, cfg.seed, **kwargs)
    except ValueError as error:
        raise UserError(str(error)) from error


def resolve_task(cfg: DictConfig) -> str:
    if cfg.get("task"):
        return cfg.task
    if cfg.domain not in envs.TASKS:
        raise UserError(f"unknown domain '{cfg.domain}'; valid domains: {', '.join(envs.TASKS)}")
    return envs.primal_task(cfg.domain)


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail later, deep inside the loop, with one line each."""
    positive = ["num_train_frames", "batch_size", "batch_length", "imag_horizon", "action_repeat",
                "train_every_actions", "log_every_frames", "eval_every_frames"]
    for key in positive:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
            raise UserError(f"{key}={value!r} must be a positive number")
    if cfg.get("num_seed_frames", 0) < 0:
        raise UserError(f"num_seed_frames={cfg.num_seed_frames!r} must be >= 0")
    if cfg.obs_type not in envs.OBS_TYPES:
        raise UserError(f"unknown obs_type '{cfg.obs_type}'; valid: {', '.join(envs.OBS_TYPES)}")
    if cfg.precision not in (16, 32):
        raise UserError(f"precision={cfg.precision!r} is not supported; valid: 32, 16")
    if cfg.batch_length < 2:
        raise UserError(f"batch_length={cfg.batch_length} must be at least 2")


class OnlineRunner:
    """Environment loop for pre-training (and, with another agent phase, fine-tuning)."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        check_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        self.task = resolve_task(cfg)
        self.train_env = make_env(self.task, cfg)
        self.eval_env = make_env(self.task, cfg)
        env = self.train_env
        self.agent = build_agent(cfg, env.obs_shape, env.action_dim, self.device)
        self.replay = EpisodeReplay(self.run_dir / "buffer", cfg.replay.capacity, cfg.batch_size, cfg.batch_length,
                                    cfg.seed, self.device)
        wandb_kwargs = dict(project=f"{cfg.project_name}_pretrain", group=cfg.agent.name, config=plain(cfg),
                            name=f"{cfg.experiment}_{cfg.agent.name}_{self.task}_{cfg.obs_type}_{cfg.seed}")
        self.logger = Logger(self.run_dir, cfg.use_tb, cfg.use_wandb, wandb_kwargs)
        self.action_rng = np.random.default_rng(cfg.seed)
        self.snapshot_dir = Path(hydra.utils.to_absolute_path(cfg.snapshot_base_dir)) / cfg.obs_type / cfg.domain \
            / cfg.agent.name / str(cfg.seed)
        self.step = self.episode = self.updates = 0
        self.start_time = time.time()

    @property
    def frame(self) -> int:
        return self.step * self.cfg.action_repeat

    # ---------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        cfg, agent, env = self.cfg, self.agent, self.train_env
        repeat = cfg.action_repeat
        train_until = cfg.num_train_frames // repeat
        seed_until = cfg.num_seed_frames // repeat
        update_every = max(1, cfg.train_every_actions // repeat)
        eval_every = max(1, int(cfg.eval_every_frames) // repeat)
        log_every = max(1, cfg.log_every_frames // repeat)
        pending = sorted(int(s) for s in cfg.snapshots)
        pending = [s for s in pending if s > self.frame]

        time_step, state = env.reset(), None
        meta = agent.init_meta()
        self.replay.add(time_step)
        episode_reward, episode_step = 0.0, 0
        last_dump, metrics, log_due = time.time(), None, False
        while self.step < train_until:
            if time_step["is_last"]:
                self.episode += 1
                elapsed = time.time() - last_dump
                last_dump = time.time()
                self.logger.log_metrics({
                    "fps": episode_step * repeat / max(elapsed, 1e-9), "total_time": time.time() - self.start_time,
                    "episode_reward": episode_reward, "episode_length": episode_step * repeat,
                    "episode": self.episode, "buffer_size": len(self.replay), "step": self.step,
                }, self.frame, "train")
                self.logger.dump(self.frame, "train")
                time_step, state = env.reset(), None
                meta = agent.init_meta()
                self.replay.add(time_step)
                episode_reward, episode_step = 0.0, 0

            if self.step > 0 and self.step % eval_every == 0:
                self.evaluate()

            meta = agent.update_meta(meta, self.step)
            if self.step < seed_until:
                action = self.action_rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)
            else:
                action, state = agent.act(time_step, meta, self.step, eval_mode=False, state=state)

            log_due = log_due or self.step % log_every == 0
            if self.step >= seed_until and self.step % update_every == 0 and self.replay.can_sample():
                metrics = agent.update(self.replay.sample())
                self.updates += 1
                if log_due:
                    self.logger.log_metrics(metrics, self.frame, "train")
                    log_due = False

            time_step = env.step(action)
            episode_reward += time_step["reward"]
            episode_step += 1
            self.replay.add(time_step)
            self.step += 1
            while pending and self.frame >= pending[0]:
                self.save_snapshot(pending.pop(0))
        self.logger.close()

    def evaluate(self) -> None:
        cfg, agent, env = self.cfg, self.agent, self.eval_env
        total_reward, steps = 0.0, 0
        meta = agent.init_meta()
        for _ in range(cfg.num_eval_episodes):
            time_step, state = env.reset(), None
            while not time_step["is_last"]:
                action, state = agent.act(time_step, meta, self.step, eval_mode=True, state=state)
                time_step = env.step(action)
                total_reward += time_step["reward"]
                steps += 1
        episodes = max(1, cfg.num_eval_episodes)
        self.logger.log_metrics({
            "episode_reward": total_reward / episodes, "episode_length": steps * cfg.action_repeat / episodes,
            "episode": self.episode, "step": self.step, "total_time": time.time() - self.start_time,
        }, self.frame, "eval")
        self.logger.dump(self.frame, "eval")

    # ----------------------------------------------------------------------------------- snapshots
    def snapshot_payload(self) -> dict:
        cfg = self.cfg
        return {"agent": self.agent.snapshot_state(), "global_step": self.step, "global_episode": self.episode,
                "global_frame": self.frame, "updates": self.updates, "obs_type": cfg.obs_type,
                "domain": cfg.domain, "task": self.task, "action_repeat": cfg.action_repeat,
                "config": plain(cfg)}

    def save_snapshot(self, frame: int) -> Path:
        return save_snapshot(self.snapshot_payload(), self.snapshot_dir / f"snapshot_{frame}.pt")
