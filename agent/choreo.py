"""The Choreographer agent (spec agent.md 1, 8, 10): world model, LBS exploration, VQ skills and
the skill-conditioned actor-critic, with ``act`` for the environment loop and ``update`` for one
training step on a replay batch.
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from agent.actor_critic import ActorCritic
from agent.exploration import LBSHead, particle_entropy_reward
from agent.skills import SkillModule
from agent.world_model import WorldModel, preprocess_obs
from models.optim import Optimizer, trainable
from models.rssm import State, flatten_state

LatentState = tuple[State, torch.Tensor]


class ChoreoAgent(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, device: torch.device, seed: int,
                 precision: int, world_model: dict, behaviour: dict, actor: dict, critic: dict, actor_opt: dict,
                 critic_opt: dict, reward_head: dict, model_opt: dict, imag_horizon: int, imag_starts: int | None,
                 reward_norm: dict, actor_ent: float, skill_dim: int, skill_reward_norm: dict,
                 skill_actor_ent: float, code_dim: int, code_resampling: bool, resample_every: int,
                 update_skill_every_step: int, knn_k: int, knn_clip: float, knn_chunk_elements: int,
                 **unused: Any):
        super().__init__()
        if precision not in (16, 32):
            raise ValueError(f"precision={precision} is not supported; valid: 32, 16")
        self.device = torch.device(device)
        self.precision = precision
        self.action_dim = action_dim
        self.imag_horizon = imag_horizon
        self.imag_starts = imag_starts
        self.skill_dim = skill_dim
        self.update_skill_every_step = update_skill_every_step
        self.knn_k, self.knn_clip, self.knn_chunk_elements = knn_k, knn_clip, knn_chunk_elements
        self.rng = np.random.default_rng(seed)

        self.wm = WorldModel(obs_shape, action_dim, reward_head=reward_head, model_opt=model_opt, **world_model)
        feat_dim = self.wm.rssm.feat_dim
        ac_common = dict(actor=actor, critic=critic, actor_opt=actor_opt, critic_opt=critic_opt, **behaviour)
        self.lbs = LBSHead(feat_dim, reward_head["layers"], reward_head["units"], reward_head["norm"], model_opt)
        self.expl_ac = ActorCritic(feat_dim, action_dim, reward_norm=reward_norm, actor_ent=actor_ent, **ac_common)
        self.skill_module = SkillModule(self.wm.rssm.deter, skill_dim, code_dim, reward_head["layers"],
                                        reward_head["units"], "layer", actor_opt, code_resampling, resample_every)
        self.skill_ac = ActorCritic(feat_dim, action_dim, reward_norm=skill_reward_norm, actor_ent=skill_actor_ent,
                                    cond_dim=skill_dim, prefix="skill_", **ac_common)
        self.to(self.device)
        # Every parameter stays frozen outside its own update (spec 8.3, last line).
        self.requires_grad_(False)

    # ----------------------------------------------------------------- optimisers and precision
    def optimizers(self) -> dict[str, Optimizer]:
        return {"model": self.wm.opt, "lbs": self.lbs.opt, "actor": self.expl_ac.actor_opt,
                "critic": self.expl_ac.critic_opt, "skill": self.skill_module.opt,
                "skill_actor": self.skill_ac.actor_opt, "skill_critic": self.skill_ac.critic_opt}

    def autocast(self):
        if self.precision == 16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----------------------------------------------------------------------------- skills (meta)
    def init_meta(self) -> np.ndarray:
        skill = np.zeros(self.skill_dim, dtype=np.float32)
        skill[self.rng.integers(self.skill_dim)] = 1.0
        return skill

    def update_meta(self, meta: np.ndarray, step: int) -> np.ndarray:
        return self.init_meta() if step % self.update_skill_every_step == 0 else meta

    # ------------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def observe(self, time_step: dict, state: LatentState | None) -> tuple[State, torch.Tensor]:
        """Posterior latent and feature after seeing ``time_step`` (batch of one)."""
        obs = torch.as_tensor(time_step["observation"], device=self.device).unsqueeze(0)
        if state is None:
            latent = self.wm.rssm.initial(1, self.device)
            prev_action = torch.zeros(1, self.action_dim, device=self.device)
        else:
            latent, prev_action = state
        is_first = torch.tensor([float(time_step["is_first"])], device=self.device)
        embed = self.wm.encoder(preprocess_obs(obs))
        latent, _ = self.wm.rssm.obs_step(latent, prev_action, embed, is_first)
        return latent, self.wm.rssm.feat(latent)

    @torch.no_grad()
    def act(self, time_step: dict, meta: np.ndarray, step: int, eval_mode: bool,
            state: LatentState | None) -> tuple[np.ndarray, LatentState]:
        """Exploration action for the pre-training phase: a sample, or the mean when evaluating."""
        latent, feat = self.observe(time_step, state)
        dist = self.expl_ac.actor(feat)
        action = dist.mode() if eval_mode else dist.sample()
        return action[0].cpu().numpy(), (latent, action)

    # ---------------------------------------------------------------------------------- training
    def update_world_model(self, batch: dict[str, torch.Tensor]) -> tuple[State, torch.Tensor, dict]:
        with trainable(self.wm):
            with self.autocast():
                loss, post, kl, metrics = self.wm.loss(batch)
            metrics.update(self.wm.opt(loss))
        return post, kl, metrics

    def imagination_starts(self, post: State) -> State:
        start = {key: value.detach() for key, value in flatten_state(post).items()}
        count = start["deter"].shape[0]
        if self.imag_starts and self.imag_starts < count:
            pick = torch.randperm(count, device=self.device)[: self.imag_starts]
            start = {key: value[pick] for key, value in start.items()}
        return start

    def skill_reward(self, skill: torch.Tensor):
        def reward(states: State, _feat: torch.Tensor) -> torch.Tensor:
            deter = states["deter"]
            entropy = particle_entropy_reward(deter.reshape(-1, deter.shape[-1]).detach(), self.knn_k,
                                              self.knn_clip, self.knn_chunk_elements)
            return entropy.reshape(deter.shape[:-1]).to(deter.dtype) + self.skill_module.code_reward(skill, deter)
        return reward

    def random_skills(self, count: int) -> torch.Tensor:
        index = torch.randint(self.skill_dim, (count,), device=self.device)
        return torch.nn.functional.one_hot(index, self.skill_dim).float()

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One pre-training step (spec 8.1): world model, LBS head, exploration AC, VQ, skill AC."""
        post, kl, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        metrics.update(self.update_lbs(post, kl))
        metrics.update(self.update_exploration(start))
        metrics.update(self.update_skill_module(start))
        metrics.update(self.update_skill_behaviour(start))
        return metrics

    def update_offline(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One offline pre-training step (spec 8.2): world model, VQ, skill AC; no exploration."""
        post, _, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        metrics.update(self.update_skill_module(start))
        metrics.update(self.update_skill_behaviour(start))
        return metrics

    def update_lbs(self, post: State, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.lbs.update(self.wm.rssm.feat(post).detach(), kl)

    def update_exploration(self, start: State) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.expl_ac.update(self.wm.rssm, start, self.imag_horizon,
                                       lambda _states, imagined_feat: self.lbs(imagined_feat))

    def update_skill_module(self, start: State) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.skill_module.update(start["deter"])

    def update_skill_behaviour(self, start: State) -> dict[str, torch.Tensor]:
        skill = self.random_skills(start["deter"].shape[0])
        with self.autocast():
            return self.skill_ac.update(self.wm.rssm, start, self.imag_horizon, self.skill_reward(skill), cond=skill)

    # --------------------------------------------------------------------------------- snapshots
    def snapshot_state(self) -> dict:
        return {"modules": self.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
                "rng": self.rng.bit_generator.state}

    def load_snapshot_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        self.rng.bit_generator.state = state["rng"]
        self.requires_grad_(False)
