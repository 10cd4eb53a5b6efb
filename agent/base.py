"""What every agent of this project shares, and the interface the scripts use (README "Adding an agent").

An agent owns a world model (docs/algorithm.md §3) and whatever it learns in imagination on top of
it. The scripts, ``collect.py`` and ``visualize_skills.py`` use only these methods:

* ``act(time_step, meta, step, eval_mode, state) -> (action, state)``: one environment action;
* ``init_meta() / update_meta(meta, step)``: the per-episode conditioning (a skill; empty for
  agents without skills);
* ``update(batch)`` (pre-training, or fine-tuning after ``finetune_mode()``) and
  ``update_offline(batch)``: one training step, returning metrics as tensors;
* ``finetune_mode()``, then ``init_from(modules)``: switch to fine-tuning and copy what a
  pre-training snapshot provides;
* ``snapshot_state() / load_snapshot_state(state)``: everything to save and resume.

and, about skills (``agent/report.py``, ``visualize_skills.py`` and the zero-shot evaluation ask
these, never the agent's class): ``has_skills``, ``skill_count``, ``skill_usage()``,
``skill_reconstruction(deter)``, ``skill_policy(feat, skill)`` and ``skill_for_goal(...)``. Agents
with skills derive from ``SkillAgent`` (agent/skill_agent.py), which implements them.

A subclass builds its parts in ``__init__`` after calling ``super().__init__`` and then calls
``self.ready()``; it names the parts a fine-tuning run copies from a snapshot in ``init_from_keys``.
Agents are built by ``utils.agents.build_agent`` with Hydra's ``instantiate`` from
``configs/agent/<name>.yaml``: the yaml's keys are the subclass's own arguments; the arguments below
come from the rest of the config.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from agent.actor_critic import ActorCritic, refresh_target
from agent.meta_controller import MetaController
from agent.world_model import WorldModel, preprocess_obs
from models.compiled import compiled
from models.conv import ConvDecoder
from models.cuda_graph import GraphStages
from models.optim import Optimizer, trainable
from models.recompute import over_rows
from models.rssm import RSSM, State, flatten_state

LatentState = tuple[State, torch.Tensor]
# The keys of every agent yaml that this base class takes (the rest are the subclass's own).
AGENT_YAML_BASE_KEYS = ("name", "grad_heads")


class WorldModelAgent(nn.Module):
    # Which parts of a pre-training snapshot fine-tuning copies (state-dict key prefixes).
    init_from_keys: tuple[str, ...] = ("wm.rssm.", "wm.encoder.", "wm.decoder.")
    # Whether pretrain.py can run this agent (an agent that needs a task reward cannot).
    reward_free: bool = True
    # Snapshots of which other agents fine-tuning may start from (besides its own).
    loads_snapshots_of: tuple[str, ...] = ()
    # Whether the agent has skills (a SkillAgent): the skill interface below answers for agents without.
    has_skills: bool = False

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, *, name: str, device: torch.device, seed: int,
                 precision: int, world_model: dict, behaviour: dict, actor: dict, critic: dict, actor_opt: dict,
                 critic_opt: dict, reward_head: dict, model_opt: dict, imag_horizon: int, imag_starts: int | None,
                 grad_heads: list[str], action_repeat: int = 1, mode: str = "fast", low_memory: bool = False,
                 cuda_graphs: bool = True, compile: bool = False):
        super().__init__()
        if precision not in (16, 32):
            raise ValueError(f"precision={precision} is not supported; valid: 32, 16")
        if mode not in ("fast", "eager"):
            raise ValueError(f"mode={mode!r} is not supported; valid: fast, eager")
        self.name = name
        self.device = torch.device(device)
        self.precision = precision
        # eager: the plain implementation, kept to measure the speed work against (bench/speed.py).
        self.fast = mode == "fast"
        # Recompute activations in the backward pass instead of storing them (models/recompute.py).
        self.low_memory = bool(low_memory)
        # torch.compile of the sequential steps (models/compiled.py); not with recomputation.
        self.compile = bool(compile) and self.fast and not self.low_memory
        # Each part of the update recorded once as a CUDA graph and replayed (models/cuda_graph.py).
        # Not with low_memory: recomputation saves and restores the generator state, which a
        # recording cannot do.
        self.stages = GraphStages(bool(cuda_graphs) and self.fast and self.device.type == "cuda"
                                  and not self.low_memory)
        self.action_dim = action_dim
        self.action_repeat = action_repeat
        self.imag_horizon = imag_horizon
        self.imag_starts = imag_starts
        self.rng = np.random.default_rng(seed)
        self.is_ft = False
        self.wm = WorldModel(obs_shape, action_dim, reward_head=reward_head, model_opt=model_opt,
                             grad_heads=list(grad_heads), **world_model)
        self.feat_dim = self.wm.rssm.feat_dim
        self.reward_head_cfg, self.model_opt_cfg = reward_head, model_opt
        # The arguments every imagination actor-critic takes.
        self.ac_args = dict(actor=actor, critic=critic, actor_opt=actor_opt, critic_opt=critic_opt, fast=self.fast,
                            low_memory=self.low_memory, **behaviour)

    def ready(self) -> None:
        """Called by a subclass once its parts exist: device, speed mode, frozen parameters, graphs."""
        self.to(self.device)
        self.apply_speed_mode()
        # Every parameter stays frozen outside its own update (docs/algorithm.md §10.2).
        self.requires_grad_(False)
        self.prepare_graphs()

    # ----------------------------------------------------------------- optimisers and precision
    def optimizers(self) -> dict[str, Optimizer]:
        """Every optimiser of the current phase by name (saved in snapshots and checkpoints)."""
        return {"model": self.wm.opt}

    def prepare_graphs(self) -> None:
        """Forget recorded stages (their modules or optimiser states were replaced) and set the
        optimisers' step counters where a recording needs them."""
        self.stages.reset()
        for opt in self.optimizers().values():
            opt.set_capturable(self.stages.enabled)

    def apply_speed_mode(self) -> None:
        """Module-level parts of the fast mode. ELUs overwrite their input, which every layer here
        (linear, convolution, layer norm) leaves unused in its backward pass, so autograd keeps one
        tensor per layer instead of two and no output buffer is allocated; the pixel decoder's first
        layer runs as a matrix product; the RSSM's prior head runs once after the posterior loop."""
        for module in self.modules():
            if isinstance(module, nn.ELU):
                module.inplace = self.fast
            if isinstance(module, ConvDecoder):
                module.first_as_matmul = self.fast
            if isinstance(module, RSSM):
                module.batched_prior = self.fast
                module.compiled_obs_step = compiled(module.obs_step, "obs_step") if self.compile else None
            if isinstance(module, ActorCritic):
                module.compiled_step = compiled(module.imagination_step, "imagination step") if self.compile else None
            if isinstance(module, MetaController):
                module.compiled_step = compiled(module.executor_step, "executor step") if self.compile else None

    def autocast(self):
        if self.precision == 16:
            # A recording may not keep autocast's cache of cast weights across calls.
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.stages.enabled)
        return contextlib.nullcontext()

    # --------------------------------------------------------------------------------- fine-tuning
    def finetune_mode(self) -> None:
        """Switch to the fine-tuning phase; a subclass replaces its pre-training parts, then calls this."""
        self.is_ft = True
        self.ready()

    def init_from(self, pretrained: dict[str, torch.Tensor]) -> None:
        """Copy the parts named by ``init_from_keys`` from a pre-training state dict; a part whose shape
        differs from this agent's is refused."""
        copied = {key: value for key, value in pretrained.items() if key.startswith(self.init_from_keys)}
        own = self.state_dict()
        mismatched = [key for key, value in copied.items() if key not in own or own[key].shape != value.shape]
        if mismatched:
            key = mismatched[0]
            found = tuple(copied[key].shape)
            expected = tuple(own[key].shape) if key in own else "missing"
            raise ValueError(f"the snapshot's networks differ from this config's ({key}: snapshot {found}, "
                             f"config {expected}); use the sizes it was pre-trained with (e.g. the same preset=)")
        self.load_state_dict(copied, strict=False)
        self.requires_grad_(False)
        self.prepare_graphs()

    # ----------------------------------------------------------------------------- skills (meta)
    def init_meta(self) -> np.ndarray:
        """The episode's conditioning vector; agents without skills have none."""
        return np.zeros(0, dtype=np.float32)

    def update_meta(self, meta: np.ndarray, step: int) -> np.ndarray:
        return meta

    # --------------------------------------------------------------------- the skill interface
    @property
    def skill_count(self) -> int:
        """How many skills there are to show or pick from (0: none)."""
        return 0

    def skill_usage(self) -> np.ndarray | None:
        """How much each skill was used (skill_count,), where the method counts it; None otherwise."""
        return None

    def skill_reconstruction(self, deter: torch.Tensor) -> State | None:
        """Latent states (..., ) rebuilt from deterministic states ``deter`` (..., D) through the skill
        bottleneck, for the open-loop video's skill row; None for a method without one."""
        return None

    def skill_for_goal(self, goal_observation: np.ndarray, goal_steps: int, mode: str, time_step: dict
                       ) -> np.ndarray:
        """The skill (a meta vector) for reaching a goal observation (docs/decisions.md D8)."""
        raise NotImplementedError(f"agent={self.name} has no skills to pick for a goal")

    # ------------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def observe(self, time_step: dict, state: LatentState | None, sample: bool = True) -> tuple[State, torch.Tensor]:
        """Posterior latent and feature after seeing ``time_step`` (batch of one)."""
        obs = torch.as_tensor(time_step["observation"], device=self.device).unsqueeze(0)
        if state is None:
            latent = self.wm.rssm.initial(1, self.device)
            prev_action = torch.zeros(1, self.action_dim, device=self.device)
        else:
            latent, prev_action = state
        is_first = torch.tensor([float(time_step["is_first"])], device=self.device)
        embed = self.wm.encoder(preprocess_obs(obs))
        latent, _ = self.wm.rssm.obs_step(latent, prev_action, embed, is_first, sample, with_prior=False)
        return latent, self.wm.rssm.feat(latent)

    @torch.no_grad()
    def act(self, time_step: dict, meta: np.ndarray, step: int, eval_mode: bool,
            state: LatentState | None) -> tuple[np.ndarray, LatentState]:
        """An action for the current phase (docs/algorithm.md §10.1): a sample, or the mean when evaluating."""
        latent, feat = self.observe(time_step, state)
        dist = self.policy(feat, meta, step, eval_mode)
        action = dist.mode() if eval_mode else dist.sample()
        return action[0].cpu().numpy(), (latent, action)

    def policy(self, feat: torch.Tensor, meta: np.ndarray, step: int, eval_mode: bool):
        """The action distribution for the model feature ``feat`` (1, F)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- training
    def update_world_model(self, batch: dict[str, torch.Tensor]) -> tuple[State, torch.Tensor, dict]:
        post, kl, metrics = self.stages.run("world_model", self._world_model_step, batch)
        return post, kl, dict(metrics)

    def _world_model_step(self, batch: dict[str, torch.Tensor]) -> tuple[State, torch.Tensor, dict]:
        with trainable(self.wm):
            with self.autocast():
                loss, post, kl, metrics = self.wm.loss(batch)
            metrics.update(self.wm.opt(loss))
        return post, kl, metrics

    def imagination_starts(self, post: State) -> State:
        start = {key: value.detach() for key, value in flatten_state(post).items()}
        count = start["deter"].shape[0]
        if self.imag_starts and self.imag_starts < count:
            pick = torch.randperm(count, device=self.device)[: self.imag_starts]
            start = {key: value[pick] for key, value in start.items()}
        return start

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One training step of the current phase."""
        raise NotImplementedError

    def update_offline(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One offline pre-training step (no environment): by default the pre-training step."""
        return self.update(batch)

    def update_behaviour(self, stage: str, ac: ActorCritic, start: State, reward_fn, cond=None) -> dict:
        """One actor-critic step in imagination as a (graph-recordable) stage, then its target refresh."""
        def step(start):
            with self.autocast():
                return ac.update_step(self.wm.rssm, start, self.imag_horizon, reward_fn, cond=cond)
        metrics = dict(self.stages.run(stage, step, start))
        refresh_target(ac)
        return metrics

    def task_reward(self, _states: State, feat: torch.Tensor, _actions: torch.Tensor | None = None) -> torch.Tensor:
        """The reward head's prediction on imagined features (the fine-tuning task's reward)."""
        return over_rows(lambda x: self.wm.reward_head(x).mean, feat, self.low_memory).squeeze(-1)

    # --------------------------------------------------------------------------------- snapshots
    def snapshot_state(self) -> dict:
        return {"name": self.name, "phase": "finetune" if self.is_ft else "pretrain", "modules": self.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
                "rng": self.rng.bit_generator.state}

    def load_snapshot_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        self.rng.bit_generator.state = state["rng"]
        self.requires_grad_(False)
        self.prepare_graphs()
