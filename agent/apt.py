"""APT exploration baseline (Liu & Abbeel 2021) on the world model: a particle-based entropy
reward over imagined latent states, no trained intrinsic model.

Reward of an imagined state: ``particle_entropy_reward`` (agent/exploration.py,
docs/algorithm.md §7.5) over its deterministic state among all (H+1) x N imagined deterministic
states of the update (every imagined step and start pooled, as the entropy part of
Choreographer's skill reward): the mean of its distances to its ``agent.knn_k`` nearest neighbours
(itself included, distance 0), each reduced by ``agent.knn_clip`` and floored at 0. Detached: the
actor learns it through the critic's values. Pre-training and fine-tuning: agent/explorer.py.
"""
from __future__ import annotations

import torch

from agent.exploration import imagined_particle_entropy
from agent.explorer import ExplorationAgent
from models.rssm import State


class APTAgent(ExplorationAgent):
    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, knn_k: int, knn_clip: float,
                 knn_chunk_elements: int, **settings):
        super().__init__(obs_shape, action_dim, **settings)
        self.knn_k, self.knn_clip, self.knn_chunk_elements = int(knn_k), float(knn_clip), int(knn_chunk_elements)
        self.ready()

    def intrinsic_reward(self, states: State, _feat: torch.Tensor, _actions: torch.Tensor | None = None
                         ) -> torch.Tensor:
        return imagined_particle_entropy(states["deter"], self.knn_k, self.knn_clip, self.knn_chunk_elements,
                                         self.fast)
