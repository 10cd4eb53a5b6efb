"""Datasets in the ExORL layout (docs/algorithm.md §11.7; docs/decisions.md D15, D21).

A dataset folder (``~/urlb_datasets/<dataset>/<domain>/<collection_method>/buffer`` by default)
holds one compressed ``.npz`` per episode, named ``<prefix>_<index>_<length>.npz``, with T =
length + 1 rows (row 0 is the reset step)::

    observation (T, obs_dim) float32   action (T, act_dim) float32   reward (T, 1) float32
    discount    (T, 1)       float32   physics (T, physics_dim) float64

``load_dataset`` reads the files sorted by name until the summed lengths reach ``capacity``
(docs/algorithm.md §11.7), validates them against the environment's shapes, optionally relabels
the rewards for the environment's task from the stored physics states (never re-simulating)
and, for pixel training, renders the stored states once into a cache next to the dataset
(``<buffer>/../pixels_<size>/<stem>.npz``). Only what training needs is kept in memory:
observation (float32 states or uint8 pixels), action, reward and discount; ``physics`` is
dropped once used.
"""
from __future__ import annotations

import os
import sys

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.episodes import parse_episode_name, write_episode_file  # noqa: F401 (re-exported)
from utils.errors import UserError

DEFAULT_DATASET_DIR = "~/urlb_datasets/{dataset}/{domain}/{collection_method}/buffer"
EPISODE_KEYS = ("observation", "action", "reward", "discount")
BAD_FILE_MODES = ("stop", "skip")
LAYOUT = ("<dataset_dir>/<prefix>_<index>_<length>.npz, one file per episode with observation, action, "
          "reward, discount (and physics) arrays of length+1 rows (ExORL: ~/urlb_datasets/<dataset>/<domain>/"
          "<collection_method>/buffer, the buffer/ folder of https://dl.fbaipublicfiles.com/exorl/<domain>/"
          "<collection_method>.zip); dataset_dir= points elsewhere")


def default_dataset_dir(dataset: str, domain: str, collection_method: str) -> Path:
    return Path(DEFAULT_DATASET_DIR.format(dataset=dataset, domain=domain,
                                           collection_method=collection_method)).expanduser()


def resolve_dataset_dir(dataset_dir: str | os.PathLike | None, dataset: str, domain: str,
                        collection_method: str) -> Path:
    """``dataset_dir`` with ``~`` expanded, or the default ExORL location when it is None."""
    if dataset_dir in (None, ""):
        return default_dataset_dir(dataset, domain, collection_method)
    return Path(os.path.expanduser(str(dataset_dir)))


