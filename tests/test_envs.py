"""Tests of the environment layer against the reference figures of docs/algorithm.md §11.9 (real
physics, no mocks).

Pixel tests live in tests/test_envs_pixels.py; this file stays in states mode and is fast.
"""

import hashlib
import math

import numpy as np
import pytest

import envs
import envs.metaworld
from envs.rewards import tolerance

# sha256 of the 10 x 50 x 6 goal array (float64, C order) of the original's goal sets, taken from the
# original's file when the shipped JSON was made; the test never reads anything outside the repository.
ORIGINAL_GOALS_SHA256 = "5f1472a5f8e4f4a62268af36dcc306c8c27692b5c5520a1669c97d57c8be2633"
JACO_TCP_SITE = "jaco_arm/jaco_hand/pinchsite"
JACO_ARM_JOINTS = [f"jaco_arm/joint_{index}" for index in range(1, 7)]
DOWN_QUATERNION = (0.0, 0.70710678118, 0.70710678118, 0.0)


def run_episode(env, action_value=0.0):
    """Steps a whole episode with a constant action; returns the step records after reset."""
    records = []
    record = env.reset()
    assert record["is_first"] and not record["is_last"]
    while not record["is_last"]:
        record = env.step(np.full(env.action_dim, action_value, dtype=np.float32))
        records.append(record)
        assert len(records) <= 2000, "episode never ended"
    return records


# ------------------------------------------------------------------------- registry


def test_registry_and_primal_tasks():
    assert envs.DOMAINS == ("walker", "quadruped", "jaco", "mw")
    assert envs.OBS_TYPES == ("states", "pixels")
    assert envs.TASKS["walker"] == ["walker_stand", "walker_walk", "walker_run", "walker_flip"]
    assert set(envs.TASKS["quadruped"]) == {"quadruped_walk", "quadruped_run", "quadruped_stand", "quadruped_jump"}
    assert envs.TASKS["jaco"] == [
        "jaco_reach_top_left",
        "jaco_reach_top_right",
        "jaco_reach_bottom_left",
        "jaco_reach_bottom_right",
    ]
    assert envs.TASKS["mw"] == ["mw_reach"]
    assert [envs.primal_task(domain) for domain in envs.DOMAINS] == [
        "walker_stand",
        "quadruped_walk",
        "jaco_reach_top_left",
        "mw_reach",
    ]


@pytest.mark.parametrize(
    "kwargs, bad_value",
    [
        (dict(task="walker_jog", obs_type="states", action_repeat=1, seed=0), "walker_jog"),
        (dict(task="cheetah_run", obs_type="states", action_repeat=1, seed=0), "cheetah"),
        (dict(task="walker_walk", obs_type="rgb", action_repeat=1, seed=0), "rgb"),
        (dict(task="walker_walk", obs_type="states", action_repeat=0, seed=0), "action_repeat 0"),
        (dict(task="mw_reach", obs_type="states", action_repeat=3, seed=0), "action_repeat 3"),
        (dict(task="mw_reach", obs_type="states", action_repeat=2, seed=10), "seed 10"),
        (dict(task="mw_reach", obs_type="states", action_repeat=2, seed=0, task_id=50), "task_id 50"),
    ],
)
def test_bad_arguments_give_one_line_value_errors(kwargs, bad_value):
    with pytest.raises(ValueError) as error:
        envs.make(**kwargs)
    message = str(error.value)
    assert "\n" not in message
    assert bad_value in message
    assert "valid" in message


def test_unknown_domain_for_primal_task():
    with pytest.raises(ValueError, match="unknown domain 'cheetah'; valid domains: walker, quadruped, jaco, mw"):
        envs.primal_task("cheetah")


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(ValueError, match=r"unknown task 'walker_jog'; valid tasks: walker_stand, walker_walk"):
        envs.make("walker_jog", "states", 1, 0)


# --------------------------------------------------------------------- specs (docs/algorithm.md §11.9)


