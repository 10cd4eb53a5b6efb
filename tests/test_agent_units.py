"""Unit tests of the agent's parts against hand-computed values: the VQ skill module's EMA codebook
and dead-code re-seeding (docs/algorithm.md §7.2, §7.3), the code reward (§7.5), the
particle-entropy reward (§7.5, docs/decisions.md D5) and agent snapshots (§10.7, docs/decisions.md
D6). Small tensors, real numbers, no mocks.
"""
from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.exploration import particle_entropy_reward  # noqa: E402
from agent.skills import SkillModule  # noqa: E402
from utils.snapshot import SnapshotError, load_snapshot, save_snapshot  # noqa: E402
from conftest import synthetic_batch as conftest_batch  # noqa: E402

DECAY, EPS = 0.99, 1e-5


# ------------------------------------------------------------------------- 3. VQ EMA


def tiny_skills(deter_dim=4, skill_dim=3, code_dim=2, layers=1, units=8, **kwargs) -> SkillModule:
    return SkillModule(deter_dim, skill_dim, code_dim, layers, units, "layer", **kwargs)


def ema_reference(codebook, embed_avg, cluster_size, usage, z_e, index):
    """The EMA update of docs/algorithm.md §7.2 in plain Python; codebook/embed_avg are lists of
    columns (codes)."""
    skills = len(cluster_size)
    counts = [sum(1 for i in index if i == j) for j in range(skills)]
    usage = [u + n for u, n in zip(usage, counts)]
    counts_used = [n if n > 0 else 1 for n in counts]
    cluster_size = [DECAY * c + (1 - DECAY) * n for c, n in zip(cluster_size, counts_used)]
    sums = [[sum(z[d] for z, i in zip(z_e, index) if i == j) for d in range(len(z_e[0]))] for j in range(skills)]
    embed_avg = [[DECAY * a + (1 - DECAY) * s for a, s in zip(embed_avg[j], sums[j])] for j in range(skills)]
    total = sum(cluster_size)
    smoothed = [(c + EPS) / (total + skills * EPS) * total for c in cluster_size]
    codebook = [[a / smoothed[j] for a in embed_avg[j]] for j in range(skills)]
    return codebook, embed_avg, cluster_size, usage


def columns(matrix: torch.Tensor) -> list[list[float]]:
    return matrix.t().tolist()


def test_ema_update_matches_hand_computation():
    module = tiny_skills()
    codebook = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, -1.0]])          # (code_dim, skills)
    embed_avg = torch.tensor([[0.5, 1.0, 1.5], [0.2, -0.4, 0.0]])
    cluster_size = torch.tensor([2.0, 0.5, 1.0])
    usage = torch.tensor([3.0, 0.0, 1.0])
    module.codebook.copy_(codebook)
    module.embed_avg.copy_(embed_avg)
    module.cluster_size.copy_(cluster_size)
    module.usage.copy_(usage)
    z_e = torch.tensor([[0.1, 0.2], [0.3, -0.1], [1.9, -0.8], [2.2, -1.2]])
    index = torch.tensor([0, 0, 2, 2])                                       # code 1 unused

    module.ema_update(z_e, index)

    exp_code, exp_avg, exp_size, exp_usage = ema_reference(
        columns(codebook), columns(embed_avg), cluster_size.tolist(), usage.tolist(), z_e.tolist(), index.tolist())
    # Spot values worked out by hand: code 1 counts as chosen once, code 0 twice.
    assert exp_size == pytest.approx([0.99 * 2 + 0.01 * 2, 0.99 * 0.5 + 0.01 * 1, 0.99 * 1 + 0.01 * 2])
    assert exp_avg[0] == pytest.approx([0.99 * 0.5 + 0.01 * 0.4, 0.99 * 0.2 + 0.01 * 0.1])
    assert exp_usage == [5.0, 0.0, 3.0]
    torch.testing.assert_close(module.cluster_size, torch.tensor(exp_size))
    torch.testing.assert_close(module.embed_avg, torch.tensor(exp_avg).t())
    torch.testing.assert_close(module.codebook, torch.tensor(exp_code).t())
    assert module.usage.tolist() == exp_usage

    # A second call accumulates (usage is a raw count, cluster_size/embed_avg keep decaying).
    z2 = torch.tensor([[1.0, 1.0]])
    module.ema_update(z2, torch.tensor([1]))
    exp_code, exp_avg, exp_size, exp_usage = ema_reference(exp_code, exp_avg, exp_size, exp_usage, z2.tolist(), [1])
    assert exp_usage == [5.0, 1.0, 3.0]
    torch.testing.assert_close(module.cluster_size, torch.tensor(exp_size))
    torch.testing.assert_close(module.embed_avg, torch.tensor(exp_avg).t())
    torch.testing.assert_close(module.codebook, torch.tensor(exp_code).t())


