"""The baselines' actor-critic updates checked by value (issue #27, point 4): one whole ``update``
of LBS, Plan2Explore and APT (pre-training: exploration actor-critic on the intrinsic reward),
LBS after ``finetune_mode`` and Dreamer (the task actor-critic on the reward head), recomputed here
from docs/algorithm.md §4.1-§4.3, §5 and §14 on a fixed batch.

How (the approach of tests/test_losses.py, one step further from the code):

* a twin agent built from the same seed runs the parts of the update this file does not check (the
  world-model step, the imagination starts, the intrinsic model's step: tests/test_losses.py and
  tests/test_baselines.py check those), so the actor-critic sees the same inputs in the same order;
* the imagined rollout, the rewards, StreamNorm, the lambda-returns, the discount weights, the
  actor's dynamics-backprop objective with its entropy bonus, the critic's regression to the slow
  target's lambda-returns, and the first Adam step of both optimisers are then computed in float64
  torch from the spec's formulas and the networks' weights only. No module of the agent is called
  for an expected value (not ``img_step``, not the heads' ``forward``, not ``models/returns.py``,
  ``models/normalise.py``, ``models/distributions.py`` or ``models/optim.py``): Linear, LayerNorm and
  ELU layers are read and applied by hand, as are the RSSM's prior step (§3.2) and the GRU;
* the torch generator is replayed: the twin and the re-derivation draw from a saved random state,
  the real agent's ``update`` from the same one, and both must end in the same state (the same
  draws: a Normal per action dimension, then one uniform per latent variable, per step).

Compared: actor_loss, critic_loss and their gradient norms, critic_slow, critic_target, critic,
actor_ent, the reward metrics, StreamNorm's new magnitude, every actor and critic parameter after
the step, and the slow target's first refresh (a hard copy of the updated critic). rtol 1e-5.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY, compose_config
from conftest import synthetic_batch as conftest_batch
from utils.runner import build_agent

OBS_DIM, ACTION_DIM = 24, 6
RTOL = 1e-5
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# docs/algorithm.md §5.2-§5.4, §4.1-§4.3, §14, §12.2 (not read from the code or the configs).
GAMMA, LAMBDA = 0.99, 0.95
MIN_STD, ACTION_CLAMP = 0.1, 1 - 1e-6
EXPL_MOMENTUM, TASK_MOMENTUM, NORM_EPS = 0.95, 1.0, 1e-8
EXPL_ENT, TASK_ENT = 0.0, 1e-4
AC_LR, AC_EPS, AC_CLIP, AC_WD, BETAS = 8e-5, 1e-5, 100.0, 1e-6, (0.9, 0.999)
LN_EPS = 1e-5          # PyTorch's LayerNorm default; the spec names none
ENSEMBLE = 5           # Plan2Explore heads, docs/algorithm.md §14.1
KNN_K, KNN_CLIP = 5, 1e-4   # k is this file's override (TINY), clip the spec's
BASE = [o for o in TINY if not o.startswith("agent.")]


# --------------------------------------------------------------------------------- agents and data
def make_agent(name: str, config: str, *extra: str):
    overrides = BASE + [f"agent={name}", "precision=32", *extra]
    if name == "apt":
        overrides.append(f"agent.knn_k={KNN_K}")
    torch.manual_seed(0)
    agent = build_agent(compose_config(overrides, config), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    if config == "finetune" and name != "dreamer":
        agent.finetune_mode()
    return agent


def fixed_batch(name: str) -> dict[str, torch.Tensor]:
    batch = conftest_batch(5, 4, 16, OBS_DIM, ACTION_DIM)
    if name == "apt":
        # Step-0 posteriors of different rows would share one deter (the zero state and a masked
        # action), and the float32 distance between equal points is round-off above the kNN clip.
        batch["is_first"][:] = False
    return batch


# -------------------------------------------------------------------- own arithmetic (float64)
def apply_layers(layers, x: torch.Tensor) -> torch.Tensor:
    """Linear / LayerNorm / ELU / Identity layers applied by hand from their weights (differentiable in
    the weights where they require grad)."""
    for layer in layers:
        if isinstance(layer, nn.Linear):
            x = x @ layer.weight.double().t() + layer.bias.double()
        elif isinstance(layer, nn.LayerNorm):
            mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
            x = (x - mean) / torch.sqrt(var + LN_EPS) * layer.weight.double() + layer.bias.double()
        elif isinstance(layer, nn.ELU):
            x = torch.where(x > 0, x, torch.expm1(x.clamp(max=0)))
        elif not isinstance(layer, nn.Identity):
            raise TypeError(f"unexpected layer {layer}")
    return x


def head_mean(head, x: torch.Tensor) -> torch.Tensor:
    """An 'mse' head's mean: trunk then the output Linear (docs/algorithm.md §4.1)."""
    return apply_layers(list(head.trunk) + [head.mean], x)