@pytest.mark.parametrize(
    "task, kwargs, obs_dim, action_dim, physics_dim",
    [
        ("walker_walk", {}, 24, 6, 18),
        ("walker_flip", {}, 24, 6, 18),
        ("quadruped_walk", {}, 78, 12, 57),
        ("quadruped_jump", {}, 78, 12, 57),
        ("jaco_reach_top_left", {"exorl": True}, 42, 9, 18),
        ("jaco_reach_bottom_right", {"exorl": False}, 55, 9, 31),
        ("mw_reach", {}, 39, 4, 31),
    ],
)
def test_state_shapes_and_sizes(task, kwargs, obs_dim, action_dim, physics_dim):
    env = envs.make(task, "states", 1, 0, **kwargs)
    assert env.obs_shape == (obs_dim,)
    assert env.obs_dtype == np.float32
    assert env.action_dim == action_dim
    record = env.reset()
    assert record["observation"].shape == (obs_dim,)
    assert record["observation"].dtype == np.float32
    assert record["action"].shape == (action_dim,) and record["action"].dtype == np.float32
    assert not record["action"].any()
    assert record["reward"] == 0.0 and isinstance(record["reward"], float)
    assert record["discount"] == 1.0 and isinstance(record["discount"], float)
    state = env.physics_state()
    assert state.shape == (physics_dim,) and state.dtype == np.float64
    record = env.step(np.zeros(action_dim, dtype=np.float32))
    assert record["observation"].shape == (obs_dim,) and record["observation"].dtype == np.float32
    assert np.all(np.isfinite(record["observation"]))
    env.close()


@pytest.mark.parametrize(
    "task, kwargs, action_repeat, expected_steps",
    [
        ("walker_stand", {}, 1, 1000),
        ("walker_run", {}, 2, 500),
        ("quadruped_walk", {}, 1, 1000),
        ("quadruped_stand", {}, 2, 500),
        ("jaco_reach_top_left", {"exorl": True}, 1, 250),
        ("jaco_reach_top_left", {"exorl": True}, 2, 125),
        ("jaco_reach_top_right", {"exorl": False}, 2, 125),
        ("mw_reach", {}, 1, 250),
        ("mw_reach", {}, 2, 250),
    ],
)
def test_episode_length_discount_and_flags(task, kwargs, action_repeat, expected_steps):
    env = envs.make(task, "states", action_repeat, 0, **kwargs)
    assert env.episode_steps == expected_steps
    records = run_episode(env)
    assert len(records) == expected_steps
    assert [r["is_last"] for r in records].count(True) == 1 and records[-1]["is_last"]
    assert not any(r["is_first"] for r in records)
    assert all(r["discount"] == 1.0 for r in records)
    assert all(r["is_terminal"] is False for r in records)
    assert all(isinstance(r["reward"], float) for r in records)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(env.action_dim, dtype=np.float32))
    # A new episode starts cleanly after the error.
    assert env.reset()["is_first"]
    env.close()


def test_action_repeat_that_does_not_divide_the_episode():
    env = envs.make("walker_stand", "states", 3, 0)
    assert env.episode_steps == math.ceil(1000 / 3)
    assert len(run_episode(env)) == 334


def test_step_before_reset_is_an_error():
    env = envs.make("walker_stand", "states", 1, 0)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(6, dtype=np.float32))


def test_mw_reward_and_success_keys():
    env = envs.make("mw_reach", "states", 2, 0, task_id=0)
    record = env.reset()
    assert record["success"] == 0.0
    record = env.step(np.zeros(4, dtype=np.float32))
    assert record["success"] in (0.0, 1.0) and record["reward"] in (0.0, 1.0, 2.0)
    env.close()


def test_floor_sizes():
    walker = envs.make("walker_stand", "states", 1, 0)
    np.testing.assert_allclose(walker.physics.named.model.geom_size["floor"][:2], (250.0, 0.8))
    for task, half_size in [
        ("quadruped_walk", 10.0),
        ("quadruped_stand", 10.0),
        ("quadruped_jump", 10.0),
        ("quadruped_run", 100.0),
    ]:
        env = envs.make(task, "states", 1, 0)
        np.testing.assert_allclose(env.physics.named.model.geom_size["floor"], (half_size, half_size, 0.5))
        # Walls, ball, target and terrain of the stock model are gone.
        names = {env.physics.model.id2name(i, "geom") for i in range(env.physics.model.ngeom)}
        assert not names & {"wall_px", "wall_py", "wall_nx", "wall_ny", "terrain", "ball"}
        assert env.physics.model.nq == 23 and env.physics.model.na == 12


def test_physics_timesteps():
    assert envs.make("walker_walk", "states", 1, 0).physics.timestep() == pytest.approx(0.0025)
    assert envs.make("quadruped_walk", "states", 1, 0).physics.timestep() == pytest.approx(0.005)
    assert envs.make("jaco_reach_top_left", "states", 1, 0).physics.timestep() == pytest.approx(0.002)


