"""Meta-World goal files: reading and validating them (docs/algorithm.md §11.5; docs/decisions.md D10).

A goal file is JSON: ``{"goal_sets": {"0": [[obj_x, obj_y, obj_z, goal_x, goal_y, goal_z], ...],
"1": [...], ...}}`` (other top-level keys are ignored). Set ``k`` is the goal set of run seed ``k``;
the index of a goal in its set is its task id. Every set holds the same number of goals. The
shipped file ``data/mw_reach_harder_goals.json`` holds the original 10 sets of 50 goals.

Kept apart from ``envs.metaworld`` so that a bad file is reported without importing Meta-World.
Every problem is a ``GoalFileError`` (a ``ValueError``) with one line naming the file and what was
expected.
"""
from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np

GOALS_FILE = pathlib.Path(__file__).resolve().parent / "data" / "mw_reach_harder_goals.json"
GOAL_LAYOUT = "[obj_x, obj_y, obj_z, goal_x, goal_y, goal_z]"
EXPECTED = f'JSON {{"goal_sets": {{"0": [{GOAL_LAYOUT}, ...], "1": [...], ...}}}}'


class GoalFileError(ValueError):
    """A goal file that is missing or does not hold goal sets; the message is one line."""


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite(number) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer too large for a float
        return False


def load_goal_sets(path: str | os.PathLike | None = None) -> np.ndarray:
    """All goal vectors of a goal file (the shipped one when ``path`` is None), shape
    (sets, goals per set, 6): [object x, y, z, goal x, y, z] per goal. Raises ``GoalFileError``."""
    path = GOALS_FILE if path is None else pathlib.Path(os.path.expanduser(str(path)))
    where = f"goals file {path}"
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise GoalFileError(f"{where} {what}; expected {EXPECTED} (goals_file=null uses the shipped "
                            f"{GOALS_FILE.name})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise GoalFileError(f"{where} is not UTF-8 text (byte {error.start}); expected {EXPECTED}") from None
    except OSError as error:
        raise GoalFileError(f"{where} cannot be read ({error.strerror or error}); expected {EXPECTED}") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise GoalFileError(f"{where} is not valid JSON ({error.msg} at line {error.lineno} column "
                            f"{error.colno}); expected {EXPECTED}") from None
    if not isinstance(content, dict) or "goal_sets" not in content:
        found = f"keys {', '.join(map(repr, content)) or 'none'}" if isinstance(content, dict) \
            else f"a JSON {type(content).__name__}"
        raise GoalFileError(f'{where} has no "goal_sets" object at the top (found {found}); expected {EXPECTED}')
    goal_sets = content["goal_sets"]
    if not isinstance(goal_sets, dict) or not goal_sets:
        raise GoalFileError(f'{where}: "goal_sets" is {_short(goal_sets)}; expected a non-empty object '
                            f'{{"0": [{GOAL_LAYOUT}, ...], ...}} keyed by run seed')
    expected_keys = [str(index) for index in range(len(goal_sets))]
    if sorted(goal_sets, key=lambda key: (len(key), key)) != expected_keys:
        odd = sorted(set(goal_sets) - set(expected_keys))
        raise GoalFileError(f'{where}: goal set key(s) {", ".join(map(repr, odd))} do not fit; expected the keys '
                            f'"0".."{len(goal_sets) - 1}" (the run seeds, without gaps)')
    sizes = {}
    for key in expected_keys:
        goals = goal_sets[key]
        if not isinstance(goals, list) or not goals:
            raise GoalFileError(f'{where}: goal_sets["{key}"] is {_short(goals)}; expected a non-empty list of '
                                f'goals {GOAL_LAYOUT}')
        for index, goal in enumerate(goals):
            if not (isinstance(goal, list) and len(goal) == 6
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in goal)):
                raise GoalFileError(f'{where}: goal_sets["{key}"][{index}] is {_short(goal)}; expected a list of '
                                    f'6 numbers {GOAL_LAYOUT}')
            if not all(_finite(x) for x in goal):
                raise GoalFileError(f'{where}: goal_sets["{key}"][{index}] is {_short(goal)}; expected finite '
                                    f'numbers (no NaN or Infinity)')
        sizes[key] = len(goals)
    if len(set(sizes.values())) > 1:
        first = expected_keys[0]
        other = next(key for key in expected_keys if sizes[key] != sizes[first])
        raise GoalFileError(f'{where}: goal_sets["{first}"] holds {sizes[first]} goals but goal_sets["{other}"] '
                            f'holds {sizes[other]}; expected every goal set to hold the same number')
    return np.array([goal_sets[key] for key in expected_keys], dtype=np.float64)


def goal_set(goal_sets: np.ndarray, seed: int, path: str | os.PathLike | None = None) -> np.ndarray:
    """The goal set (goals, 6) of run seed ``seed``; a one-line ``GoalFileError`` when there is none."""
    if not 0 <= seed < len(goal_sets):
        source = GOALS_FILE if path is None else path
        raise GoalFileError(f"bad seed {seed} for mw_reach; valid seeds: 0..{len(goal_sets) - 1} "
                            f"(one goal set each in goals file {source})")
    return goal_sets[seed]
