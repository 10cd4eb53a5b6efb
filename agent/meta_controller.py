"""Meta-controller for fine-tuning (docs/algorithm.md §8.2): a categorical policy over the skills
("selector") trained with REINFORCE against the target critic, and the skill policy ("executor")
fine-tuned by backpropagating the imagined task return through the world model.

Imagined sequences are time-major (H+1, N, ...); index 0 is the start state with a zero skill and
a zero action, and skill index t+1 is the skill chosen in state t.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.distributions import OneHotCategorical
from models.mlp import ActorHead, MSEHead, OneHotHead
from models.normalise import StreamNorm
from models.optim import Optimizer, trainable
from agent.actor_critic import refresh_target, train_critic
from models.returns import lambda_return, make_target
from models.recompute import over_rows
from models.rssm import RSSM, State, imagine

SELECTOR_ENTROPY = 1e-4


def step_outputs(selector: OneHotCategorical, skill: torch.Tensor, executor_entropy: Callable[[], torch.Tensor],
                 with_outputs: bool) -> dict[str, torch.Tensor]:
    """What an imagination step hands back besides the action: the chosen skill, and with
    ``with_outputs`` the selector's logits and the executor's entropy (computed only then)."""
    extra = {"skill": skill}
    if with_outputs:
        extra.update(selector_logits=selector.logits, executor_entropy=executor_entropy().detach())
    return extra


class MetaController(nn.Module):
    def __init__(self, feat_dim: int, skill_dim: int, executor: ActorHead, actor: dict, critic: dict,
                 actor_opt: dict, critic_opt: dict, discount: float = 0.99, discount_lambda: float = 0.95,
                 slow_target: bool = True, slow_target_update: int = 100, slow_target_fraction: float = 1.0,
                 train_executor: bool = True, fast: bool = False, low_memory: bool = False):
        super().__init__()
        self.selector = OneHotHead(feat_dim, skill_dim, actor["layers"], actor["units"], actor["norm"])
        self.critic = MSEHead(feat_dim, 1, critic["layers"], critic["units"], critic["norm"])
        self.target_critic = make_target(self.critic) if slow_target else self.critic
        self.reward_norm = StreamNorm(momentum=1.0)
        # The executor is the skill actor-critic's actor: not registered here, so it is saved once.
        self._executor = [executor]
        self.train_executor = train_executor
        self.selector_opt = Optimizer("selector_actor", self.selector.parameters(), **actor_opt)
        self.executor_opt = Optimizer("executor_actor", executor.parameters(), **actor_opt)
        self.critic_opt = Optimizer("selector_critic", self.critic.parameters(), **critic_opt)
        self.discount, self.lambda_ = discount, discount_lambda
        self.slow_target = slow_target
        self.slow_target_update, self.slow_target_fraction = slow_target_update, slow_target_fraction
        self.skill_dim = skill_dim
        # Fast mode reuses the selector and executor outputs of the imagination loop (same detached
        # inputs) instead of running both networks over the rollout a second time.
        self.fast = fast
        # Recompute imagination steps and head activations in the backward pass (models/recompute.py).
        self.low_memory = low_memory
        # compile=true: imagination_step compiled (models/compiled.py); set by the agent.
        self.compiled_step = None
        self.updates = 0

    @property
    def executor(self) -> ActorHead:
        return self._executor[0]

    def optimizers(self) -> dict[str, Optimizer]:
        return {"selector_actor": self.selector_opt, "executor_actor": self.executor_opt,
                "selector_critic": self.critic_opt}

    def imagine(self, rssm: RSSM, start: State, horizon: int, with_outputs: bool = False
                ) -> tuple[State, torch.Tensor, dict[str, torch.Tensor]]:
        """States (H+1, N, ...) and skills (H+1, N, K); the selector re-chooses at every step. With
        ``with_outputs`` also the selector's logits (H, N, K) and the executor's entropy (H, N) of
        each step, under the keys ``selector_logits`` and ``executor_entropy``."""
        step = None
        if self.compiled_step is not None:
            step = lambda state: self.imagination_step(rssm, state, with_outputs)  # noqa: E731
        states, _, outputs = imagine(rssm, lambda feat, _t: self.imagined_action(feat, with_outputs), start, horizon,
                                     recompute_steps=self.low_memory, step=step)
        skills = torch.cat([torch.zeros_like(outputs["skill"][:1]), outputs.pop("skill")], 0)
        return states, skills, outputs

    def imagined_action(self, feat: torch.Tensor, with_outputs: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feat = feat.detach()
        selector = self.selector(feat)
        skill = selector.sample()
        executor = self.executor(torch.cat([feat, skill.detach()], -1))
        return executor.sample(), step_outputs(selector, skill, executor.entropy, with_outputs)

    def imagination_step(self, rssm: RSSM, state: State, with_outputs: bool):
        """``imagined_action`` and the prior step with the executor's part compiled. The selector
        stays outside: its optimiser steps before the executor's backward pass, which a compiled
        step holding both would see as a modified input."""
        feat = rssm.feat(state).detach()
        selector = self.selector(feat)
        skill = selector.sample()
        next_state, action, executor_entropy = self.compiled_step(rssm, state, feat, skill.detach())
        return next_state, action, step_outputs(selector, skill, lambda: executor_entropy, with_outputs)

    def executor_step(self, rssm: RSSM, state: State, feat: torch.Tensor, skill: torch.Tensor):
        """The executor's action for a chosen skill and the prior step: the unit ``compile=true`` compiles."""
        executor = self.executor(torch.cat([feat, skill], -1))
        action = executor.sample()
        return rssm.img_step(state, action), action, executor.entropy()

    def update(self, rssm: RSSM, start: State, horizon: int, reward_head: nn.Module) -> dict[str, torch.Tensor]:
        metrics = self.update_step(rssm, start, horizon, reward_head)
        refresh_target(self)
        return metrics

    def update_step(self, rssm: RSSM, start: State, horizon: int, reward_head: nn.Module
                    ) -> dict[str, torch.Tensor]:
        """The tensor work of ``update`` (recordable as a CUDA graph): everything but the target refresh."""
        executor_scope = (self.executor,) if self.train_executor else ()
        with trainable(self.selector, *executor_scope):
            states, skills, outputs = self.imagine(rssm, start, horizon, with_outputs=self.fast)
            feat = rssm.feat(states)
            reward = over_rows(lambda x: reward_head(x).mean, feat, self.low_memory).squeeze(-1)
            reward, metrics = self.reward_norm(reward)
            value = over_rows(lambda x: self.target_critic(x).mean, feat, self.low_memory).squeeze(-1)
            discount = torch.full_like(reward, self.discount)
            target = lambda_return(reward, value, discount, self.lambda_)
            weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]], 0), 0).detach()
            if self.fast:
                selector = OneHotCategorical(outputs["selector_logits"][:-1])
            else:
                selector = OneHotCategorical(over_rows(lambda x: self.selector(x).logits, feat[:-2].detach(),
                                                       self.low_memory))
            advantage = (target[1:] - value[:-2]).detach()
            entropy = selector.entropy()
            # The executor's entropy is reported for the policy that acted in the rollout, so it is
            # read before the executor's step below (fast mode gets it from the rollout itself).
            if self.fast:
                low_entropy = outputs["executor_entropy"][:-1]
            else:
                with torch.no_grad():
                    low_entropy = self.executor(torch.cat([feat[:-2], skills[1:-1]], -1).detach()).entropy()
            high_loss = -(weight[:-2] * (selector.log_prob(skills[1:-1].detach()) * advantage
                                          + SELECTOR_ENTROPY * entropy)).mean()
            metrics.update(self.selector_opt(high_loss, retain_graph=self.train_executor))
            if self.train_executor:
                low_loss = -(weight[:-2] * target[1:]).mean()
                metrics.update(self.executor_opt(low_loss))
        dist = train_critic(self, feat, target, weight, metrics)
        metrics.update({
            "high_actor_ent": entropy.detach().mean(), "low_actor_ent": low_entropy.mean(),
            "skills_updated": torch.zeros(self.skill_dim, device=feat.device).index_fill_(
                0, skills.detach().argmax(-1).flatten(), 1.0).sum(),
            "critic": dist.mean.detach().mean(), "critic_slow": value.detach().mean(),
            "critic_target": target.detach().mean(),
        })
        return metrics

    def get_extra_state(self) -> dict:
        return {"updates": self.updates}

    def set_extra_state(self, state: dict) -> None:
        self.updates = int(state["updates"])
