"""Recurrent state-space model with discrete latents (docs/algorithm.md §3.2).

A latent state is a dict of tensors: ``logit`` and ``stoch`` of shape (..., stoch, discrete) and
``deter`` of shape (..., deter). The feature handed to every head is concat(flat stoch, deter).
``observe`` and ``imagine`` take and return batch-major (B, T, ...) tensors and scan time-major.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.distributions import OneHotCategorical, entropy_categorical, kl_categorical
from models.mlp import norm_layer
from models.recompute import recompute

State = dict[str, torch.Tensor]


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU: one Linear on concat(x, h) -> LayerNorm -> gates; update gate biased by -1."""

    def __init__(self, input_dim: int, hidden_dim: int, update_bias: float = -1.0):
        super().__init__()
        self.linear = nn.Linear(input_dim + hidden_dim, 3 * hidden_dim)
        self.norm = nn.LayerNorm(3 * hidden_dim)
        self.update_bias = update_bias

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h


class RSSM(nn.Module):
    def __init__(self, action_dim: int, embed_dim: int, deter: int = 200, hidden: int = 200,
                 stoch: int = 32, discrete: int = 32, norm: str = "none"):
        super().__init__()
        self.stoch, self.discrete, self.deter = stoch, discrete, deter
        flat = stoch * discrete
        self.prior_in = nn.Sequential(nn.Linear(flat + action_dim, hidden), norm_layer(norm, hidden), nn.ELU())
        self.cell = LayerNormGRUCell(hidden, deter)
        self.prior_out = nn.Sequential(nn.Linear(deter, hidden), norm_layer(norm, hidden), nn.ELU(),
                                       nn.Linear(hidden, flat))
        self.post_out = nn.Sequential(nn.Linear(deter + embed_dim, hidden), norm_layer(norm, hidden), nn.ELU(),
                                      nn.Linear(hidden, flat))
        self.batched_prior = False  # set by the agent's fast mode (observe)
        self.compiled_obs_step: Callable | None = None  # set by the agent with compile=true

    @property
    def feat_dim(self) -> int:
        return self.stoch * self.discrete + self.deter

    def initial(self, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> State:
        zeros = torch.zeros(batch, self.stoch, self.discrete, device=device, dtype=dtype)
        return {"logit": zeros, "stoch": zeros, "deter": torch.zeros(batch, self.deter, device=device, dtype=dtype)}

    @staticmethod
    def feat(state: State) -> torch.Tensor:
        stoch = state["stoch"]
        return torch.cat([stoch.reshape(*stoch.shape[:-2], -1), state["deter"]], -1)

    def _logits(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.reshape(*raw.shape[:-1], self.stoch, self.discrete)

    def img_step(self, prev: State, action: torch.Tensor, sample: bool = True) -> State:
        return self.prior_state(self.deter_step(prev, action), sample)

    def deter_step(self, prev: State, action: torch.Tensor) -> torch.Tensor:
        """The recurrent part of a step: the next deterministic state."""
        stoch = prev["stoch"].reshape(*prev["stoch"].shape[:-2], -1)
        x = self.prior_in(torch.cat([stoch, action], -1))
        return self.cell(x, prev["deter"])

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        return self._logits(self.prior_out(deter))

    def prior_state(self, deter: torch.Tensor, sample: bool = True) -> State:
        logit = self.prior_logits(deter)
        dist = OneHotCategorical(logit)
        return {"logit": logit, "stoch": dist.sample() if sample else dist.mode(), "deter": deter}

    def obs_step(self, prev: State, action: torch.Tensor, embed: torch.Tensor, is_first: torch.Tensor,
                 sample: bool = True, with_prior: bool = True) -> tuple[State, State | None]:
        """One posterior step; ``is_first`` (B,) resets the previous state and action to zero. The
        prior comes as logits and deter only (its sample is never used), or not at all."""
        keep = (1.0 - is_first.to(action.dtype)).unsqueeze(-1)
        prev = {"stoch": prev["stoch"] * keep.unsqueeze(-1), "deter": prev["deter"] * keep}
        deter = self.deter_step(prev, action * keep)
        logit = self._logits(self.post_out(torch.cat([deter, embed], -1)))
        dist = OneHotCategorical(logit)
        post = {"logit": logit, "stoch": dist.sample() if sample else dist.mode(), "deter": deter}
        prior = {"logit": self.prior_logits(deter), "deter": deter} if with_prior else None
        return post, prior

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None) -> tuple[State, State]:
        """Posterior and prior over a sequence: embed (B, T, E), action (B, T, A), is_first (B, T).

        With ``batched_prior`` (fast mode) the prior's head runs once over all steps after the
        loop instead of inside it: the same numbers, fewer and larger kernels in the sequential part.
        """
        batch, steps = embed.shape[:2]
        if state is None:
            state = self.initial(batch, embed.device, embed.dtype)
        obs_step = self.compiled_obs_step or self.obs_step
        posts, priors = [], []
        for t in range(steps):
            state, prior = obs_step(state, action[:, t], embed[:, t], is_first[:, t],
                                         with_prior=not self.batched_prior)
            posts.append(state)
            priors.append(prior)
        posts = _stack(posts, dim=1)
        if self.batched_prior:
            return posts, {"logit": self.prior_logits(posts["deter"]), "deter": posts["deter"]}
        return posts, _stack(priors, dim=1)

    def imagine_actions(self, actions: torch.Tensor, state: State) -> State:
        """Open-loop prior rollout under given actions (B, T, A), for prediction videos."""
        priors = []
        for t in range(actions.shape[1]):
            state = self.img_step(state, actions[:, t])
            priors.append(state)
        return _stack(priors, dim=1)

    def kl_loss(self, post: State, prior: State, balance: float, free: float,
                forward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """KL balancing with free nats applied after averaging (docs/algorithm.md §3.4).

        Returns (loss, per-step KL(post || sg(prior))) -- the latter is the LBS target.
        """
        lhs, rhs = (prior, post) if forward else (post, prior)
        mix = balance if forward else 1 - balance
        kl_lhs = kl_categorical(lhs["logit"], rhs["logit"].detach())
        kl_rhs = kl_categorical(lhs["logit"].detach(), rhs["logit"])
        # A clamp, not a maximum with a new tensor: no host-to-device copy inside a CUDA graph.
        loss = mix * kl_lhs.mean().clamp(min=free) + (1 - mix) * kl_rhs.mean().clamp(min=free)
        per_step = kl_lhs if not forward else kl_categorical(post["logit"], prior["logit"].detach())
        return loss, per_step

    @staticmethod
    def entropy(state: State) -> torch.Tensor:
        return entropy_categorical(state["logit"])


def _stack(states: list[State], dim: int) -> State:
    return {key: torch.stack([s[key] for s in states], dim) for key in states[0]}


def flatten_state(state: State) -> State:
    """(B, T, ...) -> (B*T, ...) for every key."""
    return {key: value.reshape(-1, *value.shape[2:]) for key, value in state.items()}


Policy = Callable[[torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


Step = Callable[[State], tuple[State, torch.Tensor, dict[str, torch.Tensor]]]


def imagine(rssm: RSSM, policy: Policy, start: State, horizon: int, recompute_steps: bool = False,
            step: Step | None = None) -> tuple[State, torch.Tensor, dict[str, torch.Tensor]]:
    """Roll the prior forward ``horizon`` steps from ``start`` (N, ...) under ``policy(feat, t)``,
    which returns the action and a dict of its own per-step outputs (an entropy, a chosen skill).

    Returns states stacked time-major (H+1, N, ...) with index 0 the start state, the actions
    (H+1, N, A) with a zero action at index 0 (docs/algorithm.md §5.1), and the policy outputs
    stacked to (H, N, ...). With ``recompute_steps`` each step keeps only its input state for the backward
    pass (models/recompute.py); the states then carry ``stoch`` and ``deter`` but no ``logit``.
    ``step(state) -> (next state, action, outputs)``, if given, replaces policy and ``img_step``
    together (a compiled version of both, ``compile=true``); not with ``recompute_steps``.
    """
    state = {key: start[key] for key in (("stoch", "deter") if recompute_steps else start)}
    states, actions, outputs = [state], [], []
    for t in range(horizon):
        if recompute_steps:
            stoch, deter, action, extra = recompute(_policy_step, rssm, policy, t, state["stoch"], state["deter"])
            state = {"stoch": stoch, "deter": deter}
        elif step is not None:
            state, action, extra = step(state)
        else:
            action, extra = policy(rssm.feat(state), t)
            state = rssm.img_step(state, action)
        states.append(state)
        actions.append(action)
        outputs.append(extra)
    actions.insert(0, torch.zeros_like(actions[0]))
    stacked = {key: torch.stack([extra[key] for extra in outputs], 0) for key in outputs[0]}
    return _stack(states, 0), torch.stack(actions, 0), stacked


def _policy_step(rssm: RSSM, policy: Policy, t: int, stoch: torch.Tensor, deter: torch.Tensor):
    action, extra = policy(rssm.feat({"stoch": stoch, "deter": deter}), t)
    state = rssm.img_step({"stoch": stoch, "deter": deter}, action)
    return state["stoch"], state["deter"], action, extra
