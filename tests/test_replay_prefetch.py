"""Prefetched replay batches (utils/replay.py): the same batches, and the same saved generator
state, as a replay without prefetching, also when an episode lands between two samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import walker_rollout
from utils.replay import EpisodeReplay

BATCH, LENGTH = 4, 16


@pytest.fixture(scope="module")
def episodes() -> list[dict[str, np.ndarray]]:
    """Five real walker episodes of different lengths (row 0 is each one's reset row)."""
    rollout = walker_rollout("states", 300, seed=3)
    bounds = [0, 40, 90, 150, 230, 301]
    return [{key: value[start:end].copy() for key, value in rollout.items()} for start, end in zip(bounds, bounds[1:])]


def make(directory, prefetch: bool) -> EpisodeReplay:
    return EpisodeReplay(directory, 10**6, BATCH, LENGTH, seed=7, device=torch.device("cpu"),
                         save=directory is not None, prefetch=prefetch)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_prefetched_batches_equal_plain_ones_across_new_episodes(episodes):
    plain, prefetched = make(None, False), make(None, True)
    for replay in (plain, prefetched):
        for episode in episodes[:2]:
            replay.add_episode(episode)
    for landed in episodes[2:]:
        for _ in range(3):
            assert_same(plain.sample(), prefetched.sample())
        assert prefetched._pending is not None, "a batch is being prefetched"
        for replay in (plain, prefetched):  # invalidates the prefetched batch: it must be redrawn
            replay.add_episode(landed)
        assert_same(plain.sample(), prefetched.sample())
    assert plain.rng_state() == prefetched.rng_state()


def test_state_saved_while_prefetching_resumes_to_the_same_batches(episodes, tmp_path):
    plain, prefetched = make(tmp_path / "plain", False), make(tmp_path / "prefetched", True)
    for replay in (plain, prefetched):
        for episode in episodes[:3]:
            replay.add_episode(episode, write=True)
        replay.sample()
    state = prefetched.state()
    assert state["rng"] == plain.state()["rng"], "the saved state is the one before the prefetched draw"
    resumed = make(tmp_path / "prefetched", True)
    resumed.load_state(state)
    for _ in range(3):
        expected = plain.sample()
        assert_same(expected, prefetched.sample())
        assert_same(expected, resumed.sample())
