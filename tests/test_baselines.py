"""The baselines on the shared world model (agent/explorer.py, lbs.py, plan2explore.py, apt.py,
dreamer.py; icm.py and rnd.py's own checks are in tests/test_icm_rnd.py): each exploration reward and intrinsic-model loss recomputed here from its definition
(numpy, float64, network outputs from the layers' weights), what fine-tuning copies and trains,
Dreamer's world-model-only start, and the real scripts end to end with tiny networks."""
from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO, TINY, compose_config
from conftest import synthetic_batch as conftest_batch
from test_exorl import rollout, write_npz
from utils.runner import build_agent
from utils.snapshot import load_snapshot, save_snapshot

OBS_DIM, ACTION_DIM = 24, 6
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# TINY without the keys of choreo's yaml, which the other agents do not take.
BASE = [o for o in TINY if not o.startswith("agent.")]
AGENT_EXTRA = {"apt": ["agent.knn_k=5"], "diayn": ["agent.skill_dim=4"],
               "aps": ["agent.skill_dim=4", "agent.knn_k=5"]}
EXPLORERS = ["lbs", "plan2explore", "apt", "icm", "rnd"]
# The attribute holding each explorer's intrinsic model (also its optimiser's name), its parameter
# groups and its loss metric.
INTRINSIC = {"lbs": "lbs", "plan2explore": "ensemble", "apt": None, "icm": "icm", "rnd": "rnd"}
INTRINSIC_GROUPS = {"lbs": {"lbs.head"}, "plan2explore": {"ensemble.heads"}, "apt": set(), "icm": {"icm.head"},
                    "rnd": {"rnd.predictor", "rnd.moments"}}
INTRINSIC_LOSS = {"lbs": {"lbs_loss"}, "plan2explore": {"ensemble_loss"}, "apt": set(), "icm": {"icm_loss"},
                  "rnd": {"rnd_loss"}}
# The exploration reward's StreamNorm momentum: RND divides by its error's running std instead.
EXPLORATION_NORM = {"rnd": 1.0}
WORLD_MODEL = ("wm.rssm.", "wm.encoder.", "wm.decoder.")


def make_agent(name: str, *extra: str, seed: int = 0, config: str = "pretrain", choreo: bool = False):
    overrides = (TINY if choreo else BASE) + [f"agent={name}", "precision=32", *AGENT_EXTRA.get(name, []), *extra]
    torch.manual_seed(seed)
    return build_agent(compose_config(overrides, config), (OBS_DIM,), ACTION_DIM, torch.device("cpu"))