def test_nearest_code_is_euclidean_argmin():
    torch.manual_seed(0)
    module = tiny_skills(skill_dim=7, code_dim=3)
    z = torch.randn(50, 3)
    expected = torch.cdist(z.double(), module.codebook.t().double()).argmin(-1)
    assert torch.equal(module.nearest_code(z), expected)


def test_update_uses_codebook_before_its_own_ema_step():
    torch.manual_seed(1)
    module = tiny_skills(skill_dim=4, code_dim=2, code_resampling=False)
    deter = torch.randn(6, 4)
    before = {name: getattr(module, name).clone() for name in ("codebook", "embed_avg", "cluster_size", "usage")}
    with torch.no_grad():
        z_e = module.encoder(deter).mean                  # encoder before its optimiser step
    index = torch.cdist(z_e, before["codebook"].t()).argmin(-1)
    metrics = module.update(deter)
    exp_code, exp_avg, exp_size, exp_usage = ema_reference(
        columns(before["codebook"]), columns(before["embed_avg"]), before["cluster_size"].tolist(),
        before["usage"].tolist(), z_e.tolist(), index.tolist())
    torch.testing.assert_close(module.codebook, torch.tensor(exp_code).t())
    torch.testing.assert_close(module.embed_avg, torch.tensor(exp_avg).t())
    assert module.usage.tolist() == exp_usage and sum(exp_usage) == 6
    # commit loss uses the pre-update code of each point.
    commit = (z_e - before["codebook"].t()[index]).pow(2).mean()
    assert metrics["commit_loss"].item() == pytest.approx(commit.item(), rel=1e-5)
    assert metrics["skill_loss"].item() == pytest.approx(metrics["rec_loss"].item() + 1e-4 * commit.item(), rel=1e-5)
    assert "unused_codes" not in metrics


# -------------------------------------------------------------------- 3. re-seeding


def test_resample_unused_reseeds_exactly_the_unused_codes():
    for seed in range(5):
        torch.manual_seed(seed)
        module = tiny_skills(skill_dim=4, code_dim=2)
        module.usage.copy_(torch.tensor([5.0, 0.0, 0.0, 2.0]))
        module.cluster_size.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        before = {name: getattr(module, name).clone() for name in ("codebook", "embed_avg", "cluster_size")}
        deter = torch.randn(6, 4)
        with torch.no_grad():
            z = module.encoder(deter).mean

        metrics = module.resample_unused(deter)

        assert metrics["unused_codes"].item() == 2.0 and metrics["resampled_codes"].item() == 2.0
        for j in (0, 3):  # used codes untouched
            assert torch.equal(module.codebook[:, j], before["codebook"][:, j])
            assert torch.equal(module.embed_avg[:, j], before["embed_avg"][:, j])
        picked = []
        for j in (1, 2):  # moved onto encoded batch points, embed_avg too
            matches = [i for i in range(6) if torch.equal(module.codebook[:, j], z[i])]
            assert len(matches) == 1, f"code {j} is not a row of encoder(deter).mean"
            assert torch.equal(module.embed_avg[:, j], z[matches[0]])
            picked.append(matches[0])
        # The second re-seed sees the first (its point has distance 0, probability 0).
        assert picked[0] != picked[1]
        assert torch.equal(module.cluster_size, before["cluster_size"])  # not reset (docs/algorithm.md §7.3)
        assert module.usage.tolist() == [0.0, 0.0, 0.0, 0.0]


def identity_encoder_module(skill_dim: int) -> SkillModule:
    """Encoder = one Linear set to the identity, so encoded points are the inputs themselves."""
    module = tiny_skills(deter_dim=2, skill_dim=skill_dim, code_dim=2, layers=0)
    with torch.no_grad():
        module.encoder.mean.weight.copy_(torch.eye(2))
        module.encoder.mean.bias.zero_()
    return module


