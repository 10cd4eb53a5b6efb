"""What every agent with skills shares (docs/algorithm.md §14.5): Choreographer, DIAYN and APS
(agent/choreo.py, agent/diayn.py, agent/aps.py) are each this base, a skill model and a skill reward.

* Skills and their cadence: ``init_meta`` draws the episode's skill (``sample_skill``: a one-hot of
  ``skill_dim`` by default), ``update_meta`` draws a new one every ``update_skill_every_step`` steps;
  ``random_skills(n)`` draws the skills of the imagined rollouts the same way on the device.
* The skill-conditioned policy ``skill_ac`` (an ActorCritic on concat(feature, skill), ``cond_dim =
  skill_dim``, metrics prefixed ``skill_``), trained in imagination on ``skill_reward(skill)`` with
  ``skill_reward_norm`` and ``skill_actor_ent`` (``update_skill_behaviour``). A subclass builds it
  with ``build_skill_policy()`` where its parameters should be drawn (the order of construction sets
  the initial weights).
* Pre-training acts with ``exploration_policy`` (by default the skill policy on the episode's skill,
  as URLB's skill methods explore; Choreographer overrides it with its LBS explorer).
* Fine-tuning (``finetune_mode``), after a reward gate (no behaviour learning until a batch holds a
  reward above 1e-4) and ``num_init_frames`` of random skills: ``finetune_adaptation()`` is
  - ``"meta"``: the meta-controller (agent/meta_controller.py, docs/algorithm.md §8.2) picks a skill
    at every step and fine-tunes the skill policy as its executor (not with ``freeze_skills``);
  - ``"fixed"``: one task skill, the buffer ``task_skill``, inferred by the subclass's
    ``infer_task_skill`` on each gated update; the skill policy conditioned on it is fine-tuned on
    the reward head's prediction (no actor step with ``freeze_skills``).
* The skill interface of agent/base.py: ``skill_count``, ``skill_policy``, ``skill_for_goal``
  (zero-shot goal reaching, docs/decisions.md D8: ``nearest`` asks the subclass's
  ``goal_skill(goal_state)``, ``imagine`` imagines every ``candidate_skills()`` row from the current
  observation and takes the one that ends nearest the goal's deterministic state).
"""
from __future__ import annotations

import numpy as np
import torch

from agent.actor_critic import ActorCritic, refresh_target
from agent.base import WorldModelAgent
from agent.meta_controller import MetaController
from models.distributions import one_hot
from models.normalise import StreamNorm
from models.optim import Optimizer
from models.rssm import State


