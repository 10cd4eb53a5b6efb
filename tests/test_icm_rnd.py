"""ICM and RND on the shared world model (agent/icm.py, agent/rnd.py): each intrinsic reward and loss
recomputed here from its definition (numpy, float64, network outputs from the layers' weights), the
running moments of RND's error from the pooled errors, what each update changes, what fine-tuning
keeps, the sizes presets give, and the actions the imagined rewards see. The scripts end to end are
in tests/test_baselines.py (``EXPLORERS``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import compose_config
from test_baselines import make_agent, np_mlp, posterior, synthetic_batch
from test_graph_stages import CheckedStages
from agent.lbs import LBSAgent
from utils.agents import check_agent_keys, agent_class
from utils.errors import UserError


def rollout(agent, seed: int = 1):
    """An imagined rollout under the agent's actor from a batch's posterior: states (H+1, N, ...),
    features and actions (H+1, N, A), no gradients."""
    batch = synthetic_batch(seed)
    post, _ = posterior(agent, batch)
    with torch.no_grad():
        states, actions, _ = agent.ac.imagine_rollout(agent.wm.rssm, agent.imagination_starts(post),
                                                      agent.imag_horizon)
    return states, agent.wm.rssm.feat(states), actions


def floats(module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items() if torch.is_tensor(value)}


def changed(before: dict, module) -> set[str]:
    return {key for key, value in floats(module).items() if not torch.equal(before[key], value)}


# ---------------------------------------------------------------------------------------------- ICM
def test_icm_reward_against_the_definition():
    agent = make_agent("icm", "agent.icm_scale=0.5")
    states, feat, actions = rollout(agent)
    with torch.no_grad():
        reward = agent.intrinsic_reward(states, feat, actions)
    f, a = feat.numpy().astype(np.float64), actions.numpy().astype(np.float64)
    assert not a[0].any(), "index 0 is the start state: a zero action"
    # r_i = log(1 + scale * ||g(f_{i-1}, a_i) - f_i||) for the transition that reached state i; r_0 = 0.
    prediction = np_mlp(agent.icm.head, np.concatenate([f[:-1], a[1:]], -1))
    error = np.sqrt(((f[1:] - prediction) ** 2).sum(-1))
    expected = np.concatenate([np.zeros((1, f.shape[1])), np.log(1 + 0.5 * error)], 0)
    assert reward.shape == feat.shape[:2]
    np.testing.assert_allclose(reward.numpy(), expected, rtol=1e-5, atol=1e-6)

    # Differentiable in the imagined actions and features (the actor's dynamics gradient).
    actions_grad, feat_grad = actions.clone().requires_grad_(True), feat.clone().requires_grad_(True)
    agent.intrinsic_reward(states, feat_grad, actions_grad).sum().backward()
    assert actions_grad.grad[1:].abs().sum() > 0 and feat_grad.grad.abs().sum() > 0


def test_icm_loss_against_the_definition_and_only_the_forward_model_trains():
    agent = make_agent("icm")
    batch = synthetic_batch(2)
    batch["is_first"][1:3, 7] = True  # two sequences restart mid-window: pairs into row 7 drop out there
    post, kl = posterior(agent, batch)
    f = agent.wm.rssm.feat(post).numpy().astype(np.float64)
    a = batch["action"].numpy().astype(np.float64)
    # L = mean over the pairs (t, t+1) of one episode of ||g(f_t, a_{t+1}) - f_{t+1}||.
    prediction = np_mlp(agent.icm.head, np.concatenate([f[:, :-1], a[:, 1:]], -1))
    error = np.sqrt(((f[:, 1:] - prediction) ** 2).sum(-1))
    keep = ~batch["is_first"].numpy()[:, 1:]
    assert keep.sum() == keep.size - 2
    expected_loss = error[keep].mean()

    before = floats(agent)
    metrics = agent.update_intrinsic(post, kl, batch)
    np.testing.assert_allclose(float(metrics["icm_loss"]), expected_loss, rtol=1e-5)
    assert set(metrics) == {"icm_loss", "icm_grad_norm"}
    assert changed(before, agent) == {key for key in before if key.startswith("icm.head.")}


# ---------------------------------------------------------------------------------------------- RND
def np_rnd_error(agent, feat: np.ndarray) -> np.ndarray:
    """e(f) = mean_d (target(f)_d - predictor(f)_d)^2."""
    return ((np_mlp(agent.rnd.target, feat) - np_mlp(agent.rnd.predictor, feat)) ** 2).mean(-1)


def test_rnd_reward_loss_and_running_std_against_the_definition():
    agent = make_agent("rnd", "agent.rnd_scale=2.0", "agent.rnd_net.rep_dim=16")
    assert agent.rnd.target.mean.out_features == 16
    assert not torch.equal(agent.rnd.target.mean.weight, agent.rnd.predictor.mean.weight), "separate inits"
    assert agent.ac.reward_norm.momentum == 1.0, "no StreamNorm: the running std sets the scale"

    # Before any update the running variance is its initial 1.
    states, feat, actions = rollout(agent)
    with torch.no_grad():
        reward = agent.intrinsic_reward(states, feat, actions)
    np.testing.assert_allclose(reward.numpy(), 2.0 * np_rnd_error(agent, feat.numpy()) / (1 + 1e-8),
                               rtol=1e-5, atol=1e-7)

    # Two predictor steps: each loss is the mean error of its batch's posterior features before the
    # step; the errors after each step join the pooled errors. Running moments started from a
    # pseudo-count of 1e-4 at mean 0, variance 1: over all values x seen, with n = 1e-4 + count,
    # mean = sum x / n and var = (1e-4 * 1 + sum x^2) / n - mean^2.
    target_before = floats(agent.rnd.target)
    seen = []
    for seed in (2, 3):
        batch = synthetic_batch(seed)
        post, kl = posterior(agent, batch)
        f = agent.wm.rssm.feat(post).numpy().reshape(-1, feat.shape[-1])
        expected_loss = np_rnd_error(agent, f).mean()
        before = floats(agent)
        metrics = agent.update_intrinsic(post, kl, batch)
        np.testing.assert_allclose(float(metrics["rnd_loss"]), expected_loss, rtol=1e-5)
        assert set(metrics) == {"rnd_loss", "rnd_grad_norm"}
        assert changed(before, agent) == ({key for key in before if key.startswith("rnd.predictor.")}
                                          | {"rnd.moments.mean", "rnd.moments.var", "rnd.moments.count"})
        seen.append(np_rnd_error(agent, f))
    seen = np.concatenate(seen)
    count = 1e-4 + seen.size
    mean = seen.sum() / count
    var = (1e-4 + (seen ** 2).sum()) / count - mean ** 2
    moments = agent.rnd.moments
    np.testing.assert_allclose([float(moments.count), float(moments.mean), float(moments.var)], [count, mean, var],
                               rtol=1e-6)
    assert all(torch.equal(value, agent.rnd.target.state_dict()[key]) for key, value in target_before.items())

    with torch.no_grad():
        reward = agent.intrinsic_reward(states, feat, actions)
    np.testing.assert_allclose(reward.numpy(), 2.0 * np_rnd_error(agent, feat.numpy()) / (np.sqrt(var) + 1e-8),
                               rtol=1e-5, atol=1e-7)
    # Differentiable in the imagined features, through both networks.
    feat_grad = feat.clone().requires_grad_(True)
    agent.intrinsic_reward(states, feat_grad).sum().backward()
    assert feat_grad.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- both agents
@pytest.mark.parametrize("name, own", [("icm", "icm.head."), ("rnd", "rnd.predictor.")])
def test_the_intrinsic_model_is_a_host_read_free_stage_and_the_rnd_target_never_trains(name, own):
    agent = make_agent(name)
    agent.stages = CheckedStages()
    before = floats(agent)
    for seed in (0, 1):
        agent.update(synthetic_batch(seed))
        agent.update_offline(synthetic_batch(seed + 2))
    assert set(agent.stages.reads) == {"world_model", name, "exploration"}
    assert {stage: found for stage, found in agent.stages.reads.items() if found} == {}
    moved = changed(before, agent)
    assert {key for key in before if key.startswith(own)} <= moved
    assert not {key for key in moved if key.startswith(f"{name}.") and not key.startswith((own, "rnd.moments."))}


@pytest.mark.parametrize("name", ["icm", "rnd"])
def test_finetuning_drops_the_intrinsic_model_and_copies_what_lbs_copies(name):
    pretrained = make_agent(name)
    pretrained.update(synthetic_batch())
    source = pretrained.snapshot_state()
    assert name in source["optimizers"] and any(key.startswith(f"{name}.") for key in source["modules"])
    agent = make_agent(name, seed=1, config="finetune")
    assert agent.init_from_keys == LBSAgent.init_from_keys
    agent.finetune_mode()
    agent.init_from(source["modules"])
    assert not hasattr(agent, name) and not any(key.startswith(f"{name}.") for key in agent.state_dict())
    assert agent.optimizers().keys() == {"model", "actor", "critic"}
    copied = {key for key in agent.state_dict() if key.startswith(LBSAgent.init_from_keys)}
    assert all(torch.equal(agent.state_dict()[key], source["modules"][key]) for key in copied)
    assert not torch.equal(agent.state_dict()["ac.critic.mean.weight"], source["modules"]["ac.critic.mean.weight"])


@pytest.mark.parametrize("mode", ["fast", "eager", "low_memory"])
def test_the_imagined_reward_sees_the_actions_that_led_to_each_state(mode):
    """What the actor-critic hands a reward: actions[i] is the action that moved state i-1 to
    state i (the recurrent step reproduces deter_i from it), actions[0] is zero, and feat is the
    states' feature."""
    agent = make_agent("icm", *(["low_memory=true"] if mode == "low_memory" else [f"mode={mode}"]))
    seen = {}

    def reward_fn(states, feat, actions):
        seen.update(states={k: v.detach() for k, v in states.items()}, feat=feat.detach(), actions=actions.detach())
        return agent.intrinsic_reward(states, feat, actions)

    post, _ = posterior(agent, synthetic_batch(4))
    agent.ac.update_step(agent.wm.rssm, agent.imagination_starts(post), agent.imag_horizon, reward_fn)
    rssm, feat, actions = agent.wm.rssm, seen["feat"], seen["actions"]
    steps, count = agent.imag_horizon + 1, agent.imag_starts
    assert feat.shape[:2] == actions.shape[:2] == (steps, count) and actions.shape[-1] == agent.action_dim
    assert not actions[0].any() and actions[1:].abs().sum() > 0
    flat = rssm.stoch * rssm.discrete
    torch.testing.assert_close(feat[..., flat:], seen["states"]["deter"])
    stoch = feat[..., :flat].reshape(steps, count, rssm.stoch, rssm.discrete)
    with torch.no_grad():
        replayed = rssm.deter_step({"stoch": stoch[:-1], "deter": feat[:-1, :, flat:]}, actions[1:])
    torch.testing.assert_close(replayed, feat[1:, :, flat:], rtol=1e-5, atol=1e-6)


