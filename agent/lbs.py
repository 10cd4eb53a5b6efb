"""LBS (Latent Bayesian Surprise) exploration baseline: Choreographer's exploration alone, without
skills (docs/algorithm.md §6).

Intrinsic model: ``LBSHead`` (agent/exploration.py), an MLP with the reward head's sizes and the
``model_opt`` settings, trained on the world model's per-step KL(post || sg(prior)) from posterior
features; reward = its prediction on imagined features, differentiable in them (the actor's
dynamics gradient flows through the head). Pre-training and fine-tuning: agent/explorer.py.
"""
from __future__ import annotations

import torch

from agent.exploration import LBSExploration
from agent.explorer import ExplorationAgent
from models.optim import Optimizer
from models.rssm import State


class LBSAgent(LBSExploration, ExplorationAgent):
    intrinsic_parts = ("lbs",)

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, **settings):
        super().__init__(obs_shape, action_dim, **settings)
        self.build_lbs()
        self.ready()

    def intrinsic_optimizers(self) -> dict[str, Optimizer]:
        return {"lbs": self.lbs.opt}

    def intrinsic_reward(self, states: State, feat: torch.Tensor, actions: torch.Tensor | None = None
                         ) -> torch.Tensor:
        return self.lbs_reward(states, feat, actions)

    def update_intrinsic(self, post: State, kl: torch.Tensor, _batch: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        return self.update_lbs(post, kl)
