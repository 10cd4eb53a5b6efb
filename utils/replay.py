"""Episode replay (docs/algorithm.md §2, §10.6; docs/decisions.md D3, D7, D21).

Each finished episode is written as ``<timestamp>_<index>_<length>.npz`` in the ExORL row layout
(row 0 is the reset step: zero action, zero reward), so any run folder's ``buffer/`` is also an
offline dataset. Episodes stay in memory up to ``capacity`` transitions (oldest dropped first).
Sampling draws batch_size windows of batch_length consecutive rows: an episode uniformly, then a
start uniformly, from a seeded generator.

With ``prefetch`` the next batch is drawn on a background thread (into pinned memory on CUDA, copied
without blocking) while the caller trains on the current one. Only finished episodes are sampled, so
the prefetched batch is what a plain ``sample()`` would return unless an episode was stored since
it was drawn; then the generator is rewound and the batch drawn again. Either way the batches, and
the generator state a checkpoint saves, are those of a run without prefetching.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from utils.episodes import load_episode, parse_episode_name, write_episode  # noqa: F401 (load_episode: callers import it here)

STORED_KEYS = ("observation", "action", "reward", "discount")


class EpisodeReplay:
    def __init__(self, directory: str | os.PathLike | None, capacity: int, batch_size: int, batch_length: int,
                 seed: int, device: torch.device, save: bool = True, prefetch: bool = False):
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
        self.pin = self.device.type == "cuda"
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="replay-prefetch") if prefetch else None
        # (host batch being drawn, episodes_written when it was started, generator state before it)
        self._pending: tuple[Future, int, dict] | None = None

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

    def current_rows(self) -> dict[str, torch.Tensor]:
        """The unfinished episode's rows so far, as tensors (a checkpoint holds no numpy objects)."""
        return {key: torch.from_numpy(np.stack(values)) for key, values in self.current.items()}

    def set_current_rows(self, rows: dict[str, torch.Tensor]) -> None:
        self.current = {key: list(value.numpy()) for key, value in rows.items()}

    def add_episode(self, episode: dict[str, np.ndarray], write: bool = False) -> None:
        if write:
            write_episode(episode, self.directory, self.episodes_written)
        self.episodes_written += 1
        self.episodes.append(episode)
        self.transitions += len(episode["reward"]) - 1
        while self.transitions > self.capacity and len(self.episodes) > 1:
            dropped = self.episodes.popleft()
            self.transitions -= len(dropped["reward"]) - 1

    def reload(self, episodes_written: int, on_bad_file: str = "stop") -> None:
        """Restore the replay of a resumed run from its folder: episodes ``0 .. episodes_written-1``
        are loaded in order (oldest dropped past capacity); later files (written after the
        checkpoint by the run that died) are removed, since the resumed run writes them again. A
        missing, misnamed or unreadable episode stops with one line naming it, or, with
        ``on_bad_file=skip``, is left out with a warning (the resumed run then differs from an
        uninterrupted one)."""
        from utils.errors import UserError
        self._cancel_prefetch()
        self.episodes.clear()
        self.transitions = 0
        self.episodes_written = 0
        self.current = {}
        skip = on_bad_file == "skip"
        indexed, problems = {}, []
        for path in sorted(self.directory.glob("*.npz")):
            try:
                index = parse_episode_name(path)[0]
            except ValueError as error:
                problems.append(f"{error}")
                continue
            if index >= episodes_written:
                path.unlink()
            else:
                indexed[index] = path
        missing = [index for index in range(episodes_written) if index not in indexed]
        if missing:
            problems.append(f"replay folder {self.directory} lacks episode(s) {', '.join(map(str, missing[:5]))}"
                            f"{' ...' if len(missing) > 5 else ''} of the {episodes_written} the checkpoint expects")
        episodes = []
        for index in sorted(indexed):
            try:
                episodes.append(load_episode(indexed[index]))
            except Exception as error:  # zip, zlib, npy-header and EOF errors all mean the same thing here
                reason = (str(error).splitlines() or [""])[0] or type(error).__name__
                problems.append(f"{indexed[index]} cannot be read: corrupt or truncated ({reason})")
        if problems and not skip:
            raise UserError(f"{problems[0]}; on_bad_file=skip resumes without the bad episode file(s)")
        for problem in problems:
            print(f"warning: {problem}; skipped (on_bad_file=skip)", flush=True)
        for episode in episodes:
            self.add_episode(episode)
        self.episodes_written = episodes_written

    def state(self) -> dict:
        return {"episodes_written": self.episodes_written, "rng": self.rng_state()}

    def load_state(self, state: dict, on_bad_file: str = "stop") -> None:
        self.reload(state["episodes_written"], on_bad_file)
        self.set_rng_state(state["rng"])

    def rng_state(self) -> dict:
        """The sampling generator's state as a run without prefetching would have it now."""
        return self._pending[2] if self._pending is not None else self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self._cancel_prefetch()
        self.rng.bit_generator.state = state

    # ----------------------------------------------------------------------------------- sampling
    def can_sample(self) -> bool:
        return any(len(ep["reward"]) >= self.batch_length for ep in self.episodes)

    def sample(self) -> dict[str, torch.Tensor]:
        """A batch of windows (B, L, ...) on the training device, with is_first and is_terminal."""
        host = self._take_prefetched()
        if host is None:
            host = self._draw(self._candidates())
        batch = {key: value.to(self.device, non_blocking=True) for key, value in host.items()}
        batch["is_terminal"] = batch["discount"] == 0
        if self._prefetcher is not None:
            rng_before = self.rng.bit_generator.state  # read before the thread starts drawing
            self._pending = (self._prefetcher.submit(self._draw, self._candidates()), self.episodes_written,
                             rng_before)
        return batch

    def _candidates(self) -> list[dict[str, np.ndarray]]:
        candidates = [ep for ep in self.episodes if len(ep["reward"]) >= self.batch_length]
        if not candidates:
            raise RuntimeError(f"no stored episode has {self.batch_length} steps yet")
        return candidates

    def _draw(self, candidates: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """The next batch on the host (pinned for CUDA); may run on the prefetch thread."""
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
            batch[key] = torch.from_numpy(array)
        is_first = torch.zeros(self.batch_size, self.batch_length, dtype=torch.bool)
        is_first[:, 0] = True
        batch["is_first"] = is_first
        if self.pin:
            batch = {key: value.pin_memory() for key, value in batch.items()}
        return batch

    def _take_prefetched(self) -> dict[str, torch.Tensor] | None:
        """The prefetched batch if no episode was stored since it was drawn; else rewind the generator."""
        if self._pending is None:
            return None
        future, episodes_written, rng_before = self._pending
        self._pending = None
        host = future.result()
        if episodes_written != self.episodes_written:
            self.rng.bit_generator.state = rng_before
            return None
        return host

    def _cancel_prefetch(self) -> None:
        if self._pending is not None:
            future, _, rng_before = self._pending
            self._pending = None
            future.result()
            self.rng.bit_generator.state = rng_before
