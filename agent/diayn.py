"""DIAYN (Eysenbach et al. 2019, "Diversity is All You Need") on the shared world model, as the
Dreamer-based URLB runs it (Rajeswar et al. 2023): skills that a discriminator can tell apart from the
states they reach (docs/algorithm.md §14.6).

* Skills: ``skill_dim`` one-hots, p(z) uniform; the episode's skill is redrawn every
  ``update_skill_every_step`` steps (agent/skill_agent.py).
* Discriminator q(z | s): an MLP from the model feature to ``skill_dim`` logits (sizes
  ``agent.discriminator``, by default the reward head's), log q = log_softmax(logits).
* Skill reward of an imagined state s_i of a rollout conditioned on z:

      r(s_i, z) = diayn_scale * (log q(z | s_i) - log p(z)) = diayn_scale * (log q(z | s_i) + log skill_dim)

  differentiable in the imagined feature through the discriminator (the actor's dynamics gradient),
  no normalisation (``skill_reward_norm.momentum: 1``).
* Pre-training, one update: the world model; the skill actor-critic in imagination on that reward,
  a random skill per start state; then the discriminator on the same (detached) rollout, every
  imagined state after the start with the skill that produced it:

      L_disc = - mean_{i >= 1, n} log q(z_n | sg s_{i,n})

  (optimiser ``discriminator``, ``model_opt`` settings). The skill policy acts in the environment on
  the episode's skill (as URLB's DIAYN explores): there is no separate exploration actor.
  ``update_offline`` is the same step.
* Fine-tuning (``agent.finetune_skill``): ``best`` (default) fixes the skill that best explains the
  replay's high-return behaviour, the Dreamer-based URLB's rule: over a batch of B sequences,

      score(z) = mean_b R_b * sum_t log pi(a_{t+1} | f_t, z),    R_b = sum_t r_{t+1}

  (f_t the posterior feature, a_{t+1} and r_{t+1} the action taken from it and its reward, replay rows
  t+1; pairs whose row t+1 starts an episode are left out), as a running mean over the gated
  fine-tuning updates; the skill policy is fine-tuned on the best-scoring skill. ``meta`` runs
  Choreographer's meta-controller over the skills instead.
* Zero-shot goals (``skill_for_goal``, ``nearest``): the skill the discriminator finds most likely
  for the goal observation's latent state.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from agent.skill_agent import RolloutSkillAgent
from models.mlp import MSEHead
from models.optim import Optimizer, trainable
from models.recompute import over_rows
from models.rssm import State

FINETUNE_SKILL = ("best", "meta")


class Discriminator(nn.Module):
    """q(z | s) over the model feature; optimiser ``discriminator``."""

    def __init__(self, feat_dim: int, skill_dim: int, layers: int, units: int, norm: str, opt: dict):
        super().__init__()
        self.head = MSEHead(feat_dim, skill_dim, layers, units, norm)
        self.opt = Optimizer("discriminator", self.head.parameters(), **opt)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """log q(. | s) (..., K) for features (..., F), in float32."""
        return torch.log_softmax(self.head(feat).mean.float(), -1)

    def update(self, feat: torch.Tensor, skill: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on detached features (..., F) and the one-hot skills (..., K) that reached them."""
        with trainable(self.head):
            log_q = self(feat.detach())
            metrics = self.opt(-(log_q * skill.float()).sum(-1).mean())
        metrics["discriminator_accuracy"] = (log_q.argmax(-1) == skill.argmax(-1)).float().mean().detach()
        return metrics


class DIAYNAgent(RolloutSkillAgent):
    skill_model_stage = "discriminator"
    init_from_keys = ("wm.rssm.", "wm.encoder.", "wm.decoder.", "skill_ac.actor.", "discriminator.")

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, discriminator: dict, diayn_scale: float,
                 finetune_skill: str, **skill_settings):
        super().__init__(obs_shape, action_dim, **skill_settings)
        if finetune_skill not in FINETUNE_SKILL:
            raise ValueError(f"agent.finetune_skill={finetune_skill!r}; valid: {', '.join(FINETUNE_SKILL)}")
        self.diayn_scale, self.finetune_skill = float(diayn_scale), finetune_skill
        self.discriminator = Discriminator(self.feat_dim, self.skill_dim, discriminator["layers"],
                                           discriminator["units"], discriminator["norm"], self.model_opt_cfg)
        self.build_skill_policy()
        self.ready()

    # ------------------------------------------------------------------------- the SkillAgent parts
    def skill_model_optimizers(self) -> dict[str, Optimizer]:
        return {"discriminator": self.discriminator.opt}

    def finetune_adaptation(self) -> str:
        return "meta" if self.finetune_skill == "meta" else "fixed"

    def finetune_mode(self) -> None:
        if self.finetune_skill == "best":
            # Running mean of each skill's score, and how many gated updates it averages.
            self.register_buffer("skill_scores", torch.zeros(self.skill_dim))
            self.register_buffer("skill_evaluations", torch.zeros(()))
        super().finetune_mode()

    def skill_reward(self, skill: torch.Tensor):
        """diayn_scale * (log q(z | s) + log K) of every imagined state (H+1, N)."""
        def reward(_states: State, feat: torch.Tensor, _actions: torch.Tensor | None = None) -> torch.Tensor:
            log_q = over_rows(self.discriminator, feat, self.low_memory)
            return (self.diayn_scale * ((log_q * skill).sum(-1) + math.log(self.skill_dim))).to(feat.dtype)
        return reward

    # ---------------------------------------------------------------------------------- training
    def update_skill_model(self, feat: torch.Tensor, skill: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.discriminator.update(feat, skill)

    @torch.no_grad()
    def infer_task_skill(self, post: State, start: State, batch: dict[str, torch.Tensor]):
        """``best``: score(z) = mean_b R_b * sum_t log pi(a_{t+1} | f_t, z) on this batch (module
        docstring) into the running mean; the task skill is the best mean's."""
        feat = self.wm.rssm.feat(post)[:, :-1].detach()
        action = batch["action"][:, 1:].to(feat.device).float()
        # Row t+1 holds the action taken from f_t, unless it starts an episode (a reset's zero action).
        taken = (~batch["is_first"][:, 1:].to(feat.device).bool()).float()
        outcome = (batch["reward"][:, 1:].to(feat.device).float().reshape(taken.shape) * taken).sum(1)
        skills = torch.eye(self.skill_dim, device=self.device)
        # Outside autocast: a log-likelihood summed over a sequence needs float32.
        policy = self.skill_ac.actor(self.skill_ac.policy_input(
            feat.float().unsqueeze(0).expand(self.skill_dim, *feat.shape),
            skills[:, None, None, :].expand(-1, *feat.shape[:2], -1)))
        log_likelihood = (policy.log_prob(action.unsqueeze(0)) * taken).sum(-1)  # (K, B)
        scores = (log_likelihood * outcome).mean(-1)
        self.skill_evaluations.add_(1)
        self.skill_scores.add_((scores - self.skill_scores) / self.skill_evaluations)
        best = self.skill_scores.argmax()
        return skills[best], {"task_skill": best.float()}

    # ------------------------------------------------------------------------- skill interface
    @torch.no_grad()
    def goal_skill_scores(self, goal: State) -> torch.Tensor:
        """log q(z | goal) of every skill."""
        return self.discriminator(self.wm.rssm.feat(goal))[0]
