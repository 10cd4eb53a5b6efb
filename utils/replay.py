"""Episode replay (spec agent.md 3, 11.5; decisions 3, 7, 21).

Each finished episode is written as ``<timestamp>_<index>_<length>.npz`` in the ExORL row layout
(row 0 is the reset step: zero action, zero reward), so any run folder's ``buffer/`` is also an
offline dataset. Episodes stay in memory up to ``capacity`` transitions (oldest dropped first).
Sampling draws batch_size windows of batch_length consecutive rows: an episode uniformly, then a
start uniformly, from a seeded generator.
"""
from __future__ import annotations

import datetime
import os
import tempfile
from collections import deque
from pathlib import Path

import numpy as np
import torch

STORED_KEYS = ("observation", "action", "reward", "discount")


def episode_length(path: Path) -> int:
    """Transitions in an episode file, read from the last '_' field of the file stem (never the path)."""
    return int(path.stem.rsplit("_", 1)[-1])


def write_episode(episode: dict[str, np.ndarray], directory: Path, index: int) -> Path:
    """Atomically write one episode (T rows) as a compressed npz; returns the final path."""
    length = len(episode["reward"]) - 1
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = directory / f"{stamp}_{index:06d}_{length}.npz"
    fd, tmp = tempfile.mkstemp(prefix=".episode.", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **episode)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; datasets are meant to be shared
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, f"could not write episode {path}: {error.strerror}; "
                                   f"earlier episodes are kept") from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def episode_index(path: Path) -> int:
    """The episode counter in ``<prefix>_<index>_<length>.npz``."""
    return int(path.stem.rsplit("_", 2)[-2])


def load_episode(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


class EpisodeReplay:
    def __init__(self, directory: str | os.PathLike | None, capacity: int, batch_size: int, batch_length: int,
                 seed: int, device: torch.device, save: bool = True):
        self.directory = Path(directory) if directory is not None else None
        self.save = save and self.directory is not None
        if self.save:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = int(capacity)
        self.batch_size, self.batch_length = batch_size, batch_length
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.episodes: deque[dict[str, np.ndarray]] = deque()
        self.transitions = 0
        self.episodes_written = 0
        self.current: dict[str, list] = {}

    def __len__(self) -> int:
        return self.transitions

    # ------------------------------------------------------------------------------------- adding
    def add(self, time_step: dict, extra: dict[str, np.ndarray] | None = None) -> None:
        """Append one step record; on ``is_last`` the episode is finished, stored and written."""
        row = {
            "observation": np.asarray(time_step["observation"]),
            "action": np.asarray(time_step["action"], dtype=np.float32),
            "reward": np.asarray([time_step["reward"]], dtype=np.float32),
            "discount": np.asarray([time_step["discount"]], dtype=np.float32),
        }
        if extra:
            row.update({key: np.asarray(value) for key, value in extra.items()})
        if time_step["is_first"]:
            self.current = {}
        for key, value in row.items():
            self.current.setdefault(key, []).append(value)
        if time_step["is_last"]:
            episode = {key: np.stack(values) for key, values in self.current.items()}
            self.current = {}
            self.add_episode(episode, write=self.save)

    def add_episode(self, episode: dict[str, np.ndarray], write: bool = False) -> None:
        if write:
            write_episode(episode, self.directory, self.episodes_written)
        self.episodes_written += 1
        self.episodes.append(episode)
        self.transitions += len(episode["reward"]) - 1
        while self.transitions > self.capacity and len(self.episodes) > 1:
            dropped = self.episodes.popleft()
            self.transitions -= len(dropped["reward"]) - 1

    def reload(self, episodes_written: int) -> None:
        """Restore the replay of a resumed run from its folder: episodes ``0 .. episodes_written-1``
        are loaded in order (oldest dropped past capacity); later files (written after the
        checkpoint by the run that died) are removed, since the resumed run writes them again."""
        self.episodes.clear()
        self.transitions = 0
        self.episodes_written = 0
        self.current = {}
        files = sorted(self.directory.glob("*.npz"), key=episode_index)
        for path in files:
            if episode_index(path) >= episodes_written:
                path.unlink()
        kept = [path for path in files if episode_index(path) < episodes_written]
        if len(kept) != episodes_written:
            raise RuntimeError(f"replay folder {self.directory} holds {len(kept)} of the {episodes_written} "
                               f"episodes the checkpoint expects")
        for path in kept:
            self.add_episode(load_episode(path))

    def state(self) -> dict:
        return {"episodes_written": self.episodes_written, "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.reload(state["episodes_written"])
        self.rng.bit_generator.state = state["rng"]

    # ----------------------------------------------------------------------------------- sampling
    def can_sample(self) -> bool:
        return any(len(ep["reward"]) >= self.batch_length for ep in self.episodes)

    def sample(self) -> dict[str, torch.Tensor]:
        """A batch of windows (B, L, ...) on the training device, with is_first and is_terminal."""
        candidates = [ep for ep in self.episodes if len(ep["reward"]) >= self.batch_length]
        if not candidates:
            raise RuntimeError(f"no stored episode has {self.batch_length} steps yet")
        picks = self.rng.integers(len(candidates), size=self.batch_size)
        windows: dict[str, list[np.ndarray]] = {key: [] for key in candidates[0]}
        for pick in picks:
            episode = candidates[pick]
            start = self.rng.integers(len(episode["reward"]) - self.batch_length + 1)
            for key in windows:
                windows[key].append(episode[key][start:start + self.batch_length])
        batch = {}
        for key, values in windows.items():
            array = np.stack(values)
            if array.dtype.kind == "f":
                array = array.astype(np.float32, copy=False)
            elif array.dtype.kind == "i":
                array = array.astype(np.int32, copy=False)
            batch[key] = torch.as_tensor(array, device=self.device)
        is_first = torch.zeros(self.batch_size, self.batch_length, dtype=torch.bool, device=self.device)
        is_first[:, 0] = True
        batch["is_first"] = is_first
        batch["is_terminal"] = batch["discount"] == 0
        return batch
