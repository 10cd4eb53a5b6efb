"""The skill methods on the skill base (agent/skill_agent.py): DIAYN (agent/diayn.py) and APS
(agent/aps.py). Each skill reward and skill-model loss recomputed here from its definition (numpy,
float64, network outputs from the layers' weights), fine-tuning's task skill (DIAYN's best skill, APS's
regressed task vector), the goal-conditioned skill pick, the real scripts end to end, and zero-shot goal
evaluation on Jaco. Choreographer's own checks are in tests/test_losses.py and tests/test_finetune.py."""
from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, compose_config
from test_baselines import (AGENT_EXTRA, BASE, brute_force_knn_reward, losses_are_finite, np_mlp, posterior,
                            run_offline, run_script, synthetic_batch, tiny_dataset)  # noqa: F401 (fixture)
from utils.runner import build_agent
from utils.snapshot import save_snapshot

OBS_DIM, ACTION_DIM = 24, 6
SKILL_AGENTS = ["diayn", "aps"]
SKILL_MODEL = {"diayn": "discriminator", "aps": "features"}


def make_agent(name: str, *extra: str, seed: int = 0, config: str = "pretrain"):
    overrides = BASE + [f"agent={name}", "precision=32", *AGENT_EXTRA.get(name, []), *extra]
    torch.manual_seed(seed)
    return build_agent(compose_config(overrides, config), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))


def finetuner(pretrained, name: str, *extra: str, seed: int = 1):
    agent = make_agent(name, *extra, seed=seed, config="finetune")
    agent.finetune_mode()
    agent.init_from(pretrained.snapshot_state()["modules"])
    return agent


def starts(agent, seed: int = 1):
    batch = synthetic_batch(seed)
    batch["is_first"][:] = False  # distinct start states (see test_baselines.imagined)
    post, _ = posterior(agent, batch)
    return agent.imagination_starts(post)


def rollout(agent, skill: torch.Tensor, seed: int = 1):
    """An imagined rollout of the skill policy on ``skill`` (N, K): states and features (H+1, N, ...)."""
    start = starts(agent, seed)
    with torch.no_grad():
        states, _ = agent.skill_ac.imagine(agent.wm.rssm, start, agent.imag_horizon, cond=skill)
    return states, agent.wm.rssm.feat(states)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def floats(module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items() if torch.is_tensor(value)}


def changed_groups(before: dict, agent) -> set[str]:
    return {".".join(key.split(".")[:2]) for key, value in floats(agent).items()
            if value.dtype.is_floating_point and not torch.equal(before[key], value)}


# ---------------------------------------------------------------------------------------------- DIAYN
def test_diayn_reward_against_the_definition():
    agent = make_agent("diayn", "agent.diayn_scale=0.5")
    count = starts(agent)["deter"].shape[0]
    skill = torch.eye(agent.skill_dim)[torch.arange(count) % agent.skill_dim]
    states, feat = rollout(agent, skill)
    with torch.no_grad():
        reward = agent.skill_reward(skill)(states, feat, None)
    # r = scale * (log q(z|s) - log p(z)), p uniform over the K one-hots.
    log_q = np_log_softmax(np_mlp(agent.discriminator.head, feat.numpy()))
    expected = 0.5 * ((log_q * skill.numpy()).sum(-1) + math.log(agent.skill_dim))
    assert reward.shape == feat.shape[:2]
    np.testing.assert_allclose(reward.numpy(), expected, rtol=1e-5, atol=1e-6)
    # Differentiable in the imagined features (the actor's dynamics gradient).
    feat_grad = feat.clone().requires_grad_(True)
    agent.skill_reward(skill)(states, feat_grad, None).sum().backward()
    assert feat_grad.grad.abs().sum() > 0