def actor_normal(actor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu = tanh(m), sigma = 2 sigmoid(s / 2) + 0.1 (docs/algorithm.md §4.1)."""
    hidden = apply_layers(actor.trunk, x)
    mean = torch.tanh(apply_layers([actor.mean], hidden))
    return mean, 2 * torch.sigmoid(apply_layers([actor.std], hidden) / 2) + MIN_STD


class PriorStep:
    """The RSSM's prior step of docs/algorithm.md §3.2, from the module's weights (frozen, float64)."""

    def __init__(self, rssm):
        self.w = {key: value.detach().double() for key, value in rssm.state_dict().items()}
        self.stoch, self.discrete = rssm.stoch, rssm.discrete

    def _lin(self, prefix, x):
        return x @ self.w[f"{prefix}.weight"].t() + self.w[f"{prefix}.bias"]

    def _ln(self, prefix, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + LN_EPS) * self.w[f"{prefix}.weight"] + self.w[f"{prefix}.bias"]

    def _block(self, seq, x):
        x = self._lin(f"{seq}.0", x)
        if f"{seq}.1.weight" in self.w:  # norm: layer
            x = self._ln(f"{seq}.1", x)
        return torch.where(x > 0, x, torch.expm1(x.clamp(max=0)))

    def __call__(self, stoch, deter, action):
        x = self._block("prior_in", torch.cat([stoch.reshape(len(stoch), -1), action], -1))
        parts = self._ln("cell.norm", self._lin("cell.linear", torch.cat([x, deter], -1)))
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1)
        deter = update * cand + (1 - update) * deter
        logit = self._lin("prior_out.3", self._block("prior_out", deter)).reshape(-1, self.stoch, self.discrete)
        # One-hot draw by inverse CDF, one uniform per variable (docs/decisions.md D27), plus p - sg(p).
        probs = logit.softmax(-1)
        uniform = torch.rand(probs.shape[:-1] + (1,)).double()
        index = (probs.detach().cumsum(-1) < uniform).sum(-1).clamp(max=self.discrete - 1)
        stoch = torch.nn.functional.one_hot(index, self.discrete).double() + probs - probs.detach()
        return stoch, deter


def lambda_returns(reward, value):
    """R_H = v_H; R_t = r_t + gamma ((1 - lambda) v_{t+1} + lambda R_{t+1}); R_0..R_{H-1} (§5.2)."""
    ret, out = value[-1], []
    for t in reversed(range(reward.shape[0] - 1)):
        ret = reward[t] + GAMMA * ((1 - LAMBDA) * value[t + 1] + LAMBDA * ret)
        out.append(ret)
    return torch.stack(out[::-1], 0)


def knn_reward(points: torch.Tensor) -> torch.Tensor:
    """§7.5 particle entropy: mean over the k nearest (self included) of max(d - clip, 0); detached."""
    p = points.detach().double()
    dist = (p[:, None] - p[None]).pow(2).sum(-1).sqrt()
    return (dist.sort(-1).values[:, :KNN_K] - KNN_CLIP).clamp(min=0).mean(-1)


def reward_fn(name: str, config: str, agent):
    """The reward of imagined states (H+1, N) from (deter, feat), by the spec (§6.2, §14)."""
    if config == "finetune":   # task reward: the reward head's prediction, r(f_t)
        return lambda deter, feat: head_mean(agent.wm.reward_head, feat).squeeze(-1)
    if name == "lbs":          # predicted surprise on imagined features
        return lambda deter, feat: head_mean(agent.lbs.head, feat).squeeze(-1)
    if name == "plan2explore":  # mean_d of the population std over the heads, of deter
        def disagreement(deter, feat):
            preds = torch.stack([head_mean(head, deter) for head in agent.ensemble.heads])
            assert preds.shape[0] == ENSEMBLE
            return (preds - preds.mean(0)).pow(2).mean(0).sqrt().mean(-1)
        return disagreement
    if name == "apt":
        return lambda deter, feat: knn_reward(deter.reshape(-1, deter.shape[-1])).reshape(deter.shape[:-1])
    raise ValueError(name)


def grads(loss, params):
    return [g if g is not None else torch.zeros_like(p, dtype=torch.float64)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True), params)]


def first_adam_step(params, grad_list):
    """docs/algorithm.md §4.2 for an optimiser's first call: clip the global norm to 100, multiply by
    (1 - wd), Adam step (m_hat = g, v_hat = g^2 after bias correction)."""
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grad_list))
    coef = min(1.0, AC_CLIP / norm)
    new = [p.detach().double() * (1 - AC_WD) - AC_LR * (coef * g) / ((coef * g).abs() + AC_EPS)
           for p, g in zip(params, grad_list)]
    return new, norm


def expected_update(agent, start: dict, name: str, config: str, ent_scale: float) -> dict:
    """docs/algorithm.md §5.1-§5.5 on the agent's (twin's) current weights."""
    ac, horizon = agent.ac, agent.imag_horizon
    momentum = EXPL_MOMENTUM if config == "pretrain" else TASK_MOMENTUM
    prior = PriorStep(agent.wm.rssm)
    actor_params = list(ac.actor.parameters())
    critic_params = list(ac.critic.parameters())
    for p in actor_params:
        p.requires_grad_(True)
    try:
        stoch, deter = start["stoch"].double(), start["deter"].double()
        feats, deters, entropies = [], [], []
        for _ in range(horizon):
            feat = torch.cat([stoch.reshape(len(stoch), -1), deter], -1)
            feats.append(feat)
            deters.append(deter)
            mean, std = actor_normal(ac.actor, feat.detach())
            entropies.append((0.5 + LOG_SQRT_2PI + std.log()).sum(-1))
            raw = mean + std * torch.randn(mean.shape).double()
            action = raw.clamp(-ACTION_CLAMP, ACTION_CLAMP).detach() + (raw - raw.detach())
            stoch, deter = prior(stoch, deter, action)
        feats.append(torch.cat([stoch.reshape(len(stoch), -1), deter], -1))
        deters.append(deter)
        feat, deter = torch.stack(feats), torch.stack(deters)               # (H+1, N, ...)
        raw_reward = reward_fn(name, config, agent)(deter, feat)
        mag = momentum * float(ac.reward_norm.mag) + (1 - momentum) * float(raw_reward.detach().abs().mean())
        reward = raw_reward / (mag + NORM_EPS)
        value = head_mean(ac.target_critic, feat).squeeze(-1)              # slow target, with the dynamics' gradient
        target = lambda_returns(reward, value)                              # (H, N)
        weight = torch.tensor([GAMMA ** t for t in range(horizon + 1)], dtype=torch.float64)[:, None]
        entropy = torch.stack(entropies[:-1])                               # states 0..H-2
        actor_loss = -(weight[:-2] * (target[1:] + ent_scale * entropy)).mean()
        actor_grads = grads(actor_loss, actor_params)
    finally:
        for p in actor_params:
            p.requires_grad_(False)
    for p in critic_params:
        p.requires_grad_(True)
    try:
        critic_mean = head_mean(ac.critic, feat[:-1].detach()).squeeze(-1)
        log_prob = -0.5 * (target.detach() - critic_mean) ** 2 - LOG_SQRT_2PI
        critic_loss = -(weight[:-1] * log_prob).mean()
        critic_grads = grads(critic_loss, critic_params)
    finally:
        for p in critic_params:
            p.requires_grad_(False)
    new_actor, actor_norm = first_adam_step(actor_params, actor_grads)
    new_critic, critic_norm = first_adam_step(critic_params, critic_grads)
    return {
        "metrics": {
            "actor_loss": actor_loss, "critic_loss": critic_loss, "actor_grad_norm": actor_norm,
            "critic_grad_norm": critic_norm, "critic_slow": value.mean(), "critic_target": target.mean(),
            "critic": critic_mean.mean(), "actor_ent": entropy.mean(), "reward_mean": raw_reward.mean(),
            "reward_std": raw_reward.std(), "reward_normed_mean": reward.mean(), "reward_normed_std": reward.std(),
        },
        "mag": mag, "actor": new_actor, "critic": new_critic,
        "raw_reward": raw_reward.detach(), "target": target.detach(), "value": value.detach(),
    }


def twin_inputs(twin, batch, name: str, config: str) -> dict:
    """The parts of ``update`` before the actor-critic, run by the twin: world model, starts, and in
    pre-training the intrinsic model's step (which precedes the actor-critic, §14.1)."""
    post, kl, _ = twin.update_world_model(batch)
    start = twin.imagination_starts(post)
    if config == "pretrain":
        twin.update_intrinsic(post, kl, batch)
    return start