def test_a_key_the_agent_does_not_take_is_one_line():
    cfg = compose_config(["agent=rnd", "+agent.icm_scale=1.0"])
    with pytest.raises(UserError, match=r"^agent\.icm_scale is not a setting of agent=rnd; its settings: "
                                        r"[a-z_, ]*rnd_net, rnd_scale[a-z_, ]*$"):
        check_agent_keys(cfg, agent_class(cfg))


@pytest.mark.parametrize("preset, units, layers, rep_dim", [("full", 400, 4, 512), ("cpu", 128, 2, 128)])
def test_the_preset_sizes_the_networks(preset, units, layers, rep_dim):
    icm = compose_config(["agent=icm", f"preset={preset}"]).agent.forward_model
    rnd = compose_config(["agent=rnd", f"preset={preset}"]).agent.rnd_net
    assert (icm.layers, icm.units, rnd.layers, rnd.units, rnd.rep_dim) == (layers, units, layers, units, rep_dim)
    # The shared reward-head sizes carry through; the agent's own key wins.
    rnd = compose_config(["agent=rnd", f"preset={preset}", "reward_head.units=48", "agent.rnd_net.layers=1"]).agent
    assert (rnd.rnd_net.units, rnd.rnd_net.layers, rnd.rnd_net.rep_dim) == (48, 1, rep_dim)
