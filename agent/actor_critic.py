"""Actor-critic trained in imagination (docs/algorithm.md §5, §7.4).

One class serves the exploration behaviour (input: the model feature) and the skill behaviour
(input: concat(feature, skill one-hot)); ``cond_dim`` is the width of the conditioning vector.
Imagined sequences are time-major: (H+1, N, ...), index 0 the start state.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.distributions import UnitNormal
from models.mlp import ActorHead, MSEHead
from models.normalise import StreamNorm
from models.optim import Optimizer, trainable
from models.recompute import over_rows
from models.returns import lambda_return, make_target, update_target
from models.rssm import RSSM, State, imagine

# reward_fn(states, feat, actions) -> rewards (H+1, N) of an imagined rollout: its states (H+1, N, ...),
# features (H+1, N, F) and actions (H+1, N, A), where actions[i] led from state i-1 to state i and
# actions[0] is zero (docs/algorithm.md §5.1). A reward that does not read the actions may default them.
RewardFn = Callable[[State, torch.Tensor, torch.Tensor], torch.Tensor]


def train_critic(owner: nn.Module, inputs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                 metrics: dict) -> UnitNormal:
    """Critic step (docs/algorithm.md §5.3) on detached inputs (H+1, N, D) towards lambda-returns
    (H, N); ``owner`` holds critic, critic_opt and the low_memory flag."""
    with trainable(owner.critic):
        dist = UnitNormal(over_rows(lambda x: owner.critic(x).mean, inputs[:-1].detach(), owner.low_memory))
        critic_loss = -(dist.log_prob(target.detach().unsqueeze(-1)) * weight[:-1]).mean()
        metrics.update(owner.critic_opt(critic_loss))
    return dist


def refresh_target(owner: nn.Module) -> None:
    """After a critic step: the slow-target refresh and the update count. Kept out of the tensor
    step because it depends on the count (a CUDA graph replays one fixed sequence of kernels)."""
    if owner.slow_target:
        update_target(owner.target_critic, owner.critic, owner.updates, owner.slow_target_update,
                      owner.slow_target_fraction)
    owner.updates += 1


class ActorCritic(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, actor: dict, critic: dict, actor_opt: dict,
                 critic_opt: dict, reward_norm: dict, discount: float = 0.99, discount_lambda: float = 0.95,
                 actor_ent: float = 0.0, slow_target: bool = True, slow_target_update: int = 100,
                 slow_target_fraction: float = 1.0, cond_dim: int = 0, prefix: str = "",
                 fast: bool = False, low_memory: bool = False):
        super().__init__()
        in_dim = feat_dim + cond_dim
        self.actor = ActorHead(in_dim, action_dim, actor["layers"], actor["units"], actor["norm"], actor["min_std"])
        self.critic = MSEHead(in_dim, 1, critic["layers"], critic["units"], critic["norm"])
        self.target_critic = make_target(self.critic) if slow_target else self.critic
        self.reward_norm = StreamNorm(**reward_norm)
        self.actor_opt = Optimizer(f"{prefix}actor", self.actor.parameters(), **actor_opt)
        self.critic_opt = Optimizer(f"{prefix}critic", self.critic.parameters(), **critic_opt)
        self.discount, self.lambda_ = discount, discount_lambda
        self.actor_ent = actor_ent
        self.slow_target = slow_target
        self.slow_target_update, self.slow_target_fraction = slow_target_update, slow_target_fraction
        self.prefix = prefix
        # Fast mode takes the policy entropy from the distributions of the imagination loop, which
        # saw the same detached inputs, instead of running the actor over the rollout again.
        self.fast = fast
        # Recompute imagination steps and head activations in the backward pass (models/recompute.py).
        self.low_memory = low_memory
        # compile=true: imagination_step compiled (models/compiled.py); set by the agent.
        self.compiled_step: Callable | None = None
        self.updates = 0

    def policy_input(self, feat: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None:
            return feat
        return torch.cat([feat, cond.expand(*feat.shape[:-1], cond.shape[-1])], -1)

    def imagine(self, rssm: RSSM, start: State, horizon: int, cond: torch.Tensor | None = None,
                with_entropy: bool = False) -> tuple[State, dict[str, torch.Tensor]]:
        """Imagined states (H+1, N, ...) under this actor, ``cond`` (N, C) held fixed, and with
        ``with_entropy`` the policy entropy of each step (H, N) under the key ``entropy``."""
        states, _, outputs = self.imagine_rollout(rssm, start, horizon, cond, with_entropy)
        return states, outputs

    def imagine_rollout(self, rssm: RSSM, start: State, horizon: int, cond: torch.Tensor | None = None,
                        with_entropy: bool = False) -> tuple[State, torch.Tensor, dict[str, torch.Tensor]]:
        """``imagine`` with the actions too: states (H+1, N, ...), actions (H+1, N, A) with a zero
        action at index 0, and the per-step outputs."""
        step = None
        if self.compiled_step is not None:
            step = lambda state: self.compiled_step(rssm, state, cond, with_entropy)  # noqa: E731
        return imagine(rssm, lambda feat, _t: self.imagined_action(feat, cond, with_entropy), start, horizon,
                       recompute_steps=self.low_memory, step=step)

    def imagined_action(self, feat: torch.Tensor, cond: torch.Tensor | None, with_entropy: bool
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dist = self.actor(self.policy_input(feat.detach(), cond))
        return dist.sample(), ({"entropy": dist.entropy()} if with_entropy else {})

    def imagination_step(self, rssm: RSSM, state: State, cond: torch.Tensor | None, with_entropy: bool):
        """Policy and prior step together: the unit ``compile=true`` compiles."""
        action, extra = self.imagined_action(rssm.feat(state), cond, with_entropy)
        return rssm.img_step(state, action), action, extra

    def update(self, rssm: RSSM, start: State, horizon: int, reward_fn: RewardFn,
               cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One actor and one critic step on a fresh imagined rollout from ``start`` (N, ...)."""
        metrics = self.update_step(rssm, start, horizon, reward_fn, cond)
        refresh_target(self)
        return metrics

    def update_step(self, rssm: RSSM, start: State, horizon: int, reward_fn: RewardFn,
                    cond: torch.Tensor | None = None, keep_rollout: bool = False):
        """The tensor work of ``update`` (recordable as a CUDA graph): everything but the target refresh.
        Returns the metrics, and with ``keep_rollout`` also the detached rollout it trained on,
        ``{"feat": (H+1, N, F), "deter": (H+1, N, D)}`` (so a skill model can learn from the same states
        without imagining again)."""
        p = self.prefix
        with trainable(self.actor):
            states, actions, outputs = self.imagine_rollout(rssm, start, horizon, cond, with_entropy=self.fast)
            feat = rssm.feat(states)
            if self.low_memory:  # the rewards read at most ``deter`` of the states; the stacked one-hots can go
                states = {"deter": states["deter"]}
            inputs = self.policy_input(feat, cond)
            reward, metrics = self.reward_norm(reward_fn(states, feat, actions), prefix=f"{p}reward")
            target, weight, value = self.targets(inputs, reward)
            if self.fast:
                ent = outputs["entropy"][:-1]
            else:
                ent = over_rows(lambda x: self.actor(x).entropy(), inputs[:-2].detach(), self.low_memory)
            objective = target[1:] + self.actor_ent * ent
            actor_loss = -(weight[:-2] * objective).mean()
            metrics.update(self.actor_opt(actor_loss))
        dist = train_critic(self, inputs, target, weight, metrics)
        metrics.update({
            f"{p}critic_slow": value.mean(), f"{p}critic_target": target.detach().mean(),
            f"{p}actor_ent": ent.detach().mean(), f"{p}actor_ent_scale": torch.tensor(self.actor_ent),
            f"{p}critic": dist.mean.detach().mean(),
        })
        if keep_rollout:
            return metrics, {"feat": feat.detach(), "deter": states["deter"].detach()}
        return metrics

    def targets(self, inputs: torch.Tensor, reward: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lambda-returns (H, N), weights (H+1, N) = discount^t, and target-critic values (H+1, N)."""
        value = over_rows(lambda x: self.target_critic(x).mean, inputs, self.low_memory).squeeze(-1)
        discount = torch.full_like(reward, self.discount)
        target = lambda_return(reward, value, discount, self.lambda_)
        weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]], 0), 0).detach()
        return target, weight, value.detach()

    def get_extra_state(self) -> dict:
        return {"updates": self.updates}

    def set_extra_state(self, state: dict) -> None:
        self.updates = int(state["updates"])