CASES = [  # (agent, config, extra overrides)
    ("lbs", "pretrain", ()),
    ("lbs", "pretrain", ("agent.actor_ent=0.3",)),
    ("lbs", "pretrain", ("mode=eager",)),
    ("lbs", "pretrain", ("low_memory=true",)),
    ("plan2explore", "pretrain", ()),
    ("apt", "pretrain", ()),
    ("lbs", "finetune", ()),
    ("dreamer", "finetune", ()),
    ("dreamer", "finetune", ("mode=eager",)),
]


@pytest.mark.parametrize("name,config,extra", CASES, ids=["-".join((n, c) + e) for n, c, e in CASES])
def test_actor_critic_update_by_value(name, config, extra):
    """Catches, among others: another lambda or discount, returns bootstrapped from the online
    critic instead of the slow target, a missing or mis-signed entropy bonus or another entropy
    scale, the actor objective on R_t instead of R_{t+1} or over other steps, unweighted losses,
    the critic trained on un-detached targets or on all H+1 states, reward normalisation with
    another momentum (or none for exploration / some for the task), the normaliser's magnitude
    updated after use, the actor fed un-detached features, the dynamics gradient cut (actions
    detached before the prior step), the reward taken from another head, the intrinsic model
    updated after the actor-critic, another optimiser setting, and no hard target copy after the
    first update."""
    agent, twin = make_agent(name, config, *extra), make_agent(name, config, *extra)
    assert all(torch.equal(a, b) for a, b in zip(agent.state_dict().values(), twin.state_dict().values())
               if isinstance(a, torch.Tensor))
    ent_scale = 0.3 if "agent.actor_ent=0.3" in extra else EXPL_ENT if config == "pretrain" else TASK_ENT
    batch = fixed_batch(name)
    critic, target = agent.ac.critic.parameters(), agent.ac.target_critic.parameters()
    assert not any(torch.equal(a, b) for a, b in zip(critic, target)), \
        "the first targets come from a separately initialised network (§5.3)"

    torch.manual_seed(7)
    rng = torch.get_rng_state()
    expected = expected_update(twin, twin_inputs(twin, batch, name, config), name, config, ent_scale)
    after = torch.get_rng_state()
    torch.set_rng_state(rng)
    metrics = agent.update(batch)
    assert torch.equal(torch.get_rng_state(), after), "the agent drew other random numbers than the re-derivation"

    for key, want in expected["metrics"].items():
        got, want = float(metrics[key]), float(torch.as_tensor(want).detach())
        assert got == pytest.approx(want, rel=RTOL, abs=1e-9), f"{key}: agent {got!r}, re-derived {want!r}"
    assert float(agent.ac.reward_norm.mag) == pytest.approx(expected["mag"], rel=RTOL)
    # The update is not degenerate: rewards vary, the entropy and the dynamics gradient matter.
    assert float(expected["raw_reward"].std()) > 1e-4
    assert float(metrics["actor_grad_norm"]) > 1e-4 and float(metrics["critic_grad_norm"]) > 1e-4

    # One Adam step each, from the re-derived gradients (atol: 0.1% of the learning rate).
    for part in ("actor", "critic"):
        for (pname, param), want in zip(getattr(agent.ac, part).named_parameters(), expected[part]):
            np.testing.assert_allclose(param.detach().double().numpy(), want.numpy(), rtol=0, atol=1e-3 * AC_LR,
                                       err_msg=f"{part}.{pname} after the step")
    # The slow target's first refresh is a hard copy of the updated critic (§5.3).
    for target, critic in zip(agent.ac.target_critic.parameters(), agent.ac.critic.parameters()):
        assert torch.equal(target, critic)
    assert agent.ac.updates == 1


def test_lambda_returns_rederivation_against_a_hand_value():
    """The file's own lambda-return against numbers worked by hand (H = 2, one sequence), so the
    reference the update tests rely on is itself pinned:
    R_2 = v_2 = 3; R_1 = r_1 + 0.99 (0.05 v_2 + 0.95 R_2) = 1 + 0.99 * 3 = 3.97;
    R_0 = r_0 + 0.99 (0.05 v_1 + 0.95 R_1) = 0.5 + 0.99 (0.05 * 2 + 0.95 * 3.97) = 4.332785."""
    reward = torch.tensor([[0.5], [1.0], [7.0]], dtype=torch.float64)
    value = torch.tensor([[9.0], [2.0], [3.0]], dtype=torch.float64)
    result = lambda_returns(reward, value)
    torch.testing.assert_close(result, torch.tensor([[4.332785], [3.97]], dtype=torch.float64), rtol=1e-12, atol=1e-12)
