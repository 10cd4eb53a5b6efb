"""Episode files, the one format of replay buffers and datasets (the ExORL layout): one compressed
``<prefix>_<index>_<length>.npz`` per episode, ``length + 1`` rows, written atomically and read
without pickle. The index and length come from the file stem, never from the rest of the path."""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write


def parse_episode_name(path: str | os.PathLike) -> tuple[int, int]:
    """(index, length) from the file STEM ``<prefix>_<index>_<length>``; never from the rest of the path."""
    stem = Path(path).stem
    fields = stem.rsplit("_", 2)
    if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
        raise ValueError(f"{path}: file name does not follow <prefix>_<index>_<length>.npz")
    return int(fields[1]), int(fields[2])


def write_episode_file(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed npz, atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)
    return path


def write_episode(episode: dict[str, np.ndarray], directory: Path, index: int) -> Path:
    """Write one finished episode (T rows) of a run's replay as ``<timestamp>_<index>_<length>.npz``."""
    length = len(episode["reward"]) - 1
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = Path(directory) / f"{stamp}_{index:06d}_{length}.npz"
    try:
        return write_episode_file(path, episode)
    except OSError as error:
        raise OSError(error.errno, f"could not write episode {path}: {error.strerror}; "
                                   f"earlier episodes are kept") from error


def load_episode(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