def list_episode_files(directory: str | os.PathLike) -> list[Path]:
    """The episode files of a dataset folder, sorted by name; one clear error when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise UserError(f"dataset folder {directory} {what}; expected layout: {LAYOUT}")
    files = sorted((p for p in directory.iterdir() if p.suffix == ".npz" and not p.name.startswith(".")),
                   key=lambda p: p.name)
    if not files:
        raise UserError(f"dataset folder {directory} holds no episode files (*.npz); expected layout: {LAYOUT}")
    return files


def pixels_cache_dir(directory: str | os.PathLike, img_size: int = 64) -> Path:
    """Where rendered frames of a dataset are cached: a sibling of its buffer folder."""
    return Path(directory).parent / f"pixels_{img_size}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class BadFile(Exception):
    """A file that cannot be read as an episode (corrupt, truncated, misnamed); see ``on_bad_file``."""


@dataclass
class EnvShapes:
    """What a dataset of a domain must look like, measured on its environment (states, action repeat 1)."""
    name: str
    obs_dim: int
    action_dim: int
    physics_dim: int

    @classmethod
    def of(cls, env, name: str) -> "EnvShapes":
        if len(env.obs_shape) != 1:
            raise ValueError("datasets are checked against a states environment (obs_type='states')")
        return cls(name, int(env.obs_shape[0]), int(env.action_dim), int(np.asarray(env.physics_state()).shape[0]))


@dataclass
class Dataset:
    directory: Path
    episodes: list[dict[str, np.ndarray]]
    files: list[Path]
    skipped: list[str] = field(default_factory=list)
    rendered: int = 0

    @property
    def transitions(self) -> int:
        return sum(len(ep["reward"]) - 1 for ep in self.episodes)


def load_dataset(directory: str | os.PathLike, env, *, task: str | None = None, capacity: int | None = None,
                 max_episodes: int | None = None, relabel: bool = False, pixels: bool = False,
                 on_bad_file: str = "stop", pixels_dir: str | os.PathLike | None = None,
                 img_size: int = 64, progress: bool = True) -> Dataset:
    """Read an ExORL-layout dataset for the domain of ``env`` (a states env at action repeat 1).

    Files are taken in name order until the summed lengths reach ``capacity`` (the file that
    reaches it included) or ``max_episodes`` files were taken. ``relabel`` replaces every row's
    reward by ``env.reward_from_physics(physics[t])``; ``pixels`` replaces the observation by
    uint8 (T, 3, img_size, img_size) frames rendered with ``env.render_physics`` (cached on disk;
    files that already hold such frames, like a pixel run's own buffer, are used as they are).
    ``on_bad_file``: ``stop`` raises on a corrupt, truncated or misnamed file, ``skip`` warns and
    goes on. Missing keys and shapes that do not fit the domain always stop.
    """
    from tqdm import tqdm

    if on_bad_file not in BAD_FILE_MODES:
        raise UserError(f"on_bad_file={on_bad_file!r} is not valid; valid: {', '.join(BAD_FILE_MODES)}")
    if max_episodes is not None and (isinstance(max_episodes, bool) or int(max_episodes) < 1):
        raise UserError(f"max_episodes={max_episodes!r} must be a positive integer or null")
    directory = Path(directory)
    files = list_episode_files(directory)
    shapes = EnvShapes.of(env, task or type(env).__name__)
    cache = Path(pixels_dir).expanduser() if pixels_dir else pixels_cache_dir(directory, img_size)
    dataset = Dataset(directory, [], [])
    pending: list[tuple[int, Path, np.ndarray]] = []  # episodes still to render: (position, cache file, physics)
    total = 0
    # Bars only on a terminal: in a log file their carriage returns glue onto the next line.
    bar = tqdm(files, desc=f"loading {directory.name}", unit="file", disable=not progress or not sys.stderr.isatty(),
               leave=False)
    for path in bar:
        try:
            episode = _read_episode(path, shapes, relabel, pixels, img_size)
        except BadFile as error:
            if on_bad_file == "stop":
                raise UserError(f"{error} (on_bad_file=skip skips such files)") from None
            warn(f"skipping {error}")
            dataset.skipped.append(str(path))
            continue
        physics = episode.pop("physics", None)
        if relabel:
            episode["reward"] = relabel_rewards(env, physics)
        if pixels and physics is not None and episode["observation"].dtype != np.uint8:
            cache_file = cache / f"{path.stem}.npz"
            frames = _read_pixel_cache(cache_file, path, len(physics), img_size)
            if frames is None:
                pending.append((len(dataset.episodes), cache_file, physics))
                del episode["observation"]  # the state observation is not needed: frames replace it
            else:
                episode["observation"] = frames
        del physics
        dataset.episodes.append(episode)
        dataset.files.append(path)
        total += len(episode["reward"]) - 1
        if capacity is not None and total >= capacity:
            break
        if max_episodes is not None and len(dataset.episodes) >= int(max_episodes):
            break
    bar.close()
    if not dataset.episodes:
        raise UserError(f"dataset folder {directory} holds no readable episode ({len(dataset.skipped)} file(s) "
                        f"skipped as corrupt or truncated)")
    if pending:
        dataset.rendered = _render_pending(dataset, pending, env, img_size, cache)
    return dataset


def relabel_rewards(env, physics: np.ndarray) -> np.ndarray:
    """Rewards (T, 1) float32 of ``env``'s task for every stored physics state (docs/algorithm.md §11.7)."""
    return np.array([env.reward_from_physics(state) for state in physics], dtype=np.float32).reshape(-1, 1)


def render_frames(env, physics: np.ndarray) -> np.ndarray:
    """uint8 (T, 3, H, W) frames of the stored physics states (docs/algorithm.md §11.7)."""
    return np.stack([env.render_physics(state) for state in physics]).astype(np.uint8, copy=False)


# ------------------------------------------------------------------------------------ internals
def _read_episode(path: Path, shapes: EnvShapes, relabel: bool, pixels: bool, img_size: int) -> dict[str, np.ndarray]:
    """One episode file, validated. Its ``physics`` is read when relabelling, or when pixels are asked
    for and the file holds state observations (a pixel run's own buffer holds uint8 frames: used as is)."""
    try:
        _, length = parse_episode_name(path)
    except ValueError as error:
        raise BadFile(str(error)) from None
    rows = length + 1
    frames_shape = (rows, 3, img_size, img_size)
    expected = {"observation": (rows, shapes.obs_dim), "action": (rows, shapes.action_dim), "reward": (rows, 1),
                "discount": (rows, 1), "physics": (rows, shapes.physics_dim)}
    try:
        with np.load(path, allow_pickle=False) as data:
            required = list(EPISODE_KEYS)
            missing = [key for key in required if key not in data.files]
            if not missing:
                episode = {key: data[key] for key in required}
                stored_frames = pixels and episode["observation"].dtype == np.uint8 \
                    and episode["observation"].shape[1:] == frames_shape[1:]
                if relabel or (pixels and not stored_frames):
                    required.append("physics")
                    if "physics" in data.files:
                        episode["physics"] = data["physics"]
                    else:
                        missing = ["physics"]
            if missing:
                why = " (needed to relabel rewards or render pixels)" if missing == ["physics"] else ""
                raise UserError(f"{path} lacks the key(s) {', '.join(missing)}{why}; found "
                                f"{', '.join(data.files) or 'none'}; an episode file holds {', '.join(required)}")
    except UserError:
        raise
    except Exception as error:  # zip, zlib, npy-header and EOF errors all mean the same thing here
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadFile(f"{path} cannot be read: corrupt or truncated ({reason})") from None
    for key in required:
        array = episode[key]
        if key in ("reward", "discount") and array.ndim == 1:
            array = array.reshape(-1, 1)
        want = expected[key]
        if key == "observation" and stored_frames:
            pass  # uint8 frames of the right size, checked above
        elif array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] != want[1]:
            also = f" (or uint8 frames {frames_shape})" if key == "observation" and pixels else ""
            raise UserError(f"{path}: '{key}' has shape {tuple(array.shape)} ({array.dtype}); the {shapes.name} "
                            f"environment expects {want}{also} — is this dataset of another domain?")
        if array.shape[0] != rows:
            raise BadFile(f"{path}: '{key}' has {array.shape[0]} rows but the file name says {length} "
                          f"transitions ({rows} rows)")
        if key != "physics" and not (key == "observation" and stored_frames):
            array = array.astype(np.float32, copy=False)
        episode[key] = array
    return episode


