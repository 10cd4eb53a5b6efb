"""Fine-tuning: what changes in an update, the reward gate, goal-to-skill choice, snapshot checks,
and finetune.py end to end (fine-tuning and the zero-shot goal evaluation)."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, TINY
from utils.runner import build_agent
from utils.snapshot import save_snapshot

OBS_DIM, ACTION_DIM = 24, 6


def synthetic_batch(reward: float = 0.0, batch: int = 4, length: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = {
        "observation": torch.randn(batch, length, OBS_DIM, generator=generator),
        "action": torch.rand(batch, length, ACTION_DIM, generator=generator) * 2 - 1,
        "reward": torch.zeros(batch, length, 1),
        "discount": torch.ones(batch, length, 1),
        "is_first": torch.zeros(batch, length, dtype=torch.bool),
    }
    data["reward"][1, 3, 0] = reward
    data["is_first"][:, 0] = True
    data["is_terminal"] = data["discount"] == 0
    return data


def pretrained_and_finetuning(cfg, freeze_skills: bool = False):
    torch.manual_seed(0)
    pretrained = build_agent(cfg, (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    pretrained.update(synthetic_batch())
    cfg.agent.freeze_skills = freeze_skills
    agent = build_agent(cfg, (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    agent.finetune_mode()
    agent.init_from(pretrained.snapshot_state()["modules"])
    return pretrained, agent


def changed_groups(before: dict, after: dict) -> set[str]:
    groups = set()
    for key, value in after.items():
        if torch.is_tensor(value) and value.dtype.is_floating_point and not torch.equal(before[key], value):
            groups.add(".".join(key.split(".")[:2]))
    return groups


def test_init_from_copies_world_model_skills_and_skill_policy_only(tiny_config):
    pretrained, agent = pretrained_and_finetuning(tiny_config())
    source, own = pretrained.state_dict(), agent.state_dict()
    for key in own:
        if not torch.is_tensor(own[key]):
            continue
        copied = key.startswith(("wm.rssm.", "wm.encoder.", "wm.decoder.", "skill_module.encoder.",
                                 "skill_module.decoder.", "skill_ac.actor.")) or key == "skill_module.codebook"
        if copied:
            assert torch.equal(own[key], source[key]), key
        elif key.startswith(("wm.reward_head.", "skill_ac.critic.")):
            assert not torch.equal(own[key], source[key]), f"{key} should start fresh"
    assert not hasattr(agent, "expl_ac") and not hasattr(agent, "lbs")


@pytest.mark.parametrize("freeze_skills", [False, True])
def test_one_update_changes_exactly_the_finetuned_parameters(tiny_config, freeze_skills):
    _, agent = pretrained_and_finetuning(tiny_config(), freeze_skills)
    before = {key: value.clone() for key, value in agent.state_dict().items() if torch.is_tensor(value)}
    metrics = agent.update(synthetic_batch(reward=1.0))
    expected = {"wm.encoder", "wm.rssm", "wm.decoder", "wm.reward_head", "meta.selector", "meta.critic",
                "meta.target_critic"}
    if not freeze_skills:
        expected.add("skill_ac.actor")
    assert changed_groups(before, agent.state_dict()) == expected
    assert {"selector_actor_loss", "selector_critic_loss", "high_actor_ent", "skills_updated"} <= set(metrics)
    assert ("executor_actor_loss" in metrics) != freeze_skills


def test_reward_gate_opens_on_first_batch_with_reward_above_threshold(tiny_config):
    _, agent = pretrained_and_finetuning(tiny_config())
    agent.init_steps = 0
    selector = {key: value.clone() for key, value in agent.meta.selector.state_dict().items()}
    for reward in (0.0, 1e-4):  # 1e-4 itself does not open it: the test is strictly greater
        metrics = agent.update(synthetic_batch(reward=reward))
        assert not bool(agent.reward_seen) and not agent.adapting(10)
        assert "selector_actor_loss" not in metrics
        assert all(torch.equal(v, agent.meta.selector.state_dict()[k]) for k, v in selector.items())
    metrics = agent.update(synthetic_batch(reward=2e-4))
    assert bool(agent.reward_seen) and agent.adapting(10)
    assert "selector_actor_loss" in metrics
    agent.update(synthetic_batch(reward=0.0))
    assert bool(agent.reward_seen), "the gate stays open"


def test_adapting_waits_for_num_init_frames(tiny_config):
    cfg = tiny_config("agent.num_init_frames=400", "configs=dmc_states_ar2")
    agent = build_agent(cfg, (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    agent.finetune_mode()
    agent.reward_seen.fill_(True)
    assert not agent.adapting(199) and agent.adapting(200)


def test_nearest_skill_picks_the_code_nearest_a_constructed_latent(tiny_config):
    agent = build_agent(tiny_config("agent.skill_dim=8"), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    torch.manual_seed(3)
    agent.skill_module.codebook.copy_(torch.randn_like(agent.skill_module.codebook) * 3)
    targets = agent.skill_module.skill_target(torch.eye(8))
    for index in range(8):
        goal = targets[index:index + 1] + 1e-3 * torch.randn(1, targets.shape[1])
        assert agent.nearest_skill(goal) == index


def test_goal_latent_depends_on_the_goal_observation(tiny_config):
    agent = build_agent(tiny_config(), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    far = np.random.default_rng(0).normal(0, 5, OBS_DIM).astype(np.float32)
    near = np.zeros(OBS_DIM, np.float32)
    one, other = agent.goal_latent(near, steps=5), agent.goal_latent(far, steps=5)
    single, single_other = agent.goal_latent(far, steps=1), agent.goal_latent(near, steps=1)
    assert not torch.allclose(one, other)
    assert torch.equal(one, agent.goal_latent(near, steps=5)), "repeatable: most likely latents, no sampling"
    # A single first step cannot see the observation: the deterministic state starts from zeros.
    assert torch.allclose(single, single_other)


def write_snapshot(agent, root, obs_type="states", domain="walker", frames=100, action_repeat=1):
    path = root / "pretrained_models" / obs_type / domain / "choreo" / "1" / f"snapshot_{frames}.pt"
    save_snapshot({"agent": agent.snapshot_state(), "obs_type": obs_type, "domain": domain,
                   "action_repeat": action_repeat, "global_frame": frames}, path)
    return path


def run_finetune(tmp_path, *args, timeout=600):
    command = [sys.executable, str(REPO / "finetune.py"), *TINY, f"hydra.run.dir={tmp_path / 'run'}", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("obs_type, domain, message", [
    ("pixels", "walker", "obs_type='pixels'"), ("states", "quadruped", "domain='quadruped'")])
def test_snapshot_of_another_obs_type_or_domain_is_refused(tiny_config, tmp_path, obs_type, domain, message):
    agent = build_agent(tiny_config(), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    write_snapshot(agent, tmp_path, obs_type="states", domain="walker")
    # Put the same file where a pixels / quadruped run would look, labelled as what it really is.
    target = tmp_path / "pretrained_models" / obs_type / domain / "choreo" / "1" / "snapshot_100.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((tmp_path / "pretrained_models/states/walker/choreo/1/snapshot_100.pt").read_bytes())
    configs = "configs=dmc_pixels" if obs_type == "pixels" else "configs=dmc_states"
    result = run_finetune(tmp_path, configs, f"task={domain}_walk", "snapshot_ts=100", "num_train_frames=10")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in result.stderr, result.stderr


def test_missing_snapshot_names_path_and_existing_values(tiny_config, tmp_path):
    agent = build_agent(tiny_config(), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    write_snapshot(agent, tmp_path, frames=100)
    write_snapshot(agent, tmp_path, frames=300)
    result = run_finetune(tmp_path, "task=walker_run", "snapshot_ts=200", "num_train_frames=10")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert "snapshot_200.pt" in last and "100, 300" in last, last


def test_finetune_script_runs_and_saves_finetuned_snapshot(tiny_config, tmp_path):
    agent = build_agent(tiny_config(), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))
    write_snapshot(agent, tmp_path, frames=100)
    result = run_finetune(tmp_path, "configs=dmc_states", "agent=choreo", "task=walker_run", "snapshot_ts=100",
                          "seed=1", "num_train_frames=1100", "num_seed_frames=1000", "eval_every_frames=1000",
                          "num_eval_episodes=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^\| eval \| F: 1000 \| S: 1000 \| E: 1 \| L: 1000 \| R: \d+\.\d{4} \| T: ",
                     result.stdout, re.M), result.stdout
    payload = torch.load(tmp_path / "run" / "finetuned_snapshot.pt", weights_only=True)
    assert payload["agent"]["phase"] == "finetune" and payload["updates"] == 10
    # The run ends by saying where its snapshot went.
    assert f"  snapshots:   {tmp_path / 'run' / 'finetuned_snapshot.pt'}" in result.stdout.splitlines(), result.stdout


@pytest.mark.parametrize("task, extra", [("jaco_reach_top_left", []),
                                         ("mw_reach", ["task_id=3", "agent.update_skill_every_step=50"]),
                                         ("jaco_reach_top_left", ["goal_skill=imagine"])])
def test_zero_shot_goal_evaluation_logs_success_rates(tiny_config, tmp_path, task, extra):
    domain = task.split("_")[0]
    env_obs = {"jaco": 55, "mw": 39}[domain]
    action_dim = {"jaco": 9, "mw": 4}[domain]
    agent = build_agent(tiny_config(), (env_obs,), action_dim, torch.device("cpu"))
    write_snapshot(agent, tmp_path, domain=domain, frames=100, action_repeat=2)
    result = run_finetune(tmp_path, "configs=dmc_states_ar2", f"task={task}", "snapshot_ts=100",
                          "num_train_frames=10", "num_eval_episodes=2", "eval_goals=True", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    frames = {"jaco": 250, "mw": 500}[domain]  # 125 / 250 agent steps at action repeat 2
    assert re.search(rf"^\| eval \| F: 0 \| S: 0 \| E: 0 \| L: {frames} \| R: ", result.stdout, re.M), result.stdout
    assert "warning" not in result.stdout
    header, row = (tmp_path / "run" / "eval.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    assert 0.0 <= float(values["success_rate"]) <= 1.0
    assert 0.0 <= float(values["goal_success_rate"]) <= 1.0
    # The console line carries both rates too, as written to eval.csv.
    line = next(line for line in result.stdout.splitlines() if line.startswith("| eval |"))
    assert line.endswith(f" | success_rate: {float(values['success_rate']):.4f}"
                         f" | goal_success_rate: {float(values['goal_success_rate']):.4f}"), line