# -------------------------------------------------------------------------- actions


def test_actions_are_clipped_to_unit_box():
    clipped = envs.make("walker_walk", "states", 1, 3)
    overshoot = envs.make("walker_walk", "states", 1, 3)
    clipped.reset()
    overshoot.reset()
    action = np.array([1.0, -1.0, 1.0, -1.0, 1.0, 0.5], dtype=np.float32)
    for _ in range(5):
        expected = clipped.step(action)
        got = overshoot.step(action * np.array([4, 4, 4, 4, 4, 1], dtype=np.float32))
    np.testing.assert_array_equal(got["observation"], expected["observation"])
    np.testing.assert_array_equal(got["action"], action)


def test_quadruped_actions_map_onto_native_control_ranges():
    env = envs.make("quadruped_walk", "states", 1, 0)
    env.reset()
    env.step(np.ones(12, dtype=np.float32))
    ranges = env.physics.model.actuator_ctrlrange
    np.testing.assert_allclose(env.physics.data.ctrl, ranges[:, 1])
    env.step(-np.ones(12, dtype=np.float32))
    np.testing.assert_allclose(env.physics.data.ctrl, ranges[:, 0])
    env.step(np.zeros(12, dtype=np.float32))
    np.testing.assert_allclose(env.physics.data.ctrl, ranges.mean(axis=1))
    # Lift dims span [-1, 1.1], extend dims [-0.8, 0.8] (docs/algorithm.md §11.3).
    assert sorted({tuple(np.round(row, 3)) for row in ranges}) == [(-1.0, 1.0), (-1.0, 1.1), (-0.8, 0.8)]


def test_wrong_action_shape_is_rejected():
    env = envs.make("walker_stand", "states", 1, 0)
    env.reset()
    with pytest.raises(ValueError):
        env.step(np.zeros(5, dtype=np.float32))


# -------------------------------------------------------------------------- seeding


@pytest.mark.parametrize(
    "task, kwargs",
    [
        ("walker_run", {}),
        ("quadruped_jump", {}),
        ("jaco_reach_top_left", {"exorl": True}),
        ("jaco_reach_top_left", {"exorl": False}),
        ("mw_reach", {}),
    ],
)
def test_same_seed_same_initial_states(task, kwargs):
    first = envs.make(task, "states", 2, 4, **kwargs)
    second = envs.make(task, "states", 2, 4, **kwargs)
    for _ in range(2):
        a, b = first.reset(), second.reset()
        np.testing.assert_array_equal(a["observation"], b["observation"])
        np.testing.assert_array_equal(first.physics_state(), second.physics_state())
    other = envs.make(task, "states", 2, 5, **kwargs)
    other.reset()
    if task == "mw_reach":
        # Seed 5 is another goal set; the hand start is the same, the goal differs.
        assert not np.allclose(other.goal_position, first.goal_position)
    else:
        assert not np.allclose(other.physics_state(), first.physics_state())


def test_walker_initial_states_vary_between_episodes():
    env = envs.make("walker_stand", "states", 1, 0)
    first = env.reset()["observation"]
    second = env.reset()["observation"]
    assert not np.allclose(first, second)


# ------------------------------------------------------------------ reward functions


def test_tolerance_primitive():
    assert tolerance(0.5, 0.0, 1.0, margin=1.0) == 1.0
    assert tolerance(2.0, 0.0, 1.0, margin=0.0) == 0.0
    assert tolerance(2.0, 0.0, 1.0, margin=1.0) == pytest.approx(0.1)
    assert tolerance(3.0, 0.0, 1.0, margin=1.0) == pytest.approx(0.1**4)
    assert tolerance(2.0, 0.0, 1.0, margin=1.0, sigmoid="linear", value_at_margin=0.5) == pytest.approx(0.5)
    assert tolerance(5.0, 0.0, 1.0, margin=1.0, sigmoid="linear", value_at_margin=0.5) == 0.0
    assert tolerance(2.0, 0.0, 1.0, margin=1.0, sigmoid="long_tail", value_at_margin=0.2) == pytest.approx(0.2)
    assert tolerance(-1.0, 0.0, float("inf"), margin=2.0, sigmoid="linear", value_at_margin=0.0) == pytest.approx(0.5)