class SkillAgent(WorldModelAgent):
    """Abstract. A subclass builds its parts after ``super().__init__`` (``build_skill_policy()`` among
    them), calls ``self.ready()``, and implements ``skill_reward`` and ``update_pretrain`` (and, where it
    has them, ``skill_model_optimizers``, ``exploration_optimizers``, ``drop_exploration``,
    ``goal_skill``/``goal_skill_scores`` and ``infer_task_skill``)."""
    has_skills = True
    init_from_keys = ("wm.rssm.", "wm.encoder.", "wm.decoder.", "skill_ac.actor.")

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, skill_dim: int, skill_reward_norm: dict,
                 skill_actor_ent: float, update_skill_every_step: int, num_init_frames: int, freeze_skills: bool,
                 **shared):
        super().__init__(obs_shape, action_dim, **shared)
        self.skill_dim = skill_dim
        self.update_skill_every_step = update_skill_every_step
        self.init_steps = num_init_frames // self.action_repeat
        self.freeze_skills = freeze_skills
        self._skill_ac_settings = dict(reward_norm=skill_reward_norm, actor_ent=skill_actor_ent)
        # Fine-tuning gate (docs/algorithm.md §8.3): random skills and no behaviour learning until a
        # training batch holds a reward above 1e-4. A tensor (saved with the agent), read on the host
        # only until it is set: then the host copy answers and updates no longer wait on the device.
        self.register_buffer("reward_seen", torch.zeros((), dtype=torch.bool))
        self._gate_open = False
        self._meta_args = dict(feat_dim=self.feat_dim, skill_dim=skill_dim, **self.ac_args)

    def build_skill_policy(self) -> None:
        self.skill_ac = ActorCritic(self.feat_dim, self.action_dim, cond_dim=self.skill_dim, prefix="skill_",
                                    **self._skill_ac_settings, **self.ac_args)

    # ----------------------------------------------------------------- what a subclass supplies
    def skill_reward(self, skill: torch.Tensor):
        """The reward function (states, feat, actions) -> (H+1, N) of rollouts conditioned on ``skill`` (N, K)."""
        raise NotImplementedError

    def update_pretrain(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def skill_model_optimizers(self) -> dict[str, Optimizer]:
        """The optimisers of the skill model (kept in every phase)."""
        return {}

    def exploration_optimizers(self) -> dict[str, Optimizer]:
        """The optimisers of the pre-training-only parts."""
        return {}

    def drop_exploration(self) -> None:
        """Remove the pre-training-only parts (called by ``finetune_mode``)."""

    def finetune_adaptation(self) -> str:
        """``"meta"`` or ``"fixed"`` (module docstring)."""
        return "meta"

    def infer_task_skill(self, post: State, start: State, batch: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``"fixed"`` adaptation: the task skill (K,) from this gated fine-tuning batch, and metrics."""
        raise NotImplementedError

    def goal_skill_scores(self, goal: State) -> torch.Tensor:
        """How well each skill (K,) reaches the goal's latent state (batch of one); higher is better."""
        raise NotImplementedError

    def goal_skill(self, goal: State) -> torch.Tensor:
        """The skill (K,) for a goal's latent state: by default the one-hot of the best score."""
        index = int(self.goal_skill_scores(goal).argmax())
        return torch.eye(self.skill_dim, device=self.device)[index]

    def candidate_skills(self) -> torch.Tensor:
        """The skills (C, K) ``skill_for_goal(mode="imagine")`` tries: every one-hot by default."""
        return torch.eye(self.skill_dim, device=self.device)

    # ----------------------------------------------------------------- optimisers and precision
    def optimizers(self) -> dict[str, Optimizer]:
        optimizers = {"model": self.wm.opt, **self.skill_model_optimizers(),
                      "skill_actor": self.skill_ac.actor_opt, "skill_critic": self.skill_ac.critic_opt}
        if not self.is_ft:
            optimizers.update(self.exploration_optimizers())
        elif hasattr(self, "meta"):
            optimizers.update(self.meta.optimizers())
        return optimizers

    # --------------------------------------------------------------------------------- fine-tuning
    def finetune_mode(self) -> None:
        """Switch to fine-tuning (docs/algorithm.md §8.1): the pre-training-only parts go, the skill
        policy's rewards are no longer normalised, and the meta-controller (whose executor is the skill
        policy) or the task-skill buffer comes."""
        self.drop_exploration()
        self.skill_ac.reward_norm = StreamNorm(momentum=1.0)
        adaptation = self.finetune_adaptation()
        if adaptation == "meta":
            self.meta = MetaController(executor=self.skill_ac.actor, train_executor=not self.freeze_skills,
                                       **self._meta_args)
        elif adaptation == "fixed":
            self.register_buffer("task_skill", torch.zeros(self.skill_dim))
        else:
            raise ValueError(f"unknown fine-tuning adaptation {adaptation!r}; valid: meta, fixed")
        super().finetune_mode()

    # ----------------------------------------------------------------------------- skills (meta)
    def sample_skill(self) -> np.ndarray:
        """One skill for an episode, from the agent's generator: a uniform one-hot."""
        skill = np.zeros(self.skill_dim, dtype=np.float32)
        skill[self.rng.integers(self.skill_dim)] = 1.0
        return skill

    def init_meta(self) -> np.ndarray:
        return self.sample_skill()

    def update_meta(self, meta: np.ndarray, step: int) -> np.ndarray:
        return self.init_meta() if step % self.update_skill_every_step == 0 else meta

    def random_skills(self, count: int) -> torch.Tensor:
        """``count`` skills (count, K) for imagined rollouts: uniform one-hots."""
        index = torch.randint(self.skill_dim, (count,), device=self.device)
        return one_hot(index, torch.empty(count, self.skill_dim, device=self.device))

    # ------------------------------------------------------------------------------------ acting
    def exploration_policy(self, feat: torch.Tensor, meta: np.ndarray):
        """Pre-training's behaviour: the skill policy on the episode's skill."""
        skill = torch.as_tensor(meta, device=self.device).unsqueeze(0)
        return self.skill_ac.actor(torch.cat([feat, skill], -1))

    def policy(self, feat: torch.Tensor, meta: np.ndarray, step: int, eval_mode: bool):
        """Pre-training: ``exploration_policy``. Fine-tuning: the skill policy on ``meta`` (a random
        skill) until ``num_init_frames`` have passed and a reward was seen, then on the skill the
        meta-controller picks at every step, or on the task skill."""
        if not self.is_ft:
            return self.exploration_policy(feat, meta)
        if self.adapting(step):
            if hasattr(self, "meta"):
                selector = self.meta.selector(feat)
                skill = selector.mode() if eval_mode else selector.sample()
            else:
                skill = self.task_skill.unsqueeze(0)
        else:
            skill = torch.as_tensor(meta, device=self.device).unsqueeze(0)
        return self.skill_ac.actor(torch.cat([feat, skill], -1))

    def adapting(self, step: int) -> bool:
        """Whether fine-tuning's adaptation drives the skills (after the initial phase)."""
        return self.is_ft and step >= self.init_steps and self.gate_open()

    def gate_open(self) -> bool:
        if not self._gate_open:
            self._gate_open = bool(self.reward_seen)
        return self._gate_open

    # --------------------------------------------------------------------- the skill interface
    @property
    def skill_count(self) -> int:
        return self.skill_dim

    def skill_policy(self, feat: torch.Tensor, skill: torch.Tensor):
        """The skill policy's action distribution for features (N, F) and skills (N, K)."""
        return self.skill_ac.actor(self.skill_ac.policy_input(feat, skill))

    @torch.no_grad()
    def goal_state(self, goal_observation: np.ndarray, steps: int) -> State:
        """Latent state (batch of one) after seeing the goal observation ``steps`` times with zero
        actions: the first posterior step cannot depend on the observation, so one is not enough.
        The most likely latents are taken rather than samples, so the answer is repeatable."""
        state = None
        for i in range(max(1, steps)):
            latent, _ = self.observe({"observation": goal_observation, "is_first": i == 0}, state, sample=False)
            state = (latent, torch.zeros(1, self.action_dim, device=self.device))
        return latent

    def goal_latent(self, goal_observation: np.ndarray, steps: int) -> torch.Tensor:
        """The goal's deterministic state (1, D) (``goal_state``)."""
        return self.goal_state(goal_observation, steps)["deter"]

    @torch.no_grad()
    def skill_for_goal(self, goal_observation: np.ndarray, goal_steps: int, mode: str, time_step: dict
                       ) -> np.ndarray:
        """Skill for reaching a goal (docs/decisions.md D8). ``nearest``: the method's own pick for the
        goal's latent state (``goal_skill``); ``imagine``: the candidate skill whose imagined rollout of
        ``update_skill_every_step`` steps from the current observation ends nearest the goal's
        deterministic state."""
        goal = self.goal_state(goal_observation, goal_steps)
        if mode == "nearest":
            skill = self.goal_skill(goal)
        elif mode == "imagine":
            skills = self.candidate_skills()
            latent, _ = self.observe(time_step, None)
            start = {key: value.expand(skills.shape[0], *value.shape[1:]) for key, value in latent.items()}
            states, _ = self.skill_ac.imagine(self.wm.rssm, start, self.update_skill_every_step, cond=skills)
            reached = states["deter"][-1]
            skill = skills[int((reached - goal["deter"]).norm(dim=-1).argmin())]
        else:
            raise ValueError(f"unknown goal_skill '{mode}'; valid: nearest, imagine, none")
        return skill.float().cpu().numpy().astype(np.float32)

    # ---------------------------------------------------------------------------------- training
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One training step: ``update_pretrain`` or, after ``finetune_mode``, ``update_finetune``."""
        if self.is_ft:
            return self.update_finetune(batch)
        return self.update_pretrain(batch)

    def update_finetune(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One fine-tuning step (docs/algorithm.md §10.2): world model, then, once a reward was seen,
        the meta-controller or the task skill and the skill policy on it."""
        post, _, metrics = self.update_world_model(batch)
        if not self._gate_open:
            self.reward_seen |= (batch["reward"] > 1e-4).any()
        if self.gate_open():
            start = self.imagination_starts(post)
            if hasattr(self, "meta"):
                metrics.update(self.stages.run("meta_controller", self._meta_step, start))
                refresh_target(self.meta)
            else:
                metrics.update(self.update_task_skill(post, start, batch))
        return metrics

    def _meta_step(self, start: State) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.meta.update_step(self.wm.rssm, start, self.imag_horizon, self.wm.reward_head)

    def update_task_skill(self, post: State, start: State, batch: dict[str, torch.Tensor]
                          ) -> dict[str, torch.Tensor]:
        skill, metrics = self.infer_task_skill(post, start, batch)
        self.task_skill.copy_(skill.detach().to(self.task_skill.dtype))
        if not self.freeze_skills:
            cond = self.task_skill.expand(start["deter"].shape[0], -1)
            metrics.update(self.update_behaviour("task_behaviour", self.skill_ac, start, self.task_reward, cond=cond))
        return metrics

    def update_skill_behaviour(self, start: State) -> dict[str, torch.Tensor]:
        """The skill policy in imagination on the skill reward of random skills (docs/algorithm.md §7.4)."""
        metrics = dict(self.stages.run("skill_behaviour", self._skill_behaviour_step, start))
        refresh_target(self.skill_ac)
        return metrics

    def _skill_behaviour_step(self, start: State) -> dict[str, torch.Tensor]:
        skill = self.random_skills(start["deter"].shape[0])
        with self.autocast():
            return self.skill_ac.update_step(self.wm.rssm, start, self.imag_horizon, self.skill_reward(skill),
                                             cond=skill)

    # --------------------------------------------------------------------------------- snapshots
    def load_snapshot_state(self, state: dict) -> None:
        super().load_snapshot_state(state)
        self._gate_open = False


class RolloutSkillAgent(SkillAgent):
    """A skill method whose skill model trains on the skill policy's own imagined rollout (DIAYN's
    discriminator, APS's features; docs/algorithm.md §14.6-14.7): one pre-training update is the world
    model, the skill actor-critic on random skills (its detached rollout kept), then the skill model
    on that rollout's states after the start, as the stage ``skill_model_stage``. A subclass implements
    ``update_skill_model(feat, skill)``."""
    skill_model_stage = "skill_model"

    def update_skill_model(self, feat: torch.Tensor, skill: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step of the skill model on imagined features (H, N, F) and their skills (H, N, K)."""
        raise NotImplementedError

    def update_pretrain(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        post, _, metrics = self.update_world_model(batch)
        metrics.update(self.update_skill_behaviour(self.imagination_starts(post)))
        return metrics

    def update_skill_behaviour(self, start: State) -> dict[str, torch.Tensor]:
        metrics, feat, skill = self.stages.run("skill_behaviour", self._skill_behaviour_step, start)
        refresh_target(self.skill_ac)
        metrics = dict(metrics)
        metrics.update(self.stages.run(self.skill_model_stage, self._skill_model_step, feat, skill))
        return metrics

    def _skill_behaviour_step(self, start: State):
        skill = self.random_skills(start["deter"].shape[0])
        with self.autocast():
            metrics, rollout = self.skill_ac.update_step(self.wm.rssm, start, self.imag_horizon,
                                                         self.skill_reward(skill), cond=skill, keep_rollout=True)
        return metrics, rollout["feat"], skill

    def _skill_model_step(self, feat: torch.Tensor, skill: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.update_skill_model(feat[1:], skill.expand(feat.shape[0] - 1, *skill.shape))