def _read_pixel_cache(cache_file: Path, source: Path, rows: int, img_size: int) -> np.ndarray | None:
    """Cached frames if they exist, are newer than the episode file and have the right shape."""
    try:
        if cache_file.stat().st_mtime < source.stat().st_mtime:
            return None
        with np.load(cache_file, allow_pickle=False) as data:
            frames = data["observation"]
    except Exception:
        return None
    if frames.dtype != np.uint8 or frames.shape != (rows, 3, img_size, img_size):
        return None
    return frames


def _render_pending(dataset: Dataset, pending: list, env, img_size: int, cache: Path) -> int:
    from tqdm import tqdm

    frames_total = sum(len(physics) for _, _, physics in pending)
    can_write = True
    what = f"rendering {len(pending)} episode(s) into {cache}"
    terminal = sys.stderr.isatty()
    if not terminal:  # one plain line instead of a bar's carriage returns in a log file
        print(f"{what} ({frames_total} frames)", file=sys.stderr, flush=True)
    with tqdm(total=frames_total, desc=what, unit="frame", disable=not terminal) as bar:
        for position, cache_file, physics in pending:
            frames = np.empty((len(physics), 3, img_size, img_size), dtype=np.uint8)
            for t, state in enumerate(physics):
                frames[t] = env.render_physics(state)
                bar.update(1)
            if can_write:
                try:
                    write_episode_file(cache_file, {"observation": frames})
                except OSError as error:
                    warn(f"cannot write the pixel cache in {cache} ({error.strerror or error}); frames are kept "
                         f"in memory only and will be rendered again next time (pixels_dir= moves the cache)")
                    can_write = False
            dataset.episodes[position]["observation"] = frames
    pending.clear()
    return frames_total