def walker_state(height_offset=0.0, pitch=0.0, pitch_rate=0.0, forward_speed=0.0):
    state = np.zeros(18)
    state[0], state[2] = height_offset, pitch  # rootz, rooty
    state[9 + 1], state[9 + 2] = forward_speed, pitch_rate  # rootx, rooty velocities
    return state


def test_walker_rewards_upright_and_fallen():
    upright = walker_state()
    lying = walker_state(height_offset=-1.1, pitch=np.pi / 2)
    for task in envs.TASKS["walker"]:
        env = envs.make(task, "states", 1, 0)
        near_max = env.reward_from_physics(upright)
        if task == "walker_stand":
            assert near_max == pytest.approx(1.0)
        else:  # standing still earns the stand term times 1/6
            assert near_max == pytest.approx(1.0 / 6.0)
        fallen_limit = 0.15 if task == "walker_stand" else 0.03
        assert env.reward_from_physics(lying) < fallen_limit


def test_walker_walk_and_run_rewards_follow_forward_speed():
    walk = envs.make("walker_walk", "states", 1, 0)
    run = envs.make("walker_run", "states", 1, 0)
    assert walk.reward_from_physics(walker_state(forward_speed=1.5)) == pytest.approx(1.0)
    assert walk.reward_from_physics(walker_state(forward_speed=-1.5)) == pytest.approx(1.0 / 6.0)
    assert run.reward_from_physics(walker_state(forward_speed=8.5)) == pytest.approx(1.0)
    assert run.reward_from_physics(walker_state(forward_speed=4.0)) == pytest.approx((5 * 0.5 + 1) / 6)


def test_walker_flip_rewards_forward_spin_only():
    env = envs.make("walker_flip", "states", 1, 0)
    forward = walker_state(pitch_rate=10.0)
    backward = walker_state(pitch_rate=-10.0)
    assert env.reward_from_physics(forward) == pytest.approx(1.0)
    assert env.reward_from_physics(backward) == pytest.approx(1.0 / 6.0)
    # Half the target angular momentum (5) gives half the move term.
    physics = env.physics
    with physics.reset_context():
        physics.set_state(walker_state(pitch_rate=1.0))
    momentum_per_unit_rate = physics.named.data.subtree_angmom["torso"][1]
    assert momentum_per_unit_rate > 0  # +y angular momentum = forward flip
    half = walker_state(pitch_rate=2.5 / momentum_per_unit_rate)
    assert env.reward_from_physics(half) == pytest.approx((5 * 0.5 + 1) / 6, rel=1e-6)


def settle_upright_quadruped(env, steps=150):
    """Drops the quadruped upright onto the floor and lets it stand idle with zero actions."""
    env.reset()
    physics = env.physics
    with physics.reset_context():
        physics.data.qpos[:] = 0.0
        physics.data.qpos[2] = 0.6
        physics.data.qpos[3] = 1.0  # identity quaternion: upright
        physics.data.qvel[:] = 0.0
        physics.data.act[:] = 0.0
    record = None
    for _ in range(steps):
        record = env.step(np.zeros(12, dtype=np.float32))
    return record


def test_quadruped_idle_upright_rewards():
    jump = envs.make("quadruped_jump", "states", 1, 0)
    record = settle_upright_quadruped(jump)
    com_height = jump.physics.named.data.sensordata["center_of_mass"][2]
    assert 0.42 < com_height < 0.48
    assert record["reward"] == pytest.approx(0.72, abs=0.03)
    state = jump.physics_state()
    expected = {"quadruped_walk": 0.5, "quadruped_run": 0.5, "quadruped_stand": 1.0}
    for task, reward in expected.items():
        assert envs.make(task, "states", 1, 0).reward_from_physics(state) == pytest.approx(reward, abs=0.01)


def test_quadruped_rewards_upside_down_and_running():
    walk = envs.make("quadruped_walk", "states", 1, 0)
    run = envs.make("quadruped_run", "states", 1, 0)
    stand = envs.make("quadruped_stand", "states", 1, 0)
    upside_down = np.zeros(57)
    upside_down[2] = 1.0
    upside_down[3:7] = (0.0, 1.0, 0.0, 0.0)  # half-turn about x
    assert stand.reward_from_physics(upside_down) == pytest.approx(0.0, abs=1e-9)
    assert walk.reward_from_physics(upside_down) == pytest.approx(0.0, abs=1e-9)
    running = np.zeros(57)
    running[2], running[3] = 1.0, 1.0
    running[23] = 5.0  # forward (torso x) velocity, m/s
    assert run.reward_from_physics(running) == pytest.approx(1.0)
    assert walk.reward_from_physics(running) == pytest.approx(1.0)
    running[23] = 2.0
    assert run.reward_from_physics(running) == pytest.approx(0.7)


