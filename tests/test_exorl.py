"""The ExORL-layout reader (utils/exorl.py) on small datasets written here with plain numpy from
real walker rollouts: loading, windows, file-name parsing, capacity, relabelling, validation
messages and the pixel cache."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from utils import exorl
from utils.errors import UserError
from utils.offline import holdout_split, make_replay

KEYS = ("observation", "action", "reward", "discount", "physics")


@functools.lru_cache(maxsize=None)
def _rollout(task: str, steps: int, seed: int, obs_type: str = "states") -> tuple:
    env = envs.make(task, obs_type, 1, seed)
    rng = np.random.default_rng(seed)
    steps_ = [env.reset()]
    physics = [env.physics_state()]
    for _ in range(steps):
        steps_.append(env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32)))
        physics.append(env.physics_state())
    env.close()
    return (np.stack([s["observation"] for s in steps_]),
            np.stack([s["action"] for s in steps_]).astype(np.float32),
            np.array([[s["reward"]] for s in steps_], dtype=np.float32),
            np.array([[s["discount"]] for s in steps_], dtype=np.float32),
            np.stack(physics).astype(np.float64))


def rollout(task: str = "walker_stand", steps: int = 40, seed: int = 0, obs_type: str = "states") -> dict:
    """``steps + 1`` rows of a real rollout with uniform random actions: obs, action, reward,
    discount as the env returned them, and the physics state after each row (row 0 = reset)."""
    return {key: value.copy() for key, value in zip(KEYS, _rollout(task, steps, seed, obs_type))}


def write_npz(path: Path, arrays: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="module")
def walker_env():
    env = envs.make("walker_stand", "states", 1, 0)
    yield env
    env.close()


# ------------------------------------------------------------------------------ names and loading
def test_length_is_parsed_from_the_stem_only():
    assert exorl.parse_episode_name(Path("/home/a-b/data-sets/20220106T202128_7_1000.npz")) == (7, 1000)
    assert exorl.parse_episode_name("/x-1/y_2-3/episode_000012_250.npz") == (12, 250)
    for bad in ("/data-1/episode.npz", "/d/a_b_c.npz", "/d/1000.npz"):
        with pytest.raises(ValueError, match="<prefix>_<index>_<length>"):
            exorl.parse_episode_name(bad)


def test_default_dir_expands_home():
    path = exorl.resolve_dataset_dir(None, "exorl", "walker", "rnd")
    assert path == Path(os.path.expanduser("~")) / "urlb_datasets/exorl/walker/rnd/buffer"
    assert exorl.resolve_dataset_dir("~/x/buffer", "exorl", "walker", "rnd") == Path(os.path.expanduser("~/x/buffer"))


def test_episodes_load_and_windows_equal_file_rows(tmp_path, walker_env):
    directory = tmp_path / "my-data-set" / "walker-rnd" / "buffer"  # '-' in parent folders
    first, second = rollout(steps=40, seed=0), rollout(steps=30, seed=1)
    write_npz(directory / "2022-01-06T202128_0_40.npz", first)
    write_npz(directory / "2022-01-06T202129_1_30.npz", second)
    data = exorl.load_dataset(directory, walker_env, progress=False)
    assert [p.name for p in data.files] == ["2022-01-06T202128_0_40.npz", "2022-01-06T202129_1_30.npz"]
    assert data.transitions == 70
    for episode, source in zip(data.episodes, (first, second)):
        assert set(episode) == {"observation", "action", "reward", "discount"}  # physics dropped
        for key in episode:
            assert episode[key].dtype == np.float32
            np.testing.assert_array_equal(episode[key], source[key])

    replay = make_replay(data.episodes, batch_size=12, batch_length=10, seed=3, device=torch.device("cpu"))
    batch = replay.sample()
    assert batch["observation"].shape == (12, 10, 24) and batch["action"].shape == (12, 10, 6)
    assert batch["reward"].shape == (12, 10, 1)
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    assert not batch["is_terminal"].any()
    sources = [first, second]
    for b in range(12):
        obs = batch["observation"][b].numpy()
        matches = [(s, t) for s, src in enumerate(sources) for t in range(len(src["reward"]) - 9)
                   if np.array_equal(src["observation"][t:t + 10], obs)]
        assert len(matches) == 1, f"window {b} is not a run of rows of one file"
        s, t = matches[0]
        for key in ("action", "reward", "discount"):
            np.testing.assert_array_equal(batch[key][b].numpy(), sources[s][key][t:t + 10])


def test_capacity_and_max_episodes(tmp_path, walker_env):
    episode = rollout(steps=30)
    for name in ("c_2_30.npz", "a_0_30.npz", "b_1_30.npz"):  # written out of name order
        write_npz(tmp_path / name, episode)

    def names(**kwargs):
        return [p.name for p in exorl.load_dataset(tmp_path, walker_env, progress=False, **kwargs).files]

    assert names() == ["a_0_30.npz", "b_1_30.npz", "c_2_30.npz"]
    assert names(capacity=50) == ["a_0_30.npz", "b_1_30.npz"]  # the file reaching the capacity is included
    assert names(capacity=60) == ["a_0_30.npz", "b_1_30.npz"]
    assert names(capacity=61) == ["a_0_30.npz", "b_1_30.npz", "c_2_30.npz"]
    assert names(capacity=30) == ["a_0_30.npz"]
    assert names(max_episodes=1) == ["a_0_30.npz"]
    assert names(capacity=1000, max_episodes=2) == ["a_0_30.npz", "b_1_30.npz"]


def test_dataset_without_physics_loads_when_nothing_needs_it(tmp_path, walker_env):
    episode = rollout(steps=20)
    del episode["physics"]  # our own pre-training buffers hold no physics
    write_npz(tmp_path / "20240101T000000_0_20.npz", episode)
    data = exorl.load_dataset(tmp_path, walker_env, progress=False)
    np.testing.assert_array_equal(data.episodes[0]["observation"], episode["observation"])
    with pytest.raises(UserError, match="physics"):
        exorl.load_dataset(tmp_path, walker_env, relabel=True, progress=False)


# ------------------------------------------------------------------------------------ relabelling
def test_relabelled_rewards_equal_the_environment_rewards(tmp_path):
    stand = rollout("walker_stand", steps=80, seed=2)
    walk = rollout("walker_walk", steps=80, seed=2)
    # Same seed and actions: identical dynamics and initial state, so the same physics states.
    np.testing.assert_array_equal(stand["physics"], walk["physics"])
    assert not np.allclose(stand["reward"][1:], walk["reward"][1:])
    stored = dict(stand, reward=np.zeros_like(stand["reward"]))  # stored rewards are not trusted
    write_npz(tmp_path / "episode_0_80.npz", stored)
    for task, source in (("walker_stand", stand), ("walker_walk", walk)):
        env = envs.make(task, "states", 1, 5)
        episode = exorl.load_dataset(tmp_path, env, task=task, relabel=True, progress=False).episodes[0]
        assert episode["reward"].shape == (81, 1) and episode["reward"].dtype == np.float32
        np.testing.assert_array_equal(episode["reward"][1:], source["reward"][1:])
        assert episode["reward"][0, 0] == np.float32(env.reward_from_physics(stand["physics"][0]))
        assert "physics" not in episode
        env.close()


# ------------------------------------------------------------------------------- bad input cases
def _good(d):
    return rollout(steps=40)


def _case_missing_key(d):
    arrays = _good(d)
    del arrays["discount"]
    write_npz(d / "episode_0_40.npz", arrays)


def _case_missing_physics(d):
    arrays = _good(d)
    del arrays["physics"]
    write_npz(d / "episode_0_40.npz", arrays)


def _case_obs_dim(d):
    arrays = _good(d)
    arrays["observation"] = arrays["observation"][:, :23]
    write_npz(d / "episode_0_40.npz", arrays)


def _case_action_dim(d):
    arrays = _good(d)
    arrays["action"] = arrays["action"][:, :4]
    write_npz(d / "episode_0_40.npz", arrays)


def _case_physics_dim(d):
    arrays = _good(d)
    arrays["physics"] = arrays["physics"][:, :10]
    write_npz(d / "episode_0_40.npz", arrays)


def _case_rows(d):
    arrays = {key: value[:31] for key, value in _good(d).items()}
    write_npz(d / "episode_0_40.npz", arrays)


def _case_truncated(d):
    path = write_npz(d / "episode_0_40.npz", _good(d))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _case_garbage(d):
    d.mkdir(parents=True)
    (d / "episode_0_40.npz").write_bytes(b"this is not a zip file")


def _case_bad_name(d):
    write_npz(d / "episode.npz", _good(d))


def _case_empty(d):
    d.mkdir(parents=True)
    (d / "README.txt").write_text("no episodes here")


BAD_CASES = [
    # id, writer, load kwargs, substrings of the one-line message
    ("missing folder", None, {}, ["does not exist", "<prefix>_<index>_<length>.npz", "dataset_dir="]),
    ("empty folder", _case_empty, {}, ["holds no episode files", "<prefix>_<index>_<length>.npz"]),
    ("missing key", _case_missing_key, {}, ["episode_0_40.npz", "lacks the key(s) discount"]),
    ("missing physics", _case_missing_physics, {"relabel": True}, ["episode_0_40.npz", "lacks the key(s) physics"]),
    ("observation dim", _case_obs_dim, {}, ["episode_0_40.npz", "'observation'", "(41, 23)", "(41, 24)"]),
    ("action dim", _case_action_dim, {}, ["episode_0_40.npz", "'action'", "(41, 4)", "(41, 6)"]),
    ("physics dim", _case_physics_dim, {"relabel": True}, ["episode_0_40.npz", "'physics'", "(41, 10)", "(41, 18)"]),
    ("rows vs name", _case_rows, {}, ["episode_0_40.npz", "31 rows", "40 transitions", "on_bad_file=skip"]),
    ("truncated", _case_truncated, {}, ["episode_0_40.npz", "corrupt or truncated", "on_bad_file=skip"]),
    ("not a zip", _case_garbage, {}, ["episode_0_40.npz", "corrupt or truncated"]),
    ("bad name", _case_bad_name, {}, ["episode.npz", "<prefix>_<index>_<length>.npz"]),
    ("bad on_bad_file", _good, {"on_bad_file": "ignore"}, ["on_bad_file='ignore'", "stop, skip"]),
]


@pytest.mark.parametrize("writer,kwargs,expected", [case[1:] for case in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_gives_one_clear_line(tmp_path, walker_env, writer, kwargs, expected):
    directory = tmp_path / "data-set" / "buffer"
    if writer is not None:
        writer(directory)
    with pytest.raises(UserError) as info:
        exorl.load_dataset(directory, walker_env, task="walker_stand", progress=False, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, message


def test_skip_bad_files_with_a_warning(tmp_path, walker_env, capsys):
    write_npz(tmp_path / "episode_0_40.npz", rollout(steps=40))
    _case_truncated(tmp_path / "x")
    os.replace(tmp_path / "x" / "episode_0_40.npz", tmp_path / "episode_1_40.npz")
    write_npz(tmp_path / "episode_2_40.npz", rollout(steps=40, seed=1))
    data = exorl.load_dataset(tmp_path, walker_env, on_bad_file="skip", progress=False)
    assert [p.name for p in data.files] == ["episode_0_40.npz", "episode_2_40.npz"]
    assert data.skipped == [str(tmp_path / "episode_1_40.npz")]
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "episode_1_40.npz" in err and "corrupt or truncated" in err
    with pytest.raises(UserError, match="episode_1_40.npz"):
        exorl.load_dataset(tmp_path, walker_env, progress=False)


# -------------------------------------------------------------------------------------- pixels
def test_pixels_are_rendered_once_and_cached(tmp_path, walker_env):
    directory = tmp_path / "walker" / "rnd" / "buffer"
    source = rollout(steps=4, seed=3)
    path = write_npz(directory / "episode_0_4.npz", source)
    calls = []
    render = walker_env.render_physics
    walker_env.render_physics = lambda state: (calls.append(1), render(state))[1]
    try:
        first = exorl.load_dataset(directory, walker_env, pixels=True, progress=False).episodes[0]
        cache = directory.parent / "pixels_64" / "episode_0_4.npz"
        assert cache.is_file() and len(calls) == 5
        assert first["observation"].dtype == np.uint8 and first["observation"].shape == (5, 3, 64, 64)
        assert set(first) == {"observation", "action", "reward", "discount"}
        stamp = cache.stat().st_mtime_ns
        second = exorl.load_dataset(directory, walker_env, pixels=True, progress=False).episodes[0]
        assert len(calls) == 5 and cache.stat().st_mtime_ns == stamp  # read from the cache, not rendered
        np.testing.assert_array_equal(second["observation"], first["observation"])
        # A newer episode file invalidates its cached frames.
        os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
        exorl.load_dataset(directory, walker_env, pixels=True, progress=False)
        assert len(calls) == 10
    finally:
        walker_env.render_physics = render
    # The frames are what a pixel env shows in those states (same seed and actions, action repeat 1).
    pixel_rollout = rollout(steps=4, seed=3, obs_type="pixels")
    np.testing.assert_array_equal(pixel_rollout["physics"], source["physics"])
    np.testing.assert_array_equal(first["observation"], pixel_rollout["observation"])


# ------------------------------------------------------------------------------------- holdout
def test_holdout_split():
    assert holdout_split(1, 0.02, 1) == ([0], [])
    train, held = holdout_split(2, 0.02, 1)
    assert len(held) == 1 and sorted(train + held) == [0, 1]
    train, held = holdout_split(200, 0.02, 1)
    assert len(held) == 4 and len(train) == 196 and not set(train) & set(held)
    assert holdout_split(200, 0.02, 1) == (train, held)
    assert holdout_split(10, 0.0, 1) == (list(range(10)), [])


def test_stored_frames_of_a_pixel_run_are_used_as_they_are(tmp_path, walker_env):
    episode = rollout(steps=4, seed=3, obs_type="pixels")
    del episode["physics"]  # a pixel pre-training buffer: uint8 frames, no physics
    write_npz(tmp_path / "20240101T000000_0_4.npz", episode)
    render = walker_env.render_physics
    walker_env.render_physics = None  # any render call would fail
    try:
        loaded = exorl.load_dataset(tmp_path, walker_env, pixels=True, progress=False).episodes[0]
    finally:
        walker_env.render_physics = render
    np.testing.assert_array_equal(loaded["observation"], episode["observation"])
    assert not (tmp_path.parent / "pixels_64").exists()
    with pytest.raises(UserError, match=r"'observation' has shape \(5, 3, 64, 64\)"):
        exorl.load_dataset(tmp_path, walker_env, progress=False)  # states training cannot use frames
