"""DreamerV2's task agent on the shared world model (the URLB "from scratch" / world-model-only
baseline): a task actor-critic trained in imagination on the reward head's prediction, nothing
else.

One update, in every phase (fine-tuning, offline training on a dataset's rewards): the world model
(docs/algorithm.md §3.4), then the actor-critic ``ac`` (§5) on the reward head's prediction of the
imagined features, normalised with ``agent.task_reward_norm`` (momentum 1: none, as DreamerV2's
task behaviour) and entropy scale ``agent.task_actor_ent``. It needs a task reward, so pretrain.py
cannot run it (``reward_free = False``). ``finetune.py`` may start it from any agent's pre-training
snapshot (``loads_snapshots_of``), of which it copies the world model's encoder, RSSM and decoder
only (``snapshot_ts=0``: from scratch).
"""
from __future__ import annotations

import torch

from agent.actor_critic import ActorCritic
from agent.base import WorldModelAgent
from models.optim import Optimizer


class DreamerAgent(WorldModelAgent):
    init_from_keys = ("wm.rssm.", "wm.encoder.", "wm.decoder.")
    reward_free = False
    # Any agent's snapshot holds the world model this agent copies.
    loads_snapshots_of = ("*",)

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, task_reward_norm: dict,
                 task_actor_ent: float, **shared):
        super().__init__(obs_shape, action_dim, **shared)
        self.ac = ActorCritic(self.feat_dim, action_dim, reward_norm=task_reward_norm, actor_ent=task_actor_ent,
                              **self.ac_args)
        self.ready()

    def optimizers(self) -> dict[str, Optimizer]:
        return {"model": self.wm.opt, "actor": self.ac.actor_opt, "critic": self.ac.critic_opt}

    def policy(self, feat: torch.Tensor, meta, step: int, eval_mode: bool):
        return self.ac.actor(feat)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """World model, then the task actor-critic on the reward head (the same in every phase)."""
        post, _, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        metrics.update(self.update_behaviour("task_behaviour", self.ac, start, self.task_reward))
        return metrics
