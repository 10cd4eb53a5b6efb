"""LBS (Latent Bayesian Surprise) exploration baseline: Choreographer's exploration alone, without
skills (docs/algorithm.md §6).

Intrinsic model: ``LBSHead`` (agent/exploration.py), an MLP with the reward head's sizes and the
``model_opt`` settings, trained on the world model's per-step KL(post || sg(prior)) from posterior
features; reward = its prediction on imagined features, differentiable in them (the actor's
dynamics gradient flows through the head). Pre-training and fine-tuning: agent/explorer.py.
"""
from __future__ import annotations

import torch

from agent.exploration import LBSHead
from agent.explorer import ExplorationAgent
from models.optim import Optimizer
from models.recompute import over_rows
from models.rssm import State


class LBSAgent(ExplorationAgent):
    intrinsic_parts = ("lbs",)

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, **settings):
        super().__init__(obs_shape, action_dim, **settings)
        head = self.reward_head_cfg
        self.lbs = LBSHead(self.feat_dim, head["layers"], head["units"], head["norm"], self.model_opt_cfg)
        self.ready()

    def intrinsic_optimizers(self) -> dict[str, Optimizer]:
        return {"lbs": self.lbs.opt}

    def intrinsic_reward(self, _states: State, feat: torch.Tensor, _actions: torch.Tensor | None = None
                         ) -> torch.Tensor:
        return over_rows(self.lbs, feat, self.low_memory)

    def update_intrinsic(self, post: State, kl: torch.Tensor, _batch: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        return dict(self.stages.run("lbs", self._lbs_step, post, kl))

    def _lbs_step(self, post: State, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.lbs.update(self.wm.rssm.feat(post).detach(), kl)