def synthetic_batch(seed: int = 0, batch: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    return conftest_batch(seed, batch, length, OBS_DIM, ACTION_DIM)


# ------------------------------------------------------------------------------------ numpy helpers
def np_mlp(head: nn.Module, x: np.ndarray) -> np.ndarray:
    """An MSEHead's mean computed in float64 numpy from its layers' weights."""
    x = x.astype(np.float64)
    for layer in list(head.trunk) + [head.mean]:
        if isinstance(layer, nn.Linear):
            x = x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        elif isinstance(layer, nn.LayerNorm):
            mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
            x = (x - mean) / np.sqrt(var + layer.eps) * layer.weight.detach().double().numpy() \
                + layer.bias.detach().double().numpy()
        elif isinstance(layer, nn.ELU):
            x = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
        elif not isinstance(layer, nn.Identity):
            raise TypeError(f"unexpected layer {layer}")
    return x


def np_unit_normal_log_prob(value: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """log N(value; mean, I) summed over the last axis."""
    return (-0.5 * (value - mean) ** 2 - LOG_SQRT_2PI).sum(-1)


def brute_force_knn_reward(points: np.ndarray, k: int, clip: float) -> np.ndarray:
    points = points.astype(np.float64)
    distance = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    nearest = np.sort(distance, axis=1)[:, :k]  # column 0: the point itself, distance 0
    return np.maximum(nearest - clip, 0).mean(1)


def posterior(agent, batch):
    """The world model's posterior (B, T, ...) and per-step KL (B, T) on ``batch``, no training."""
    with torch.no_grad():
        _, post, kl, _ = agent.wm.loss(batch)
    return post, kl


def imagined(agent, seed: int = 1):
    """Imagined states (H+1, N, ...) and features under the agent's actor from a batch's posterior.
    No sequence starts an episode here: every first posterior step would have the same deter, and
    the distance between two equal points is round-off (the sqrt of ~1e-7 in float32), which the
    particle-entropy clip does not absorb entirely."""
    batch = synthetic_batch(seed)
    batch["is_first"][:] = False
    post, _ = posterior(agent, batch)
    with torch.no_grad():
        states, _ = agent.ac.imagine(agent.wm.rssm, agent.imagination_starts(post), agent.imag_horizon)
    return states, agent.wm.rssm.feat(states)


# ----------------------------------------------------------------------------- exploration rewards
def test_lbs_reward_and_loss_against_the_definition():
    agent = make_agent("lbs")
    states, feat = imagined(agent)
    with torch.no_grad():
        reward = agent.intrinsic_reward(states, feat)
    expected = np_mlp(agent.lbs.head, feat.numpy())[..., 0]
    assert reward.shape == feat.shape[:2]
    np.testing.assert_allclose(reward.numpy(), expected, rtol=1e-5, atol=1e-6)

    # The head learns the world model's per-step KL(post || prior) from the posterior features.
    batch = synthetic_batch(2)
    post, kl = posterior(agent, batch)
    feat_post = agent.wm.rssm.feat(post).numpy()
    expected_loss = -np_unit_normal_log_prob(kl.numpy()[..., None], np_mlp(agent.lbs.head, feat_post)).mean()
    before = [p.clone() for p in agent.lbs.parameters()]
    metrics = agent.update_intrinsic(post, kl, batch)
    np.testing.assert_allclose(float(metrics["lbs_loss"]), expected_loss, rtol=1e-5)
    assert all(not torch.equal(b, p) for b, p in zip(before, agent.lbs.parameters()))


def test_plan2explore_reward_and_loss_against_the_definition():
    agent = make_agent("plan2explore")
    heads = agent.ensemble.heads
    assert len(heads) == 5 and not torch.equal(heads[0].mean.weight, heads[1].mean.weight), "distinct inits"
    states, feat = imagined(agent)
    deter = states["deter"].numpy()
    outputs = np.stack([np_mlp(head, deter) for head in heads])  # (K, H+1, N, stoch*discrete)
    assert outputs.shape[-1] == agent.wm.rssm.stoch * agent.wm.rssm.discrete
    expected = outputs.std(0).mean(-1)  # population std across the heads, mean over the dimensions
    with torch.no_grad():
        reward = agent.intrinsic_reward(states, feat)
    np.testing.assert_allclose(reward.numpy(), expected, rtol=1e-5, atol=1e-6)

    # Differentiable in the imagined deterministic state (the actor's dynamics gradient).
    deter_grad = states["deter"].clone().requires_grad_(True)
    agent.intrinsic_reward({**states, "deter": deter_grad}, feat).sum().backward()
    assert deter_grad.grad is not None and deter_grad.grad.abs().sum() > 0

    # Every head predicts the posterior one-hots from the posterior deter, the losses summed.
    batch = synthetic_batch(2)
    post, kl = posterior(agent, batch)
    target = post["stoch"].reshape(*post["stoch"].shape[:2], -1).numpy()
    expected_loss = -sum(np_unit_normal_log_prob(target, np_mlp(head, post["deter"].numpy())).mean()
                         for head in heads)
    before = [head.mean.weight.clone() for head in heads]
    metrics = agent.update_intrinsic(post, kl, batch)
    np.testing.assert_allclose(float(metrics["ensemble_loss"]), expected_loss, rtol=1e-5)
    assert all(not torch.equal(b, head.mean.weight) for b, head in zip(before, heads)), "every head trains"


@pytest.mark.parametrize("mode", ["fast", "eager"])
def test_apt_reward_is_the_brute_force_knn_mean(mode):
    # A small chunk so the distance matrix is taken in several row blocks.
    agent = make_agent("apt", f"mode={mode}", "agent.knn_chunk_elements=1000")
    states, feat = imagined(agent)
    with torch.no_grad():
        reward = agent.intrinsic_reward(states, feat)
    deter = states["deter"].numpy()
    pooled = deter.reshape(-1, deter.shape[-1])  # every imagined step and start together
    assert pooled.shape[0] > 1000 // pooled.shape[0] > 1
    expected = brute_force_knn_reward(pooled, k=5, clip=agent.knn_clip).reshape(deter.shape[:-1])
    np.testing.assert_allclose(reward.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert agent.optimizers().keys() == {"model", "actor", "critic"}


# ------------------------------------------------------------------------------------- fine-tuning
def changed_groups(before: dict, after: dict) -> set[str]:
    return {".".join(key.split(".")[:2]) for key, value in after.items()
            if value.dtype.is_floating_point and not torch.equal(before[key], value)}


def floats(agent) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in agent.state_dict().items() if torch.is_tensor(value)}


@pytest.mark.parametrize("name", EXPLORERS)
def test_pretraining_update_trains_model_intrinsic_model_and_exploration(name):
    agent = make_agent(name)
    part = INTRINSIC[name]
    assert agent.optimizers().keys() == {"model", "actor", "critic"} | ({part} if part else set())
    before = floats(agent)
    metrics = agent.update(synthetic_batch())
    momentum = EXPLORATION_NORM.get(name, 0.95)
    expected = {"wm.encoder", "wm.rssm", "wm.decoder", "wm.reward_head", "ac.actor", "ac.critic",
                "ac.target_critic"} | ({"ac.reward_norm"} if momentum < 1 else set()) | INTRINSIC_GROUPS[name]
    assert changed_groups(before, floats(agent)) == expected
    assert {"model_loss", "actor_loss", "critic_loss", "reward_mean"} | INTRINSIC_LOSS[name] <= set(metrics)
    assert all(torch.isfinite(value).all() for value in metrics.values())
    assert agent.ac.reward_norm.momentum == momentum and agent.ac.actor_ent == 0.0


@pytest.mark.parametrize("name", EXPLORERS)
def test_finetuning_starts_from_the_exploration_actor_with_a_fresh_critic(name):
    pretrained = make_agent(name, seed=0)
    pretrained.update(synthetic_batch())
    source = pretrained.snapshot_state()["modules"]
    agent = make_agent(name, seed=1, config="finetune")
    agent.finetune_mode()
    agent.init_from(source)
    own = agent.state_dict()
    for key, value in own.items():
        if key.startswith(WORLD_MODEL + ("ac.actor.",)):
            assert torch.equal(value, source[key]), key
        elif key.startswith(("ac.critic.", "ac.target_critic.", "wm.reward_head.")):
            assert not torch.equal(value, source[key]), f"{key} should start fresh"
    assert INTRINSIC[name] is None or not hasattr(agent, INTRINSIC[name])
    assert agent.optimizers().keys() == {"model", "actor", "critic"}
    assert agent.ac.reward_norm.momentum == 1.0 and agent.ac.actor_ent == 1e-4 and agent.ac.updates == 0

    before = floats(agent)
    metrics = agent.update(synthetic_batch(seed=3))
    assert changed_groups(before, floats(agent)) == {"wm.encoder", "wm.rssm", "wm.decoder", "wm.reward_head",
                                                     "ac.actor", "ac.critic", "ac.target_critic"}
    assert {"model_loss", "actor_loss", "critic_loss"} <= set(metrics) and not INTRINSIC_LOSS[name] & set(metrics)
    # A fine-tuning checkpoint resumes into a fresh fine-tuning agent.
    resumed = make_agent(name, seed=2, config="finetune")
    resumed.finetune_mode()
    resumed.load_snapshot_state(agent.snapshot_state())
    assert all(torch.equal(value, resumed.state_dict()[key]) for key, value in floats(agent).items())


def test_dreamer_copies_exactly_the_world_model_of_a_choreo_snapshot():
    choreo = make_agent("choreo", seed=0, choreo=True)
    choreo.update(synthetic_batch())
    source = choreo.snapshot_state()["modules"]
    agent = make_agent("dreamer", seed=1, config="finetune")
    assert not agent.reward_free and agent.loads_snapshots_of == ("*",)
    assert agent.wm.grad_heads == {"decoder", "reward"}
    agent.finetune_mode()
    before = floats(agent)
    agent.init_from(source)
    after = floats(agent)
    copied = {key for key in after if key.startswith(WORLD_MODEL)}
    assert copied and all(torch.equal(after[key], source[key]) for key in copied)
    assert any(not torch.equal(before[key], source[key]) for key in copied), "the copy must change something"
    assert all(torch.equal(after[key], before[key]) for key in after if key not in copied)
    assert agent.optimizers().keys() == {"model", "actor", "critic"}
    before = floats(agent)
    agent.update(synthetic_batch())
    assert changed_groups(before, floats(agent)) == {"wm.encoder", "wm.rssm", "wm.decoder", "wm.reward_head",
                                                     "ac.actor", "ac.critic", "ac.target_critic"}


# ------------------------------------------------------------------------------ scripts end to end
# One thread per run: the tests share two cores with other work.
CLI_TINY = BASE + ["seed=1", "train_every_actions=50", "threads=1"]


def run_script(script: str, cwd, run_dir: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / script), *CLI_TINY, *args, f"hydra.run.dir={cwd / run_dir}"]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{script} {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result


def losses_are_finite(run_dir) -> set[str]:
    with open(run_dir / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = {key for row in rows for key, value in row.items() if key.endswith("_loss") and value not in ("", None)}
    assert names, f"no losses logged in {run_dir / 'train.csv'}"
    for row in rows:
        for key in names:
            if row.get(key) not in ("", None):
                assert np.isfinite(float(row[key])), (key, row[key])
    return names


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dataset") / "buffer"
    for index, seed in enumerate((0, 1, 2)):
        write_npz(directory / f"episode_{index}_40.npz", rollout(steps=40, seed=seed))
    return directory


def run_offline(tmp_path, name: str, dataset, stdout: list | None = None) -> set[str]:
    """The logged loss names of a tiny offline run; its console output is appended to ``stdout``."""
    result = run_script("offline_train.py", tmp_path, "offline", "configs=dmc_states", f"agent={name}",
                        *AGENT_EXTRA.get(name, []), "domain=walker", "dataset=ours", "collection_method=random",
                        "num_train_updates=4", "snapshots=[4]", "log_every_updates=2", "eval_every_updates=2",
                        f"dataset_dir={dataset}")
    if stdout is not None:
        stdout.append(result.stdout)
    assert (tmp_path / f"offline_models/ours/random/walker/{name}/1/snapshot_4.pt").is_file()
    return losses_are_finite(tmp_path / "offline")



@pytest.mark.parametrize("name", EXPLORERS)
def test_scripts_pretrain_finetune_and_offline(tmp_path, tiny_dataset, name):
    # Two episodes per online run: train.csv is written at episode ends, and updates need one finished.
    extra = AGENT_EXTRA.get(name, [])
    run_script("pretrain.py", tmp_path, "pretrain", "configs=dmc_states", f"agent={name}", *extra,
               "num_train_frames=2000", "num_seed_frames=1000", "snapshots=[1200]")
    snapshot = tmp_path / f"pretrained_models/states/walker/{name}/1/snapshot_1200.pt"
    assert snapshot.is_file()
    assert torch.load(snapshot, weights_only=True)["agent"]["name"] == name
    logged = losses_are_finite(tmp_path / "pretrain")
    assert {"model_loss", "actor_loss", "critic_loss"} | INTRINSIC_LOSS[name] <= logged

    run_script("finetune.py", tmp_path, "finetune", "configs=dmc_states", f"agent={name}", *extra,
               "task=walker_run", "snapshot_ts=1200", "num_train_frames=2000", "num_seed_frames=1000")
    names = losses_are_finite(tmp_path / "finetune")
    assert {"model_loss", "actor_loss", "critic_loss"} <= names and not names & INTRINSIC_LOSS[name]
    payload = torch.load(tmp_path / "finetune" / "finetuned_snapshot.pt", weights_only=True)
    assert payload["agent"]["phase"] == "finetune" and payload["agent"]["name"] == name

    printed = []
    assert {"model_loss", "actor_loss"} | INTRINSIC_LOSS[name] <= run_offline(tmp_path, name, tiny_dataset, printed)
    assert "not reward-free" not in printed[0]


def test_scripts_dreamer_from_scratch_and_offline(tmp_path, tiny_dataset):
    result = run_script("finetune.py", tmp_path, "finetune", "configs=dmc_states", "agent=dreamer",
                        "task=walker_run", "snapshot_ts=0", "num_train_frames=2000", "num_seed_frames=1000",
                        "eval_every_frames=1000", "num_eval_episodes=1")
    assert any(line.startswith("| eval | F: 1000 |") for line in result.stdout.splitlines()), result.stdout
    assert {"model_loss", "actor_loss", "critic_loss"} <= losses_are_finite(tmp_path / "finetune")
    printed = []
    assert {"model_loss", "actor_loss", "critic_loss"} <= run_offline(tmp_path, "dreamer", tiny_dataset, printed)
    # Offline, dreamer learns from the dataset's rewards, and its first lines say so.
    assert ("note: agent=dreamer is not reward-free: it trains on the dataset's rewards for walker_stand "
            "(as stored)") in printed[0].splitlines()[:3], printed[0][:1000]

    # From the world model of another agent's pre-training snapshot (here Choreographer's).
    choreo = make_agent("choreo", choreo=True)
    save_snapshot({"agent": choreo.snapshot_state(), "obs_type": "states", "domain": "walker", "action_repeat": 1,
                   "global_frame": 100}, tmp_path / "pretrained_models/states/walker/choreo/1/snapshot_100.pt")
    run_script("finetune.py", tmp_path, "from_choreo", "configs=dmc_states", "agent=dreamer", "task=walker_run",
               "snapshot_agent=choreo", "snapshot_ts=100", "num_train_frames=1100", "num_seed_frames=1000")
    payload = torch.load(tmp_path / "from_choreo" / "finetuned_snapshot.pt", weights_only=True)
    assert payload["agent"]["name"] == "dreamer" and payload["updates"] == 2


def test_scripts_plan2explore_pixels(tmp_path):
    # One episode (500 rendered steps at action repeat 2) and a few updates per script. train.csv is
    # written at episode ends, so these runs log no losses; a non-finite one would have stopped the
    # run (exit 1), and the fine-tuned snapshot counts the updates.
    args = ["configs=dmc_pixels", "agent=plan2explore", "num_seed_frames=1000", "num_train_frames=1100"]
    run_script("pretrain.py", tmp_path, "pretrain", *args, "snapshots=[1100]")
    snapshot = load_snapshot(tmp_path / "pretrained_models/pixels/walker/plan2explore/1/snapshot_1100.pt")
    assert snapshot["agent"]["name"] == "plan2explore" and "ensemble" in snapshot["agent"]["optimizers"]
    run_script("finetune.py", tmp_path, "finetune", *args, "task=walker_run", "snapshot_ts=1100")
    payload = torch.load(tmp_path / "finetune" / "finetuned_snapshot.pt", weights_only=True)
    assert payload["agent"]["phase"] == "finetune" and payload["updates"] == 2