def test_resample_draws_proportional_to_distance_not_squared():
    module = identity_encoder_module(skill_dim=2)
    deter = torch.tensor([[1.0, 0.0], [3.0, 0.0]])         # distances 1 and 3 from code 0 at the origin
    codebook = torch.tensor([[0.0, 100.0], [0.0, 100.0]])  # code 1 (unused) far away
    torch.manual_seed(2)
    trials, second = 1000, 0
    for _ in range(trials):
        module.codebook.copy_(codebook)
        module.usage.copy_(torch.tensor([1.0, 0.0]))
        module.resample_unused(deter)
        second += int(module.codebook[0, 1].item() == 3.0)
    # proportional to distance: 3/4 (binomial sd 0.014); to squared distance it would be 9/10.
    assert abs(second / trials - 0.75) < 0.05


def test_resample_stops_when_every_point_sits_on_a_code():
    module = identity_encoder_module(skill_dim=3)
    module.codebook.copy_(torch.tensor([[0.0, 5.0, 7.0], [0.0, 5.0, 7.0]]))
    module.usage.copy_(torch.tensor([1.0, 0.0, 0.0]))
    metrics = module.resample_unused(torch.tensor([[2.0, -1.0]]))
    # The one point re-seeds code 1; then its distance is 0 and code 2 stays where it was.
    assert metrics["unused_codes"].item() == 2.0 and metrics["resampled_codes"].item() == 1.0
    torch.testing.assert_close(module.codebook, torch.tensor([[0.0, 2.0, 7.0], [0.0, -1.0, 7.0]]))


def test_update_reseeds_every_resample_every_updates():
    torch.manual_seed(3)
    module = tiny_skills(skill_dim=3, code_dim=2, resample_every=3)
    deter = torch.randn(5, 4)
    usage_sums, has_metrics = [], []
    for _ in range(7):
        metrics = module.update(deter)
        usage_sums.append(module.usage.sum().item())
        has_metrics.append("unused_codes" in metrics and "resampled_codes" in metrics)
    assert usage_sums == [5.0, 10.0, 0.0, 5.0, 10.0, 0.0, 5.0]
    assert has_metrics == [False, False, True, True, True, True, True]  # cached after the first re-seed
    assert module.updates == 7

    off = tiny_skills(skill_dim=3, code_dim=2, resample_every=3, code_resampling=False)
    for _ in range(4):
        metrics = off.update(deter)
    assert off.usage.sum().item() == 20.0 and "unused_codes" not in metrics


def test_code_reward_is_negative_distance_to_decoded_code():
    torch.manual_seed(4)
    module = tiny_skills(skill_dim=3, code_dim=2)
    skill = torch.nn.functional.one_hot(torch.tensor([2, 0]), 3).float()      # N = 2
    deter = torch.randn(4, 2, 4, requires_grad=True)                           # (H+1, N, D)
    reward = module.code_reward(skill, deter)
    assert reward.shape == (4, 2)
    with torch.no_grad():
        target = module.decoder(module.codebook.t()[torch.tensor([2, 0])]).mean  # (N, D)
    expected = -(target.unsqueeze(0) - deter.detach()).norm(dim=-1)
    torch.testing.assert_close(reward.detach(), expected)
    reward.sum().backward()
    diff = target.unsqueeze(0) - deter.detach()
    torch.testing.assert_close(deter.grad, diff / diff.norm(dim=-1, keepdim=True))


# ---------------------------------------------------------- 4. particle-entropy reward


def entropy_reference(points: torch.Tensor, k: int, clip: float = 1e-4) -> torch.Tensor:
    points = points.double()
    distance = torch.cdist(points, points).sort(-1).values[:, :min(k, points.shape[0])]
    return (distance - clip).clamp(min=0).mean(-1)


def test_particle_entropy_k1_is_zero():
    torch.manual_seed(5)
    points = torch.randn(50, 8)
    assert torch.equal(particle_entropy_reward(points, k=1), torch.zeros(50))


@pytest.mark.parametrize("k", [3, 5])
def test_particle_entropy_matches_cdist_reference(k):
    torch.manual_seed(6)
    points = 2 * torch.randn(200, 8) + 3
    result = particle_entropy_reward(points, k=k, clip=1e-4)
    reference = entropy_reference(points, k)
    assert result.shape == (200,)
    assert reference.mean() > 1.0  # typical distances are O(1), so 1e-4 is a tight tolerance
    torch.testing.assert_close(result.double(), reference, rtol=0, atol=1e-4)


