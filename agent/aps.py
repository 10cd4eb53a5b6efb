"""APS (Liu & Abbeel 2021, "APS: Active Pretraining with Successor Features") on the shared world model,
with the Dreamer-based URLB (Rajeswar et al. 2023) as the reference for fine-tuning
(docs/algorithm.md §14.7).

* Skills (tasks) z: unit vectors of ``skill_dim`` dimensions, uniform on the sphere (a normalised
  Gaussian), redrawn every ``update_skill_every_step`` steps.
* Features phi(s): an MLP from the model feature to ``skill_dim`` outputs (sizes ``agent.features``,
  by default the reward head's), normalised to unit length.
* Skill reward of an imagined state s_i of a rollout conditioned on z:

      r(s_i, z) = sf_scale * phi(s_i)^T z + entropy_scale * H_knn(s_i)

  H_knn: the particle-entropy reward shared with APT and Choreographer (agent/exploration.py) over the
  deterministic states of the whole rollout (every step and start pooled), detached; the phi term is
  differentiable in the imagined feature. The skill critic on concat(feature, z) learns the value of
  this reward, i.e. psi(s, z)^T z + the entropy value, with psi the successor features of phi: the
  scalar is all the actor-critic needs, so psi is not learned separately.
* Pre-training, one update: world model; skill actor-critic in imagination on random skills; then
  phi on the same detached rollout, every state after the start with its skill (the von Mises-Fisher
  log-likelihood of z given s up to a constant, as APS):

      L_phi = - mean_{i >= 1, n} phi(sg s_{i,n})^T z_n          (optimiser ``features``, ``model_opt``)

  The skill policy acts in the environment on the episode's skill (APS explores with it).
* Fine-tuning: the task vector w regressed from rewards, least squares of phi(s_t)^T w ~ r_t over the
  posterior states of every fine-tuning batch since the reward gate opened (accumulated normal
  equations, ridge ``lstsq_ridge``), normalised to unit length, is the fixed task skill; the skill
  policy conditioned on it is fine-tuned on the reward head.
* Zero-shot goals (``nearest``): z = phi(goal) / |phi(goal)|, the unit skill maximising phi(goal)^T z.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agent.exploration import imagined_particle_entropy
from agent.skill_agent import RolloutSkillAgent
from models.mlp import MSEHead
from models.optim import Optimizer, trainable
from models.recompute import over_rows
from models.rssm import State


class SkillFeatures(nn.Module):
    """phi(s) on the model feature, unit length; optimiser ``features``."""

    def __init__(self, feat_dim: int, skill_dim: int, layers: int, units: int, norm: str, opt: dict):
        super().__init__()
        self.head = MSEHead(feat_dim, skill_dim, layers, units, norm)
        self.opt = Optimizer("features", self.head.parameters(), **opt)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """phi (..., K) for features (..., F), in float32."""
        return nn.functional.normalize(self.head(feat).mean.float(), dim=-1)

    def update(self, feat: torch.Tensor, skill: torch.Tensor) -> dict[str, torch.Tensor]:
        with trainable(self.head):
            return self.opt(-(self(feat.detach()) * skill.float()).sum(-1).mean())


class APSAgent(RolloutSkillAgent):
    skill_model_stage = "features"
    init_from_keys = ("wm.rssm.", "wm.encoder.", "wm.decoder.", "skill_ac.actor.", "features.")

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, features: dict, sf_scale: float,
                 entropy_scale: float, knn_k: int, knn_clip: float, knn_chunk_elements: int, lstsq_ridge: float,
                 **skill_settings):
        super().__init__(obs_shape, action_dim, **skill_settings)
        self.sf_scale, self.entropy_scale = float(sf_scale), float(entropy_scale)
        self.knn_k, self.knn_clip, self.knn_chunk_elements = int(knn_k), float(knn_clip), int(knn_chunk_elements)
        self.lstsq_ridge = float(lstsq_ridge)
        self.features = SkillFeatures(self.feat_dim, self.skill_dim, features["layers"], features["units"],
                                      features["norm"], self.model_opt_cfg)
        self.build_skill_policy()
        self.ready()

    # ----------------------------------------------------------------------------------- skills
    def sample_skill(self) -> np.ndarray:
        skill = self.rng.standard_normal(self.skill_dim).astype(np.float32)
        return skill / np.linalg.norm(skill)

    def random_skills(self, count: int) -> torch.Tensor:
        return nn.functional.normalize(torch.randn(count, self.skill_dim, device=self.device), dim=-1)

    def candidate_skills(self) -> torch.Tensor:
        """The 2K axis directions +-e_k."""
        eye = torch.eye(self.skill_dim, device=self.device)
        return torch.cat([eye, -eye], 0)

    # ------------------------------------------------------------------------- the SkillAgent parts
    def skill_model_optimizers(self) -> dict[str, Optimizer]:
        return {"features": self.features.opt}

    def finetune_adaptation(self) -> str:
        return "fixed"

    def finetune_mode(self) -> None:
        # The accumulated normal equations of the task regression: sum phi phi^T and sum phi r.
        self.register_buffer("phi_outer", torch.zeros(self.skill_dim, self.skill_dim, dtype=torch.float64))
        self.register_buffer("phi_reward", torch.zeros(self.skill_dim, dtype=torch.float64))
        super().finetune_mode()

    def skill_reward(self, skill: torch.Tensor):
        def reward(states: State, feat: torch.Tensor, _actions: torch.Tensor | None = None) -> torch.Tensor:
            entropy = imagined_particle_entropy(states["deter"], self.knn_k, self.knn_clip, self.knn_chunk_elements,
                                                self.fast)
            phi = over_rows(self.features, feat, self.low_memory)
            return (self.sf_scale * (phi * skill).sum(-1)).to(feat.dtype) + self.entropy_scale * entropy
        return reward

    # ---------------------------------------------------------------------------------- training
    def update_skill_model(self, feat: torch.Tensor, skill: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.features.update(feat, skill)

    @torch.no_grad()
    def infer_task_skill(self, post: State, start: State, batch: dict[str, torch.Tensor]):
        """w = (sum phi phi^T + ridge I)^-1 sum phi r over every gated batch so far, normalised."""
        phi = self.features(self.wm.rssm.feat(post)).double().reshape(-1, self.skill_dim)
        reward = batch["reward"].to(phi.device).double().reshape(-1)
        self.phi_outer.add_(phi.t() @ phi)
        self.phi_reward.add_(phi.t() @ reward)
        ridge = self.lstsq_ridge * torch.eye(self.skill_dim, device=self.device, dtype=torch.float64)
        task = torch.linalg.solve(self.phi_outer + ridge, self.phi_reward)
        fit = ((phi @ task) - reward).pow(2).mean().float()
        return (task / task.norm().clamp(min=1e-12)).float(), {"task_fit_error": fit}

    # ------------------------------------------------------------------------- skill interface
    @torch.no_grad()
    def goal_skill(self, goal: State) -> torch.Tensor:
        return self.features(self.wm.rssm.feat(goal))[0]
