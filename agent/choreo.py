"""The Choreographer agent (docs/algorithm.md §1, §8, §10): the skill base (agent/skill_agent.py:
skills, the skill policy, the meta-controller for fine-tuning) with LBS exploration
(agent/exploration.py) and the VQ skill module (agent/skills.py), whose code reward plus the
particle entropy of the imagined states is the skill reward.
"""
from __future__ import annotations

import numpy as np
import torch

from agent.actor_critic import ActorCritic
from agent.exploration import LBSExploration, imagined_particle_entropy
from agent.skill_agent import SkillAgent
from agent.skills import SkillModule
from models.distributions import OneHotCategorical
from models.optim import Optimizer
from models.rssm import State


class ChoreoAgent(LBSExploration, SkillAgent):
    """Choreographer: LBS exploration, VQ skills learned in imagination and, for fine-tuning, the
    meta-controller over the skills (the yaml's keys are this class's and SkillAgent's arguments)."""
    init_from_keys = ("wm.rssm.", "wm.encoder.", "wm.decoder.", "skill_module.encoder.", "skill_module.decoder.",
                      "skill_module.codebook", "skill_ac.actor.")

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, reward_norm: dict, actor_ent: float,
                 code_dim: int, code_resampling: bool, resample_every: int, knn_k: int, knn_clip: float,
                 knn_chunk_elements: int, **skill_settings):
        super().__init__(obs_shape, action_dim, **skill_settings)
        self.knn_k, self.knn_clip, self.knn_chunk_elements = knn_k, knn_clip, knn_chunk_elements
        self.build_lbs()
        self.expl_ac = ActorCritic(self.feat_dim, action_dim, reward_norm=reward_norm, actor_ent=actor_ent,
                                   **self.ac_args)
        head = self.reward_head_cfg
        self.skill_module = SkillModule(self.wm.rssm.deter, self.skill_dim, code_dim, head["layers"], head["units"],
                                        "layer", self.ac_args["actor_opt"], code_resampling, resample_every)
        self.build_skill_policy()
        self.ready()

    # ------------------------------------------------------------------------- the SkillAgent parts
    def skill_model_optimizers(self) -> dict[str, Optimizer]:
        return {"skill": self.skill_module.opt}

    def exploration_optimizers(self) -> dict[str, Optimizer]:
        return {"lbs": self.lbs.opt, "actor": self.expl_ac.actor_opt, "critic": self.expl_ac.critic_opt}

    def drop_exploration(self) -> None:
        """Fine-tuning (docs/algorithm.md §8.1): the exploration behaviour and LBS head go."""
        del self.expl_ac, self.lbs

    def exploration_policy(self, feat: torch.Tensor, meta: np.ndarray):
        return self.expl_ac.actor(feat)

    def skill_reward(self, skill: torch.Tensor):
        """Particle entropy of the imagined deter (all pooled) + the code reward (docs/algorithm.md §7.5)."""
        def reward(states: State, _feat: torch.Tensor, _actions: torch.Tensor | None = None) -> torch.Tensor:
            deter = states["deter"]
            entropy = imagined_particle_entropy(deter, self.knn_k, self.knn_clip, self.knn_chunk_elements, self.fast)
            return entropy + self.skill_module.code_reward(skill, deter)
        return reward

    # ------------------------------------------------------------------------- skill interface
    def goal_skill_scores(self, goal: State) -> torch.Tensor:
        """Minus the distance of each skill's decoded code to the goal's deterministic state."""
        targets = self.skill_module.skill_target(torch.eye(self.skill_dim, device=self.device))
        return -(targets - goal["deter"]).norm(dim=-1)

    @torch.no_grad()
    def nearest_skill(self, deter: torch.Tensor) -> int:
        """Index of the skill whose decoded code is nearest the deterministic state ``deter`` (1, D)."""
        return int(self.goal_skill_scores({"deter": deter}).argmax())

    def skill_usage(self) -> np.ndarray:
        """The VQ codebook's EMA cluster sizes."""
        return self.skill_module.cluster_size.detach().float().cpu().numpy()

    def skill_reconstruction(self, deter: torch.Tensor) -> State:
        """Latent states whose deter is ``deter`` (..., D) reconstructed through the VQ bottleneck
        (encoded, snapped to the nearest code, decoded) and whose stoch is a sample of the prior head
        given that deter."""
        module, rssm = self.skill_module, self.wm.rssm
        lead = deter.shape[:-1]
        flat = deter.reshape(-1, deter.shape[-1])
        z_e = module.encoder(flat).mean.float()
        z_q = module.codebook.t()[module.nearest_code(z_e)]
        rec = module.decoder(z_q.to(module.codebook.dtype)).mean.to(flat.dtype)
        logit = rssm.prior_out(rec).reshape(-1, rssm.stoch, rssm.discrete)
        stoch = OneHotCategorical(logit.float()).sample().to(rec.dtype)
        return {"logit": logit.reshape(*lead, rssm.stoch, rssm.discrete),
                "stoch": stoch.reshape(*lead, rssm.stoch, rssm.discrete), "deter": rec.reshape(*lead, -1)}

    # ---------------------------------------------------------------------------------- training
    def update_pretrain(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One pre-training step (docs/algorithm.md §10.2): world model, LBS head, exploration AC, VQ,
        skill AC."""
        post, kl, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        metrics.update(self.update_lbs(post, kl))
        metrics.update(self.update_exploration(start))
        metrics.update(self.update_skill_module(start))
        metrics.update(self.update_skill_behaviour(start))
        return metrics

    def update_offline(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One offline pre-training step (docs/algorithm.md §10.2): world model, VQ, skill AC; no
        exploration."""
        post, _, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        metrics.update(self.update_skill_module(start))
        metrics.update(self.update_skill_behaviour(start))
        return metrics

    def update_exploration(self, start: State) -> dict[str, torch.Tensor]:
        return self.update_behaviour("exploration", self.expl_ac, start, self.lbs_reward)

    def update_skill_module(self, start: State) -> dict[str, torch.Tensor]:
        metrics = self.stages.run("skill_module", self._skill_module_step, start["deter"])
        return {**metrics, **self.skill_module.after_update(start["deter"])}

    def _skill_module_step(self, deter: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.skill_module.update_step(deter)