def test_particle_entropy_chunking_does_not_change_values():
    torch.manual_seed(7)
    points = torch.randn(200, 8)
    whole = particle_entropy_reward(points, k=5, chunk_elements=1 << 30)
    chunked = particle_entropy_reward(points, k=5, chunk_elements=1000)   # 5 rows per chunk, 40 chunks
    ragged = particle_entropy_reward(points, k=5, chunk_elements=7 * 200)  # last chunk shorter
    single_rows = particle_entropy_reward(points, k=5, chunk_elements=1)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(ragged, whole)
    torch.testing.assert_close(single_rows, whole)
    torch.testing.assert_close(whole.double(), entropy_reference(points, 5), rtol=0, atol=1e-4)


def test_particle_entropy_duplicate_points_have_zero_nearest_distance():
    torch.manual_seed(8)
    points = torch.randn(200, 8)
    points[17] = points[3]
    result = particle_entropy_reward(points, k=2, clip=1e-4)
    # self (0) and the twin (0 after the clip): both rewards are exactly 0; every other point is not.
    assert result[3].item() == 0.0 and result[17].item() == 0.0
    others = torch.ones(200, dtype=torch.bool)
    others[[3, 17]] = False
    assert (result[others] > 0.01).all()
    torch.testing.assert_close(result.double(), entropy_reference(points, 2), rtol=0, atol=1e-4)