def jaco_state_with_tcp_at(env, position):
    from dm_control.utils import inverse_kinematics

    physics = env.physics
    solution = inverse_kinematics.qpos_from_site_pose(
        physics, JACO_TCP_SITE, target_pos=position, target_quat=DOWN_QUATERNION, joint_names=JACO_ARM_JOINTS
    )
    assert solution.success
    state = env.physics_state()
    state[: physics.model.nq] = solution.qpos
    state[physics.model.nq :] = 0.0
    return state


@pytest.mark.parametrize("exorl", [True, False])
def test_jaco_reward_at_5_10_15_cm(exorl):
    env = envs.make("jaco_reach_bottom_left", "states", 1, 0, exorl=exorl)
    env.reset()
    target = env.target_position()
    if exorl:
        np.testing.assert_allclose(target, (-0.09, -0.09, 0.001))
    for distance, reward in [(0.03, 1.0), (0.05, 1.0), (0.10, 0.1), (0.15, 1e-4)]:
        state = jaco_state_with_tcp_at(env, target + np.array([0.0, 0.0, distance]))
        assert env.reward_from_physics(state) == pytest.approx(reward, rel=1e-3)
    far = jaco_state_with_tcp_at(env, target + np.array([0.0, 0.0, 0.3]))
    assert env.reward_from_physics(far) < 1e-12


def test_jaco_targets_are_the_four_corners():
    corners = {
        "jaco_reach_top_left": (-0.09, 0.09),
        "jaco_reach_top_right": (0.09, 0.09),
        "jaco_reach_bottom_left": (-0.09, -0.09),
        "jaco_reach_bottom_right": (0.09, -0.09),
    }
    for task, corner in corners.items():
        site = envs.make(task, "states", 1, 0, exorl=True)
        site.reset()
        np.testing.assert_allclose(site.target_position(), (*corner, 0.001))
        brick = envs.make(task, "states", 1, 0, exorl=False)
        brick.reset()
        # The brick settles at the corner (its origin sits on the table).
        np.testing.assert_allclose(brick.target_position()[:2], corner, atol=2e-3)


def test_mw_scripted_reach_succeeds_and_is_rewarded():
    goals = envs.metaworld.load_goal_sets()[0]
    task_id = next(
        index
        for index, goal in enumerate(goals[:, 3:])
        if 0.55 < goal[1] < 0.8 and abs(goal[0]) < 0.25 and 0.1 < goal[2] < 0.35
    )
    env = envs.make("mw_reach", "states", 2, 0, task_id=task_id)
    env.reset()
    np.testing.assert_allclose(env.goal_position, goals[task_id, 3:])
    total = 0.0
    record = None
    for _ in range(150):
        direction = env.goal_position - env.tcp_position()
        action = np.append(np.clip(direction * 50.0, -1.0, 1.0), 0.0).astype(np.float32)
        record = env.step(action)
        total += record["reward"]
        if record["success"]:
            break
    assert record["success"] == 1.0 and record["reward"] >= 1.0
    assert np.linalg.norm(env.tcp_position() - env.goal_position) <= 0.05
    assert env.reward_from_physics(env.physics_state()) == 1.0
    # Far from the goal: no reward.
    env.reset()
    assert env.reward_from_physics(env.physics_state()) == 0.0
    env.close()


# ------------------------------------------------- reward_from_physics vs the live env


@pytest.mark.parametrize(
    "task, kwargs",
    [
        ("walker_flip", {}),
        ("walker_walk", {}),
        ("quadruped_jump", {}),
        ("quadruped_run", {}),
        ("jaco_reach_top_right", {"exorl": True}),
        ("jaco_reach_top_right", {"exorl": False}),
        ("mw_reach", {"task_id": 3}),
    ],
)
def test_reward_from_physics_matches_env_reward_without_disturbing_it(task, kwargs):
    env = envs.make(task, "states", 1, 7, **kwargs)
    twin = envs.make(task, "states", 1, 7, **kwargs)
    env.reset()
    twin.reset()
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(25):
        action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
        record = env.step(action)
        twin_record = twin.step(action)
        relabelled = env.reward_from_physics(env.physics_state())
        assert relabelled == pytest.approx(record["reward"], rel=1e-9, abs=1e-12)
        # Evaluating the state must not change how the episode continues.
        np.testing.assert_array_equal(record["observation"], twin_record["observation"])
        rewards.append(relabelled)
    if not task.startswith(("jaco", "mw")):
        assert max(rewards) > 0.0
    # Works on float32 copies too (replay buffers cast physics to float32).
    assert env.reward_from_physics(env.physics_state().astype(np.float32)) == pytest.approx(rewards[-1], abs=1e-3)
    with pytest.raises(ValueError):
        env.reward_from_physics(np.zeros(3))
    env.close()
    twin.close()


