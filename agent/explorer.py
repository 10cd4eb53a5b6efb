"""Exploration baselines on the shared world model (the Dreamer-based URLB protocol).

``ExplorationAgent`` is what LBS, Plan2Explore, APT, ICM and RND (agent/lbs.py, agent/plan2explore.py,
agent/apt.py, agent/icm.py, agent/rnd.py) have in common; a subclass supplies only its intrinsic
reward and, where it has one, the model that reward comes from.

* Pre-training, one update on one replay batch: (1) the world model (docs/algorithm.md §3.4);
  (2) start states = the detached posterior states; (3) the intrinsic model (``update_intrinsic``,
  on the posterior, the per-step KL and the batch); (4) the actor-critic ``ac`` in imagination (§5)
  on ``intrinsic_reward(states, feat, actions)`` of the imagined rollout, normalised by StreamNorm
  with ``agent.reward_norm`` and entropy scale ``agent.actor_ent`` (Choreographer's exploration
  settings). The actor acts in the environment. ``update_offline`` (the base class's) is this same
  step: it needs no environment.
* Fine-tuning (``finetune_mode``): the intrinsic model is dropped and ``ac`` becomes a task
  actor-critic trained in imagination on the reward head's prediction (DreamerV2's task behaviour:
  ``agent.task_reward_norm``, momentum 1 = no normalisation, entropy ``agent.task_actor_ent``).
  Its actor starts from the exploration actor (``init_from`` copies ``ac.actor.`` with the world
  model's encoder, RSSM and decoder); its critic, the reward head and every optimiser start fresh.
  One update: world model, then the task actor-critic; from the first update on (no reward gate).
"""
from __future__ import annotations

import torch

from agent.actor_critic import ActorCritic
from agent.base import WorldModelAgent
from models.optim import Optimizer
from models.rssm import State


class ExplorationAgent(WorldModelAgent):
    """Abstract. A subclass builds its intrinsic model after ``super().__init__``, then calls
    ``self.ready()``, and implements ``intrinsic_reward`` (and, with a trained model,
    ``update_intrinsic`` and ``intrinsic_optimizers``). Its own yaml keys are keyword-only arguments of
    its ``__init__``; the ones below come through ``**settings`` (``utils.agents.check_agent_keys``
    collects the keyword-only arguments of every agent class in the hierarchy)."""
    init_from_keys = ("wm.rssm.", "wm.encoder.", "wm.decoder.", "ac.actor.")
    # Attributes holding the intrinsic model: removed by ``finetune_mode``.
    intrinsic_parts: tuple[str, ...] = ()

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, reward_norm: dict, actor_ent: float,
                 task_reward_norm: dict, task_actor_ent: float, **shared):
        super().__init__(obs_shape, action_dim, **shared)
        self.task_reward_norm, self.task_actor_ent = dict(task_reward_norm), float(task_actor_ent)
        self.ac = ActorCritic(self.feat_dim, action_dim, reward_norm=reward_norm, actor_ent=actor_ent, **self.ac_args)

    # ------------------------------------------------------------------------- the intrinsic model
    def intrinsic_reward(self, states: State, feat: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Reward (H+1, N) of imagined states (H+1, N, ...) with features ``feat`` (H+1, N, F), reached
        by ``actions`` (H+1, N, A): ``actions[i]`` led from state i-1 to state i, ``actions[0]`` is zero."""
        raise NotImplementedError

    def update_intrinsic(self, post: State, kl: torch.Tensor, batch: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        """One step of the intrinsic model on the batch's posterior (B, T, ...), per-step KL (B, T) and
        the batch itself (its ``action`` and ``is_first``, B, T, ...)."""
        return {}

    def intrinsic_optimizers(self) -> dict[str, Optimizer]:
        return {}

    # ----------------------------------------------------------------- optimisers and precision
    def optimizers(self) -> dict[str, Optimizer]:
        optimizers = {"model": self.wm.opt}
        if not self.is_ft:
            optimizers.update(self.intrinsic_optimizers())
        optimizers.update(actor=self.ac.actor_opt, critic=self.ac.critic_opt)
        return optimizers

    # --------------------------------------------------------------------------------- fine-tuning
    def finetune_mode(self) -> None:
        """Drop the intrinsic model; ``ac`` becomes the task actor-critic: the current actor's weights
        (init_from then copies the snapshot's), a fresh critic, target, normaliser and optimisers."""
        for part in self.intrinsic_parts:
            delattr(self, part)
        task_ac = ActorCritic(self.feat_dim, self.action_dim, reward_norm=self.task_reward_norm,
                              actor_ent=self.task_actor_ent, **self.ac_args)
        task_ac.actor.load_state_dict(self.ac.actor.state_dict())
        self.ac = task_ac
        super().finetune_mode()

    # ------------------------------------------------------------------------------------ acting
    def policy(self, feat: torch.Tensor, meta, step: int, eval_mode: bool):
        return self.ac.actor(feat)

    # ---------------------------------------------------------------------------------- training
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        post, kl, metrics = self.update_world_model(batch)
        start = self.imagination_starts(post)
        if self.is_ft:
            metrics.update(self.update_behaviour("task_behaviour", self.ac, start, self.task_reward))
            return metrics
        metrics.update(self.update_intrinsic(post, kl, batch))
        metrics.update(self.update_behaviour("exploration", self.ac, start, self.intrinsic_reward))
        return metrics
