"""Plan2Explore exploration baseline (Sekar et al. 2020, as in DreamerV2's ``Plan2Explore``):
the disagreement of an ensemble of one-step latent predictors is the exploration reward.

Ensemble: ``agent.ensemble`` (5) MLP heads with the reward head's layers and units, each
predicting the posterior stochastic state ``stoch_t`` (the flattened one-hots, stoch x discrete
values) from the deterministic state ``deter_t``. Each head is trained on the same batch of
detached posterior states (the heads differ by their initialisation only, as in DreamerV2) with
a unit-variance Gaussian log-likelihood, summed over the heads:

    L_ensemble = - sum_k mean_bt log N( sg(stoch_t); f_k(sg(deter_t)), I )

one optimiser ``ensemble`` for all heads with the ``model_opt`` settings.

Intrinsic reward of an imagined state: the standard deviation of the heads' predictions across
the heads (population std, as DreamerV2's ``tf`` std), averaged over the output dimensions,
r_t = mean_d std_k f_k(deter_t)_d; no log. It is differentiable in ``deter``, so the actor's
dynamics gradient flows through the heads.

Why ``deter`` and no action: the original predicts the next latent from the features and the
action (DreamerV2: ``disag_action_cond``, ``disag_offset: 1``). Here ``deter_t`` already carries
the previous stochastic state and action through the GRU, so predicting ``stoch_t`` from it is
the same one-step prediction, and it needs no action input. (The imagined rewards do see the
actions, ``reward_fn(states, feat, actions)``, which ICM uses: agent/icm.py.)
"""
from __future__ import annotations

import torch
from torch import nn

from agent.explorer import ExplorationAgent
from models.mlp import MSEHead
from models.optim import Optimizer, trainable
from models.recompute import over_rows
from models.rssm import State


class LatentEnsemble(nn.Module):
    """``count`` MSE heads ``in_dim -> out_dim``; one optimiser for all."""

    def __init__(self, in_dim: int, out_dim: int, count: int, layers: int, units: int, norm: str, opt: dict):
        super().__init__()
        if count < 2:
            raise ValueError(f"agent.ensemble={count}: disagreement needs at least 2 heads")
        self.heads = nn.ModuleList(MSEHead(in_dim, out_dim, layers, units, norm) for _ in range(count))
        self.opt = Optimizer("ensemble", self.heads.parameters(), **opt)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every head's prediction (K, ..., out_dim) for inputs (..., in_dim)."""
        return torch.stack([head(inputs).mean for head in self.heads])

    def disagreement(self, inputs: torch.Tensor) -> torch.Tensor:
        """Std across the heads, averaged over the output dimensions: (...,). Taken in float32
        (bf16 would leave two or three digits of a spread that is small next to the predictions)."""
        return self(inputs).float().std(0, correction=0).mean(-1).to(inputs.dtype)

    def update(self, inputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs, target = inputs.detach(), target.detach()
        with trainable(self.heads):
            loss = -sum(head(inputs).log_prob(target).mean() for head in self.heads)
            return self.opt(loss)


class Plan2ExploreAgent(ExplorationAgent):
    intrinsic_parts = ("ensemble",)

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, ensemble: int, **settings):
        super().__init__(obs_shape, action_dim, **settings)
        rssm, head = self.wm.rssm, self.reward_head_cfg
        self.ensemble = LatentEnsemble(rssm.deter, rssm.stoch * rssm.discrete, int(ensemble), head["layers"],
                                       head["units"], head["norm"], self.model_opt_cfg)
        self.ready()

    def intrinsic_optimizers(self) -> dict[str, Optimizer]:
        return {"ensemble": self.ensemble.opt}

    def intrinsic_reward(self, states: State, _feat: torch.Tensor, _actions: torch.Tensor | None = None
                         ) -> torch.Tensor:
        return over_rows(self.ensemble.disagreement, states["deter"], self.low_memory)

    def update_intrinsic(self, post: State, kl: torch.Tensor, _batch: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        return dict(self.stages.run("ensemble", self._ensemble_step, post["deter"], post["stoch"]))

    def _ensemble_step(self, deter: torch.Tensor, stoch: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.ensemble.update(deter, stoch.reshape(*stoch.shape[:-2], -1))