# ------------------------------------------------------------------ goal observations


@pytest.mark.parametrize("exorl", [True, False])
def test_jaco_goal_observation_states(exorl):
    env = envs.make("jaco_reach_top_left", "states", 1, 2, exorl=exorl)
    twin = envs.make("jaco_reach_top_left", "states", 1, 2, exorl=exorl)
    first = env.reset()["observation"]
    twin.reset()
    goal = env.goal_observation()
    assert goal.shape == env.obs_shape and goal.dtype == np.float32
    assert not np.allclose(goal, first)
    # Pinch-site position (entries 30:33 of the 42 proprioceptive ones) is at the target.
    np.testing.assert_allclose(goal[30:33], env.target_position(), atol=1e-3)
    # Hand pointing down: the pinch site's z axis (third column of its rotation) is -z.
    rotation = goal[33:42].reshape(3, 3)
    np.testing.assert_allclose(rotation[:, 2], (0.0, 0.0, -1.0), atol=1e-3)
    # The episode is undisturbed.
    np.testing.assert_array_equal(env.step(np.zeros(9, np.float32))["observation"],
                                  twin.step(np.zeros(9, np.float32))["observation"])


def test_mw_goal_observation_states():
    env = envs.make("mw_reach", "states", 2, 1, task_id=7)
    twin = envs.make("mw_reach", "states", 2, 1, task_id=7)
    first = env.reset()["observation"]
    twin.reset()
    goal = env.goal_observation()
    assert goal.shape == (39,) and goal.dtype == np.float32
    assert not np.allclose(goal, first)
    # The hand (first three entries) moved towards the goal; the goal part stays hidden.
    assert np.linalg.norm(goal[:3] - env.goal_position) < 0.5 * np.linalg.norm(first[:3] - env.goal_position)
    assert not goal[36:].any()
    # The episode is undisturbed.
    np.testing.assert_array_equal(env.step(np.zeros(4, np.float32))["observation"],
                                  twin.step(np.zeros(4, np.float32))["observation"])
    env.close()
    twin.close()


@pytest.mark.parametrize("task", ["walker_stand", "quadruped_walk"])
def test_goal_observation_only_for_goal_domains(task):
    env = envs.make(task, "states", 1, 0)
    env.reset()
    with pytest.raises(NotImplementedError):
        env.goal_observation()


# ----------------------------------------------------------------- Meta-World goals


def test_mw_goal_file_matches_the_original_goals_and_constraints():
    goals = envs.metaworld.load_goal_sets()
    assert goals.shape == (10, 50, 6)
    digest = hashlib.sha256(np.ascontiguousarray(goals, dtype=np.float64).tobytes()).hexdigest()
    assert digest == ORIGINAL_GOALS_SHA256
    separation = np.linalg.norm(goals[..., :2] - goals[..., 3:5], axis=-1)
    assert separation.min() >= 0.15
    assert len({tuple(vector) for vector in goals.reshape(-1, 6)}) == 500


def test_mw_task_id_selects_goal_and_random_goals_are_seeded():
    goals = envs.metaworld.load_goal_sets()
    fixed = envs.make("mw_reach", "states", 2, 4, task_id=12)
    fixed.reset()
    np.testing.assert_allclose(fixed.goal_position, goals[4, 12, 3:])
    fixed.reset(task_id=30)
    assert fixed.task_id == 30
    np.testing.assert_allclose(fixed.goal_position, goals[4, 30, 3:])
    fixed.close()
    sequences = []
    for _ in range(2):
        env = envs.make("mw_reach", "states", 2, 4)
        ids = []
        for _ in range(6):
            env.reset()
            ids.append(env.task_id)
        sequences.append(ids)
        env.close()
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) > 1