def test_diayn_discriminator_learns_from_the_skill_rollout_it_is_given():
    agent = make_agent("diayn")
    start = starts(agent)
    twin = copy.deepcopy(agent)
    torch.manual_seed(5)
    _, feat, skill = twin._skill_behaviour_step(start)  # the rollout and skills the update trains on
    # L = - mean over the imagined states after the start of log q(z | s), z the skill of that rollout.
    log_q = np_log_softmax(np_mlp(agent.discriminator.head, feat[1:].numpy()))
    expected = -(log_q * skill.numpy()[None]).sum(-1).mean()
    accuracy = (log_q.argmax(-1) == skill.numpy().argmax(-1)[None]).mean()
    before = floats(agent)
    torch.manual_seed(5)
    metrics = agent.update_skill_behaviour(start)
    np.testing.assert_allclose(float(metrics["discriminator_loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["discriminator_accuracy"]), accuracy)
    assert changed_groups(before, agent) == {"skill_ac.actor", "skill_ac.critic", "skill_ac.target_critic",
                                             "discriminator.head"}


def np_actor(head, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The actor's clamped-normal mean and std in float64 numpy: tanh(raw mean), 2 sigmoid(raw std / 2)
    + min_std."""
    raw_std = np_mlp(SimpleNamespace(trunk=head.trunk, mean=head.std), x)
    return np.tanh(np_mlp(head, x)), 2 / (1 + np.exp(-raw_std / 2)) + head.min_std


def test_diayn_best_skill_best_explains_the_high_return_actions_and_goal_pick_the_most_likely():
    agent = finetuner(make_agent("diayn"), "diayn")
    assert agent.finetune_adaptation() == "fixed" and agent.optimizers().keys() == {
        "model", "discriminator", "skill_actor", "skill_critic"}
    batch = synthetic_batch(3)
    batch["is_first"][0, 5] = True  # an episode starting inside a window: its reset row is no action taken
    batch["action"][0, 5] = 0.0
    batch["reward"][0, 5] = 5.0  # not the return of any action scored: a missing mask would count it
    post, _ = posterior(agent, batch)
    # score(z) = mean_b R_b * sum_t log N(a_{t+1}; mu(f_t, z), sigma(f_t, z)), over the pairs whose row
    # t+1 is not an episode's first; R_b the sum of those rows' rewards.
    feat = agent.wm.rssm.feat(post).numpy()[:, :-1]
    action = batch["action"].numpy()[:, 1:].astype(np.float64)
    taken = ~batch["is_first"].numpy()[:, 1:]
    outcome = (batch["reward"].numpy()[:, 1:, 0] * taken).sum(1)
    scores = []
    for index in range(agent.skill_dim):
        skill = np.broadcast_to(np.eye(agent.skill_dim)[index], feat.shape[:2] + (agent.skill_dim,))
        mean, std = np_actor(agent.skill_ac.actor, np.concatenate([feat, skill], -1))
        log_p = (-0.5 * ((action - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
        scores.append(((log_p * taken).sum(1) * outcome).mean())
    scores = np.array(scores)
    skill, _ = agent.infer_task_skill(post, None, batch)
    np.testing.assert_allclose(agent.skill_scores.numpy(), scores, rtol=1e-4)
    assert int(skill.argmax()) == int(scores.argmax()) and float(skill.sum()) == 1.0
    # A second batch: the running mean of the two batches' scores.
    second = synthetic_batch(4)
    post2, _ = posterior(agent, second)
    agent.infer_task_skill(post2, None, second)
    feat2 = agent.wm.rssm.feat(post2).numpy()[:, :-1]
    outcome2 = second["reward"].numpy()[:, 1:, 0].sum(1)
    scores2 = []
    for index in range(agent.skill_dim):
        skill = np.broadcast_to(np.eye(agent.skill_dim)[index], feat2.shape[:2] + (agent.skill_dim,))
        mean, std = np_actor(agent.skill_ac.actor, np.concatenate([feat2, skill], -1))
        value = second["action"].numpy()[:, 1:].astype(np.float64)
        log_p = (-0.5 * ((value - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
        scores2.append((log_p.sum(1) * outcome2).mean())
    np.testing.assert_allclose(agent.skill_scores.numpy(), (scores + np.array(scores2)) / 2, rtol=1e-4)

    # Zero-shot: the skill the discriminator finds most likely for the goal's latent state.
    goal = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32)
    latent = agent.goal_state(goal, 3)
    log_q = np_log_softmax(np_mlp(agent.discriminator.head, agent.wm.rssm.feat(latent).numpy()))[0]
    pick = agent.skill_for_goal(goal, 3, "nearest", None)
    assert pick.dtype == np.float32 and pick.argmax() == log_q.argmax() and pick.sum() == 1.0


@pytest.mark.parametrize("finetune_skill", ["best", "meta"])
def test_diayn_finetuning_trains_what_its_adaptation_trains(finetune_skill):
    agent = finetuner(make_agent("diayn"), "diayn", f"agent.finetune_skill={finetune_skill}")
    before = floats(agent)
    metrics = agent.update(synthetic_batch(seed=3))
    world = {"wm.encoder", "wm.rssm", "wm.decoder", "wm.reward_head"}
    if finetune_skill == "best":
        expected = world | {"skill_ac.actor", "skill_ac.critic", "skill_ac.target_critic", "skill_scores",
                            "skill_evaluations", "task_skill"}
    else:
        expected = world | {"skill_ac.actor", "meta.selector", "meta.critic", "meta.target_critic"}
    assert changed_groups(before, agent) == expected
    assert all(torch.isfinite(value).all() for value in metrics.values())


# ------------------------------------------------------------------------------------------------ APS
def test_aps_reward_against_the_definition():
    agent = make_agent("aps", "agent.sf_scale=0.7", "agent.entropy_scale=0.3")
    count = starts(agent)["deter"].shape[0]
    skill = agent.random_skills(count)
    assert torch.allclose(skill.norm(dim=-1), torch.ones(count))
    states, feat = rollout(agent, skill)
    with torch.no_grad():
        reward = agent.skill_reward(skill)(states, feat, None)
    # r = sf_scale * phi(s)^T z + entropy_scale * kNN particle entropy over all imagined deter (pooled).
    phi = np_unit(np_mlp(agent.features.head, feat.numpy()))
    deter = states["deter"].numpy()
    entropy = brute_force_knn_reward(deter.reshape(-1, deter.shape[-1]), agent.knn_k, agent.knn_clip)
    expected = 0.7 * (phi * skill.numpy()[None]).sum(-1) + 0.3 * entropy.reshape(deter.shape[:-1])
    np.testing.assert_allclose(reward.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_aps_features_learn_from_the_skill_rollout_it_is_given():
    agent = make_agent("aps")
    start = starts(agent)
    twin = copy.deepcopy(agent)
    torch.manual_seed(5)
    _, feat, skill = twin._skill_behaviour_step(start)
    # L = - mean over the imagined states after the start of phi(s)^T z.
    phi = np_unit(np_mlp(agent.features.head, feat[1:].numpy()))
    expected = -(phi * skill.numpy()[None]).sum(-1).mean()
    before = floats(agent)
    torch.manual_seed(5)
    metrics = agent.update_skill_behaviour(start)
    np.testing.assert_allclose(float(metrics["features_loss"]), expected, rtol=1e-5)
    assert changed_groups(before, agent) == {"skill_ac.actor", "skill_ac.critic", "skill_ac.target_critic",
                                             "features.head"}


def test_aps_task_vector_is_the_least_squares_fit_of_the_rewards_and_goal_pick_is_phi():
    agent = finetuner(make_agent("aps"), "aps", "agent.lstsq_ridge=0")
    assert agent.optimizers().keys() == {"model", "features", "skill_actor", "skill_critic"}
    phis, rewards = [], []
    for seed in (3, 4):  # the normal equations accumulate over the batches
        batch = synthetic_batch(seed)
        post, _ = posterior(agent, batch)
        task, _ = agent.infer_task_skill(post, agent.imagination_starts(post), batch)
        phis.append(np_unit(np_mlp(agent.features.head, agent.wm.rssm.feat(post).numpy())).reshape(-1, agent.skill_dim))
        rewards.append(batch["reward"].numpy().reshape(-1))
    w = np.linalg.lstsq(np.concatenate(phis), np.concatenate(rewards), rcond=None)[0]
    np.testing.assert_allclose(task.numpy(), w / np.linalg.norm(w), rtol=1e-4, atol=1e-5)

    before = floats(agent)
    agent.update(synthetic_batch(seed=5))
    assert changed_groups(before, agent) == {"wm.encoder", "wm.rssm", "wm.decoder", "wm.reward_head", "phi_outer",
                                             "phi_reward", "task_skill", "skill_ac.actor", "skill_ac.critic",
                                             "skill_ac.target_critic"}

    # Zero-shot: the unit skill maximising phi(goal)^T z is phi(goal) / |phi(goal)|.
    goal = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32)
    latent = agent.goal_state(goal, 3)
    phi = np_unit(np_mlp(agent.features.head, agent.wm.rssm.feat(latent).numpy()))[0]
    np.testing.assert_allclose(agent.skill_for_goal(goal, 3, "nearest", None), phi, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- the skill interface
@pytest.mark.parametrize("name", SKILL_AGENTS)
def test_the_skill_interface(name):
    agent = make_agent(name)
    assert agent.has_skills and agent.skill_count == agent.skill_dim == 4
    assert agent.skill_usage() is None and agent.skill_reconstruction(torch.zeros(2, agent.wm.rssm.deter)) is None
    assert not make_agent("lbs").has_skills
    meta = agent.init_meta()
    assert meta.shape == (4,) and abs(np.linalg.norm(meta) - 1) < 1e-6
    assert agent.update_meta(meta, 1) is meta and agent.update_meta(meta, agent.update_skill_every_step) is not meta
    time_step = {"observation": np.zeros(OBS_DIM, np.float32), "is_first": True}
    pick = agent.skill_for_goal(np.ones(OBS_DIM, np.float32), 2, "imagine", time_step)
    assert any(np.array_equal(pick, row) for row in agent.candidate_skills().numpy())


@pytest.mark.parametrize("name", SKILL_AGENTS)
def test_every_stage_is_free_of_host_reads(name):
    """Pre-training and fixed-skill fine-tuning stages are recordable as CUDA graphs (tests/test_graph_stages.py)."""
    from test_graph_stages import CheckedStages
    agent = make_agent(name)
    agent.stages = CheckedStages()
    for seed in (0, 1):
        agent.update(synthetic_batch(seed))
        agent.update_offline(synthetic_batch(seed + 2))
    assert set(agent.stages.reads) == {"world_model", "skill_behaviour", SKILL_MODEL[name]}
    assert {stage: found for stage, found in agent.stages.reads.items() if found} == {}
    agent.finetune_mode()
    agent.stages = CheckedStages()
    batch = synthetic_batch(4)
    agent.update(dict(batch, reward=batch["reward"] + 1.0))  # opens the reward gate
    assert set(agent.stages.reads) == {"world_model", "task_behaviour"}
    assert {stage: found for stage, found in agent.stages.reads.items() if found} == {}


def test_visualize_skills_rolls_out_a_diayn_skill():
    import envs
    from visualize_skills import rollout_skill, select_skills
    agent = make_agent("diayn")
    assert select_skills(agent, None) == [0, 1, 2, 3] and select_skills(agent, 2) == [0, 1]  # no usage counts
    env = envs.make("walker_stand", "states", action_repeat=1, seed=0)
    frames = rollout_skill(agent, env, 2, 3, pixels=False)
    env.close()
    assert frames.shape[0] == 3 and frames.dtype == np.uint8


# ------------------------------------------------------------------------------ scripts end to end
@pytest.mark.parametrize("name", SKILL_AGENTS)
def test_scripts_pretrain_finetune_and_offline(tmp_path, tiny_dataset, name):  # noqa: F811
    extra = AGENT_EXTRA[name]
    own = {f"{SKILL_MODEL[name]}_loss"}
    run_script("pretrain.py", tmp_path, "pretrain", "configs=dmc_states", f"agent={name}", *extra,
               "num_train_frames=2000", "num_seed_frames=1000", "snapshots=[1200]")
    snapshot = tmp_path / f"pretrained_models/states/walker/{name}/1/snapshot_1200.pt"
    assert torch.load(snapshot, weights_only=True)["agent"]["name"] == name
    assert {"model_loss", "skill_actor_loss", "skill_critic_loss"} | own <= losses_are_finite(tmp_path / "pretrain")

    run_script("finetune.py", tmp_path, "finetune", "configs=dmc_states", f"agent={name}", *extra,
               "task=walker_run", "snapshot_ts=1200", "num_train_frames=2000", "num_seed_frames=1000")
    names = losses_are_finite(tmp_path / "finetune")
    assert {"model_loss", "skill_actor_loss", "skill_critic_loss"} <= names and not names & own
    payload = torch.load(tmp_path / "finetune" / "finetuned_snapshot.pt", weights_only=True)
    assert payload["agent"]["phase"] == "finetune" and payload["agent"]["name"] == name

    assert {"model_loss", "skill_actor_loss"} | own <= run_offline(tmp_path, name, tiny_dataset)


ZERO_SHOT = {"jaco_reach_top_left": (55, 9, 250, []), "mw_reach": (39, 4, 500, ["task_id=3"])}


@pytest.mark.parametrize("name, task", [("diayn", "jaco_reach_top_left"), ("aps", "jaco_reach_top_left"),
                                        ("diayn", "mw_reach"), ("aps", "mw_reach")])
def test_zero_shot_goal_evaluation(tmp_path, name, task):
    """eval_goals=True: success_rate of random skills and goal_success_rate of ``skill_for_goal``'s pick."""
    obs_dim, action_dim, frames, extra = ZERO_SHOT[task]
    domain = task.split("_")[0]
    agent = build_agent(compose_config(BASE + [f"agent={name}", *AGENT_EXTRA[name]]), (obs_dim,), action_dim,
                        torch.device("cpu"))
    path = tmp_path / "pretrained_models" / "states" / domain / name / "1" / "snapshot_100.pt"
    save_snapshot({"agent": agent.snapshot_state(), "obs_type": "states", "domain": domain, "action_repeat": 2,
                   "global_frame": 100}, path)
    command = [sys.executable, str(REPO / "finetune.py"), *BASE, f"agent={name}", *AGENT_EXTRA[name], "threads=1",
               f"hydra.run.dir={tmp_path / 'run'}", "configs=dmc_states_ar2", f"task={task}", *extra,
               "snapshot_ts=100", "num_train_frames=10", "num_eval_episodes=2", "eval_goals=True"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf"^\| eval \| F: 0 \| S: 0 \| E: 0 \| L: {frames} \| R: ", result.stdout, re.M), result.stdout
    header, row = (tmp_path / "run" / "eval.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    assert 0.0 <= float(values["success_rate"]) <= 1.0
    assert 0.0 <= float(values["goal_success_rate"]) <= 1.0
