"""The Choreographer agent (docs/algorithm.md §1, §8, §10): world model, LBS exploration, VQ skills
and the skill-conditioned actor-critic, with ``act`` for the environment loop and ``update`` for one
training step on a replay batch.
"""
from __future__ import annotations

import numpy as np
import torch

from agent.actor_critic import ActorCritic, refresh_target
from agent.base import WorldModelAgent
from agent.exploration import LBSHead, particle_entropy_reward
from agent.meta_controller import MetaController
from agent.skills import SkillModule
from models.distributions import one_hot
from models.normalise import StreamNorm
from models.optim import Optimizer
from models.recompute import over_rows
from models.rssm import State


class ChoreoAgent(WorldModelAgent):
    """Choreographer: LBS exploration, VQ skills learned in imagination and, for fine-tuning, the
    meta-controller over the skills (the yaml's keys are this class's arguments)."""
    init_from_keys = ("wm.rssm.", "wm.encoder.", "wm.decoder.", "skill_module.encoder.", "skill_module.decoder.",
                      "skill_module.codebook", "skill_ac.actor.")

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, reward_norm: dict, actor_ent: float,
                 skill_dim: int, skill_reward_norm: dict, skill_actor_ent: float, code_dim: int,
                 code_resampling: bool, resample_every: int, update_skill_every_step: int, knn_k: int,
                 knn_clip: float, knn_chunk_elements: int, num_init_frames: int, freeze_skills: bool,
                 **shared):
        super().__init__(obs_shape, action_dim, **shared)
        self.skill_dim = skill_dim
        self.update_skill_every_step = update_skill_every_step
        self.knn_k, self.knn_clip, self.knn_chunk_elements = knn_k, knn_clip, knn_chunk_elements
        self.init_steps = num_init_frames // self.action_repeat
        self.freeze_skills = freeze_skills
        # Fine-tuning gate (docs/algorithm.md §8.3): random skills and no behaviour learning until a
        # training batch holds a reward above 1e-4. A tensor (saved with the agent), read on the host
        # only until it is set: then the host copy answers and updates no longer wait on the device.
        self.register_buffer("reward_seen", torch.zeros((), dtype=torch.bool))
        self._gate_open = False

        feat_dim, head = self.feat_dim, self.reward_head_cfg
        self._meta_args = dict(feat_dim=feat_dim, skill_dim=skill_dim, **self.ac_args)
        self.lbs = LBSHead(feat_dim, head["layers"], head["units"], head["norm"], self.model_opt_cfg)
        self.expl_ac = ActorCritic(feat_dim, action_dim, reward_norm=reward_norm, actor_ent=actor_ent, **self.ac_args)
        self.skill_module = SkillModule(self.wm.rssm.deter, skill_dim, code_dim, head["layers"], head["units"],
                                        "layer", self.ac_args["actor_opt"], code_resampling, resample_every)
        self.skill_ac = ActorCritic(feat_dim, action_dim, reward_norm=skill_reward_norm, actor_ent=skill_actor_ent,
                                    cond_dim=skill_dim, prefix="skill_", **self.ac_args)
        self.ready()

    # ----------------------------------------------------------------- optimisers and precision
    def optimizers(self) -> dict[str, Optimizer]:
        optimizers = {"model": self.wm.opt, "skill": self.skill_module.opt,
                      "skill_actor": self.skill_ac.actor_opt, "skill_critic": self.skill_ac.critic_opt}
        if self.is_ft:
            optimizers.update(self.meta.optimizers())
        else:
            optimizers.update(lbs=self.lbs.opt, actor=self.expl_ac.actor_opt, critic=self.expl_ac.critic_opt)
        return optimizers

    # --------------------------------------------------------------------------------- fine-tuning
    def finetune_mode(self) -> None:
        """Switch to the fine-tuning phase (docs/algorithm.md §8.1): the exploration behaviour and LBS
        head make way for the meta-controller, whose executor is the skill policy."""
        del self.expl_ac, self.lbs
        self.skill_ac.reward_norm = StreamNorm(momentum=1.0)
        self.meta = MetaController(executor=self.skill_ac.actor, train_executor=not self.freeze_skills,
                                   **self._meta_args)
        super().finetune_mode()

    # ----------------------------------------------------------------------------- skills (meta)
    def init_meta(self) -> np.ndarray:
        skill = np.zeros(self.skill_dim, dtype=np.float32)
        skill[self.rng.integers(self.skill_dim)] = 1.0
        return skill

    def update_meta(self, meta: np.ndarray, step: int) -> np.ndarray:
        return self.init_meta() if step % self.update_skill_every_step == 0 else meta

    # ------------------------------------------------------------------------------------ acting
    def policy(self, feat: torch.Tensor, meta: np.ndarray, step: int, eval_mode: bool):
        """Pre-training: the exploration actor. Fine-tuning: the skill policy on ``meta`` (a random
        skill) until ``num_init_frames`` have passed and a reward was seen, then on the skill the
        meta-controller picks at every step."""
        if not self.is_ft:
            return self.expl_ac.actor(feat)
        if self.adapting(step):
            selector = self.meta.selector(feat)
            skill = selector.mode() if eval_mode else selector.sample()
        else:
            skill = torch.as_tensor(meta, device=self.device).unsqueeze(0)
        return self.skill_ac.actor(torch.cat([feat, skill], -1))

    @torch.no_grad()
    def goal_latent(self, goal_observation: np.ndarray, steps: int) -> torch.Tensor:
        """Deterministic state (1, D) after seeing the goal observation ``steps`` times with zero
        actions: the first posterior step cannot depend on the observation, so one is not enough.
        The most likely latents are taken rather than samples, so the answer is repeatable."""
        state = None
        for i in range(max(1, steps)):
            latent, _ = self.observe({"observation": goal_observation, "is_first": i == 0}, state, sample=False)
            state = (latent, torch.zeros(1, self.action_dim, device=self.device))
        return latent["deter"]

    @torch.no_grad()
    def skill_for_goal(self, goal_observation: np.ndarray, goal_steps: int, mode: str, time_step: dict
                       ) -> np.ndarray:
        """One-hot skill for reaching a goal (docs/decisions.md D8). ``nearest``: the skill whose
        decoded code is nearest the goal's deterministic state; ``imagine``: the skill whose imagined
        rollout from the current observation ends nearest it."""
        goal = self.goal_latent(goal_observation, goal_steps)
        skills = torch.eye(self.skill_dim, device=self.device)
        if mode == "nearest":
            index = self.nearest_skill(goal)
        elif mode == "imagine":
            latent, _ = self.observe(time_step, None)
            start = {key: value.expand(self.skill_dim, *value.shape[1:]) for key, value in latent.items()}
            states, _ = self.skill_ac.imagine(self.wm.rssm, start, self.update_skill_every_step, cond=skills)
            reached = states["deter"][-1]
            index = int((reached - goal).norm(dim=-1).argmin())
        else:
            raise ValueError(f"unknown goal_skill '{mode}'; valid: nearest, imagine, none")
        meta = np.zeros(self.skill_dim, dtype=np.float32)
        meta[index] = 1.0
        return meta

    @torch.no_grad()
    def nearest_skill(self, deter: torch.Tensor) -> int:
        """Index of the skill whose decoded code is nearest the deterministic state ``deter`` (1, D)."""
        targets = self.skill_module.skill_target(torch.eye(self.skill_dim, device=self.device))
        return int((targets - deter).norm(dim=-1).argmin())

    def adapting(self, step: int) -> bool:
        """Whether the meta-controller drives the skills (fine-tuning, after the initial phase)."""
        return self.is_ft and step >= self.init_steps and self.gate_open()

    def gate_open(self) -> bool:
        if not self._gate_open:
            self._gate_open = bool(self.reward_seen)
        return self._gate_open

    # ---------------------------------------------------------------------------------- training
    def skill_reward(self, skill: torch.Tensor):
        def reward(states: State, _feat: torch.Tensor, _actions: torch.Tensor | None = None) -> torch.Tensor:
            deter = states["deter"]
            entropy = particle_entropy_reward(deter.reshape(-1, deter.shape[-1]).detach(), self.knn_k,
                                              self.knn_clip, self.knn_chunk_elements, fused=self.fast)
            return entropy.reshape(deter.shape[:-1]).to(deter.dtype) + self.skill_module.code_reward(skill, deter)
        return reward

    def random_skills(self, count: int) -> torch.Tensor:
        index = torch.randint(self.skill_dim, (count,), device=self.device)
        return one_hot(index, torch.empty(count, self.skill_dim, device=self.device))

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One training step: pre-training (docs/algorithm.md §10.2: world model, LBS head,
        exploration AC, VQ, skill AC) or, after ``finetune_mode``, fine-tuning."""
        if self.is_ft:
            return self.update_finetune(batch)
        post, kl, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        metrics.update(self.update_lbs(post, kl))
        metrics.update(self.update_exploration(start))
        metrics.update(self.update_skill_module(start))
        metrics.update(self.update_skill_behaviour(start))
        return metrics

    def update_finetune(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One fine-tuning step (docs/algorithm.md §10.2): world model, then the meta-controller once a
        reward was seen."""
        post, _, metrics = self.update_world_model(batch)
        if not self._gate_open:
            self.reward_seen |= (batch["reward"] > 1e-4).any()
        if self.gate_open():
            start = self.imagination_starts(post)
            metrics.update(self.stages.run("meta_controller", self._meta_step, start))
            refresh_target(self.meta)
        return metrics

    def _meta_step(self, start: State) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.meta.update_step(self.wm.rssm, start, self.imag_horizon, self.wm.reward_head)

    def update_offline(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One offline pre-training step (docs/algorithm.md §10.2): world model, VQ, skill AC; no
        exploration."""
        post, _, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        metrics.update(self.update_skill_module(start))
        metrics.update(self.update_skill_behaviour(start))
        return metrics

    # Each part is a stage: its tensor work (recorded as a CUDA graph where enabled), then the
    # host-side work that depends on update counts, run eagerly.
    def update_lbs(self, post: State, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.stages.run("lbs", self._lbs_step, post, kl))

    def _lbs_step(self, post: State, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.lbs.update(self.wm.rssm.feat(post).detach(), kl)

    def update_exploration(self, start: State) -> dict[str, torch.Tensor]:
        metrics = dict(self.stages.run("exploration", self._exploration_step, start))
        refresh_target(self.expl_ac)
        return metrics

    def _exploration_step(self, start: State) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.expl_ac.update_step(self.wm.rssm, start, self.imag_horizon, self.lbs_reward)

    def lbs_reward(self, _states: State, feat: torch.Tensor, _actions: torch.Tensor | None = None) -> torch.Tensor:
        return over_rows(self.lbs, feat, self.low_memory)

    def update_skill_module(self, start: State) -> dict[str, torch.Tensor]:
        metrics = self.stages.run("skill_module", self._skill_module_step, start["deter"])
        return {**metrics, **self.skill_module.after_update(start["deter"])}

    def _skill_module_step(self, deter: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.skill_module.update_step(deter)

    def update_skill_behaviour(self, start: State) -> dict[str, torch.Tensor]:
        metrics = dict(self.stages.run("skill_behaviour", self._skill_behaviour_step, start))
        refresh_target(self.skill_ac)
        return metrics

    def _skill_behaviour_step(self, start: State) -> dict[str, torch.Tensor]:
        skill = self.random_skills(start["deter"].shape[0])
        with self.autocast():
            return self.skill_ac.update_step(self.wm.rssm, start, self.imag_horizon, self.skill_reward(skill),
                                             cond=skill)

    # --------------------------------------------------------------------------------- snapshots
    def load_snapshot_state(self, state: dict) -> None:
        super().load_snapshot_state(state)
        self._gate_open = False
