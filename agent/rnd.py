"""RND (Random Network Distillation, Burda et al. 2019) exploration baseline on the world model's
features, as the Dreamer-based URLB runs it (Rajeswar et al. 2023): a predictor learns to match a
fixed random network, and its error is the exploration reward (docs/algorithm.md §14.4).

Networks: a target t and a predictor p, both MLPs from the model feature to ``agent.rnd_net.rep_dim``
outputs (hidden sizes ``agent.rnd_net``, by default the reward head's), initialised independently.
The target is never trained. The error of a feature is e(f) = mean_d (t(f)_d - p(f)_d)^2. The
predictor is trained on the batch's detached posterior features (optimiser ``rnd``, ``model_opt``
settings):

    L_rnd = mean_{b,t} e(sg f_t)

Normalisation, as the reference: by the running standard deviation of the error. After each
predictor step the errors of the same batch (with the updated predictor) are pooled into running
moments (``RunningMoments``: mean, population variance and count of every error seen, starting from
mean 0, variance 1 and count 1e-4). Intrinsic reward of an imagined state:

    r(f_i) = ``rnd_scale`` * e(f_i) / (sqrt(var) + 1e-8)

for every imagined state (the start included), differentiable in the imagined feature through both
networks (the target's weights stay fixed). The exploration actor-critic's StreamNorm is off
(``reward_norm.momentum: 1``), as the reference's: the running std already sets the scale.
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


class RunningMoments(nn.Module):
    """Mean, population variance and count of every value seen (float64 buffers), merged a batch at a
    time with the parallel-variance formula (Chan et al.)."""

    def __init__(self, count: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.full((), count, dtype=torch.float64))

    @torch.no_grad()
    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().reshape(-1)
        size = values.numel()
        batch_mean, batch_var = values.mean(), values.var(correction=0)
        delta = batch_mean - self.mean
        total = self.count + size
        var = (self.var * self.count + batch_var * size + delta.square() * self.count * size / total) / total
        self.mean.add_(delta * size / total)
        self.var.copy_(var)
        self.count.copy_(total)


class RandomNetworkDistillation(nn.Module):
    def __init__(self, feat_dim: int, rep_dim: int, layers: int, units: int, norm: str, opt: dict):
        super().__init__()
        self.target = MSEHead(feat_dim, rep_dim, layers, units, norm)
        self.predictor = MSEHead(feat_dim, rep_dim, layers, units, norm)
        self.moments = RunningMoments()
        self.opt = Optimizer("rnd", self.predictor.parameters(), **opt)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Prediction error e(f) (...,) of features (..., F), taken in float32."""
        return (self.target(feat).mean.float() - self.predictor(feat).mean.float()).square().mean(-1)

    def update(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """One predictor step on detached features, then their errors into the running moments."""
        feat = feat.detach()
        with trainable(self.predictor):
            metrics = self.opt(self(feat).mean())
        self.moments.update(self(feat))
        return metrics


class RNDAgent(ExplorationAgent):
    intrinsic_parts = ("rnd",)

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, rnd_net: dict, rnd_scale: float,
                 **settings):
        super().__init__(obs_shape, action_dim, **settings)
        self.rnd_scale = float(rnd_scale)
        self.rnd = RandomNetworkDistillation(self.feat_dim, rnd_net["rep_dim"], rnd_net["layers"], rnd_net["units"],
                                             rnd_net["norm"], self.model_opt_cfg)
        self.ready()

    def intrinsic_optimizers(self) -> dict[str, Optimizer]:
        return {"rnd": self.rnd.opt}

    def intrinsic_reward(self, _states: State, feat: torch.Tensor, _actions: torch.Tensor | None = None
                         ) -> torch.Tensor:
        error = over_rows(self.rnd, feat, self.low_memory)
        std = self.rnd.moments.var.sqrt().float()
        return (self.rnd_scale * error / (std + 1e-8)).to(feat.dtype)

    def update_intrinsic(self, post: State, kl: torch.Tensor, batch: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        return dict(self.stages.run("rnd", self._rnd_step, post))

    def _rnd_step(self, post: State) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.rnd.update(self.wm.rssm.feat(post))
