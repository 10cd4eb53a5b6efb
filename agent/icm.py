"""ICM (Intrinsic Curiosity Module, Pathak et al. 2017) exploration baseline on the world model's
features, as the Dreamer-based URLB runs it (Rajeswar et al. 2023): the error of a learned forward
model of the latent dynamics is the exploration reward (docs/algorithm.md §14.3).

Forward model: an MLP g (``agent.forward_model`` sizes, by default the reward head's) from the
model feature and the action to the next model feature, g(f_t, a_{t+1}) ~ f_{t+1}, trained on the
batch's detached posterior features, every pair of consecutive rows of a sequence (a pair whose
second row starts an episode is left out), with the mean Euclidean error as the loss, as the
reference:

    L_icm = mean_{b,t} || g(sg f_t, a_{t+1}) - sg f_{t+1} ||_2

one optimiser ``icm`` with the ``model_opt`` settings. ``a_{t+1}`` is the batch's action of row
t+1, the action that led from row t to row t+1 (docs/algorithm.md §2).

Intrinsic reward of an imagined step: the forward model's error on the transition that reached it,
r_i = log(1 + ``icm_scale`` * || g(f_{i-1}, a_i) - f_i ||_2) for i = 1..H, and r_0 = 0 (the start
state is not reached by an imagined transition). Differentiable in the imagined features and
actions, so the actor's dynamics gradient flows through g, as for LBS and Plan2Explore.

No inverse model: in ICM it shapes the encoder's features towards what the agent controls; here the
features are the world model's, trained by the world model's own loss, so an inverse model would
train nothing the reward reads (the reference builds one and leaves its loss out as well).
Pre-training and fine-tuning: agent/explorer.py.
"""
from __future__ import annotations

import torch
from torch import nn

from agent.explorer import ExplorationAgent
from models.mlp import MSEHead
from models.optim import Optimizer, trainable
from models.recompute import over_rows
from models.rssm import State


class ForwardModel(nn.Module):
    """g(feat, action) -> next feat: an MSE head on concat(feat, action); its optimiser ``icm``."""

    def __init__(self, feat_dim: int, action_dim: int, layers: int, units: int, norm: str, opt: dict):
        super().__init__()
        self.head = MSEHead(feat_dim + action_dim, feat_dim, layers, units, norm)
        self.opt = Optimizer("icm", self.head.parameters(), **opt)

    def forward(self, feat_action: torch.Tensor) -> torch.Tensor:
        """Predicted next feature (..., F) for concat(feat, action) (..., F + A)."""
        return self.head(feat_action).mean

    @staticmethod
    def error(prediction: torch.Tensor, next_feat: torch.Tensor) -> torch.Tensor:
        """Euclidean error (...,), taken in float32 (bf16 would keep two or three digits of it)."""
        return torch.linalg.vector_norm(next_feat.float() - prediction.float(), dim=-1)

    def update(self, feat: torch.Tensor, action: torch.Tensor, next_feat: torch.Tensor, weight: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        """One step on detached pairs (..., F), (..., A) -> (..., F); ``weight`` (...,) is 1 for a pair
        that counts and 0 for one that does not."""
        inputs = torch.cat([feat, action.to(feat.dtype)], -1).detach()
        with trainable(self.head):
            error = self.error(self(inputs), next_feat.detach())
            loss = (error * weight).sum() / weight.sum().clamp(min=1)
            return self.opt(loss)


class ICMAgent(ExplorationAgent):
    intrinsic_parts = ("icm",)

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, forward_model: dict, icm_scale: float,
                 **settings):
        super().__init__(obs_shape, action_dim, **settings)
        self.icm_scale = float(icm_scale)
        self.icm = ForwardModel(self.feat_dim, action_dim, forward_model["layers"], forward_model["units"],
                                forward_model["norm"], self.model_opt_cfg)
        self.ready()

    def intrinsic_optimizers(self) -> dict[str, Optimizer]:
        return {"icm": self.icm.opt}

    def intrinsic_reward(self, _states: State, feat: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([feat[:-1], actions[1:].to(feat.dtype)], -1)
        error = ForwardModel.error(over_rows(self.icm, inputs, self.low_memory), feat[1:])
        reward = torch.log1p(self.icm_scale * error).to(feat.dtype)
        return torch.cat([torch.zeros_like(reward[:1]), reward], 0)

    def update_intrinsic(self, post: State, kl: torch.Tensor, batch: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        return dict(self.stages.run("icm", self._icm_step, post, batch["action"], batch["is_first"]))

    def _icm_step(self, post: State, action: torch.Tensor, is_first: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.wm.rssm.feat(post).detach()
        weight = 1.0 - is_first[:, 1:].to(feat.dtype)
        with self.autocast():
            return self.icm.update(feat[:, :-1], action[:, 1:], feat[:, 1:], weight)