def test_particle_entropy_k_larger_than_points_and_clip():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1e-5]])
    # k is capped at 3 points; distances below the clip count as 0.
    result = particle_entropy_reward(points, k=30, clip=1e-4)
    expected = [(0 + 0 + (5.0 - 1e-4)) / 3, (0 + (5.0 - 1e-4) + (math.hypot(3, 4 - 1e-5) - 1e-4)) / 3,
                (0 + 0 + (math.hypot(3, 4 - 1e-5) - 1e-4)) / 3]
    torch.testing.assert_close(result.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- 6. snapshots

OVERRIDES = ["preset=cpu", "batch_size=4", "batch_length=8", "imag_horizon=3", "imag_starts=16"]
OBS_DIM, ACTION_DIM, B, L = 24, 6, 4, 8


def build_tiny_agent(seed: int):
    from hydra import compose, initialize_config_dir
    from utils.runner import build_agent
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("pretrain", overrides=OVERRIDES)
    torch.manual_seed(seed)
    return build_agent(cfg, (OBS_DIM,), ACTION_DIM, torch.device("cpu"))


def synthetic_batch() -> dict[str, torch.Tensor]:
    return conftest_batch(11, B, L, OBS_DIM, ACTION_DIM)


def state_tensors_equal(a: dict, b: dict) -> list[str]:
    """Keys whose values differ (tensors compared exactly, other values with ==)."""
    assert a.keys() == b.keys()
    differ = []
    for key in a:
        x, y = a[key], b[key]
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        if not same:
            differ.append(key)
    return differ


def optimizer_states_equal(a, b) -> bool:
    for opt_a, opt_b in zip(a.optimizers().values(), b.optimizers().values()):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        if sa.keys() != sb.keys():
            return False
        for index in sa:
            for name in sa[index]:
                if not torch.equal(torch.as_tensor(sa[index][name]), torch.as_tensor(sb[index][name])):
                    return False
    return True


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / "snapshot_100.pt"
    batch = synthetic_batch()
    original = build_tiny_agent(seed=1)
    torch.manual_seed(100)
    for _ in range(2):
        original.update(batch)
    save_snapshot({"agent": original.snapshot_state()}, path)
    copy = build_tiny_agent(seed=2)
    assert state_tensors_equal(original.state_dict(), copy.state_dict())  # really different before loading
    copy.load_snapshot_state(load_snapshot(path)["agent"])
    return original, copy, batch, path


def test_snapshot_restores_every_state_tensor_and_counter(restored):
    original, copy, _, _ = restored
    assert state_tensors_equal(original.state_dict(), copy.state_dict()) == []
    assert copy.expl_ac.updates == copy.skill_ac.updates == copy.skill_module.updates == 2
    assert copy.expl_ac.reward_norm.mag.item() != 1.0  # a StreamNorm that moved, restored
    assert optimizer_states_equal(original, copy)
    assert original.rng.bit_generator.state == copy.rng.bit_generator.state
    assert np.array_equal(original.init_meta(), copy.init_meta())
    assert all(not p.requires_grad for p in copy.parameters())


def test_snapshot_restored_agent_acts_identically(restored):
    original, copy, _, _ = restored
    rng = np.random.default_rng(0)
    first = {"observation": rng.standard_normal(OBS_DIM).astype(np.float32), "is_first": True,
             "is_last": False, "reward": 0.0, "discount": 1.0}
    second = dict(first, observation=rng.standard_normal(OBS_DIM).astype(np.float32), is_first=False)
    meta = np.eye(original.skill_dim, dtype=np.float32)[0]
    for eval_mode in (True, False):
        actions = []
        for agent in (original, copy):
            torch.manual_seed(42)
            action, state = agent.act(first, meta, 0, eval_mode=eval_mode, state=None)
            action2, _ = agent.act(second, meta, 1, eval_mode=eval_mode, state=state)
            actions.append((action, action2))
        (a1, a2), (b1, b2) = actions
        assert a1.shape == (ACTION_DIM,) and a1.dtype == np.float32
        assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
        assert (np.abs(a1) < 1).all()


def test_snapshot_restored_agent_updates_identically(restored, tmp_path):
    original, copy, batch, path = restored
    # Control: modules without optimiser state give a different step, so the check below can fail.
    control = build_tiny_agent(seed=3)
    control.load_state_dict(load_snapshot(path)["agent"]["modules"])
    control.requires_grad_(False)

    results = []
    for agent in (original, copy, control):
        torch.manual_seed(7)
        results.append(agent.update(batch))
    metrics_a, metrics_b, metrics_c = results
    assert metrics_a.keys() == metrics_b.keys()
    for name in ("model_loss", "kl_loss", "lbs_loss", "actor_loss", "critic_loss", "skill_loss",
                 "skill_actor_loss", "skill_critic_loss"):
        assert name in metrics_a
    differ = [name for name in metrics_a if not torch.equal(metrics_a[name], metrics_b[name])]
    assert differ == []
    assert state_tensors_equal(original.state_dict(), copy.state_dict()) == []
    assert optimizer_states_equal(original, copy)
    # The control took the same first forward pass but a different optimiser step.
    assert torch.equal(metrics_a["model_loss"], metrics_c["model_loss"])
    assert state_tensors_equal(original.state_dict(), control.state_dict()) != []


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class PlainObject:
    def __init__(self):
        self.value = 3


def test_load_snapshot_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"agent": {"modules": {}}, "extra": Payload(marker)}, path)
    with pytest.raises(SnapshotError, match="refusing to load") as error:
        load_snapshot(path)
    assert str(path) in str(error.value)
    assert not marker.exists()
    # Control: the payload is live -- an unrestricted load would have run it.
    torch.load(path, weights_only=False)  # unsafe-ok: the control that proves the payload is live
    assert marker.exists()


def test_load_snapshot_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"agent": PlainObject()}, path)
    with pytest.raises(SnapshotError, match="refusing to load"):
        load_snapshot(path)


def test_load_snapshot_truncated_and_missing_files(tmp_path):
    good = tmp_path / "good.pt"
    save_snapshot({"agent": {"weights": torch.arange(1000.0)}, "step": 3}, good)
    assert load_snapshot(good)["step"] == 3
    data = good.read_bytes()
    for cut in (len(data) // 2, 10):
        bad = tmp_path / f"truncated_{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(SnapshotError) as error:
            load_snapshot(bad)
        assert str(bad) in str(error.value)
    with pytest.raises(SnapshotError, match="not found"):
        load_snapshot(tmp_path / "missing.pt")
    not_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(SnapshotError, match="does not hold a dict"):
        load_snapshot(not_dict)


def test_save_snapshot_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "dir" / "snapshot_5.pt"
    save_snapshot({"a": torch.ones(3)}, path)
    save_snapshot({"a": torch.zeros(3)}, path)  # overwrite
    assert torch.equal(load_snapshot(path)["a"], torch.zeros(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["snapshot_5.pt"]
