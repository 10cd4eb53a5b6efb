"""Task registry and the ``make`` factory (docs/algorithm.md §11.1, §11.3-§11.5).

Validates every argument up front with one-line ``ValueError`` messages naming the bad value
and the valid ones, then builds the domain's environment. Domain modules are imported lazily
so that importing ``envs`` stays cheap (Meta-World in particular is slow to import).
"""

import importlib

from envs.wrappers import OBS_TYPES

TASKS: dict[str, list[str]] = {
    "walker": ["walker_stand", "walker_walk", "walker_run", "walker_flip"],
    "quadruped": ["quadruped_walk", "quadruped_run", "quadruped_stand", "quadruped_jump"],
    "jaco": [
        "jaco_reach_top_left",
        "jaco_reach_top_right",
        "jaco_reach_bottom_left",
        "jaco_reach_bottom_right",
    ],
    "mw": ["mw_reach"],
}
DOMAINS = tuple(TASKS)
# Domains whose tasks are goals reached or not: zero-shot goal evaluation (eval_goals=True) runs there.
GOAL_DOMAINS = ("jaco", "mw")

# The task whose dynamics, initial states and episode length stand for the domain in
# pre-training (docs/algorithm.md §11.1).
PRIMAL_TASKS = {
    "walker": "walker_stand",
    "quadruped": "quadruped_walk",
    "jaco": "jaco_reach_top_left",
    "mw": "mw_reach",
}

# Where each domain's builder lives: (module, function name).
_BUILDERS = {
    "walker": ("envs.walker", "make_walker"),
    "quadruped": ("envs.quadruped", "make_quadruped"),
    "jaco": ("envs.jaco", "make_jaco"),
    "mw": ("envs.metaworld", "make_metaworld"),
}

MW_NUM_GOAL_SETS = 10
MW_GOALS_PER_SET = 50
MW_MAX_ENV_STEPS = 500  # Meta-World v3 refuses to step past its 500-step horizon (docs/decisions.md D10).
MW_EPISODE_AGENT_STEPS = 250

_ALL_TASKS = [task for tasks in TASKS.values() for task in tasks]


def primal_task(domain: str) -> str:
    if domain not in PRIMAL_TASKS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return PRIMAL_TASKS[domain]


def domain_of(task: str) -> str:
    """The domain a task belongs to, e.g. ``walker_flip`` -> ``walker``."""
    for domain, tasks in TASKS.items():
        if task in tasks:
            return domain
    domain = task.split("_", 1)[0] if isinstance(task, str) else None
    if domain not in TASKS:
        raise ValueError(f"unknown domain {domain!r} in task {task!r}; valid domains: {', '.join(DOMAINS)}")
    raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(_ALL_TASKS)}")


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def make(
    task: str,
    obs_type: str,
    action_repeat: int,
    seed: int,
    img_size: int = 64,
    exorl: bool = False,
    task_id: int | None = None,
    goals_file=None,
):
    """Builds the environment for ``task`` (see the package docstring for the interface).

    ``goals_file`` (Meta-World only) is a goal file to use instead of the shipped one; see
    ``envs.mw_goals`` for its format. Run seed = goal set, task id = goal in the set.
    """
    domain = domain_of(task)
    if goals_file is not None and domain != "mw":
        raise ValueError(f"goals_file={str(goals_file)!r} is for Meta-World tasks (mw_reach) only; {task} has fixed "
                         f"goals: leave goals_file=null")
    if obs_type not in OBS_TYPES:
        raise ValueError(f"unknown obs_type {obs_type!r}; valid obs types: {', '.join(OBS_TYPES)}")
    action_repeat = _check_int("action_repeat", action_repeat)
    seed = _check_int("seed", seed)
    img_size = _check_int("img_size", img_size)
    if action_repeat < 1:
        raise ValueError(f"bad action_repeat {action_repeat}; valid action repeats: integers >= 1")
    if img_size < 1:
        raise ValueError(f"bad img_size {img_size}; valid image sizes: integers >= 1")
    kwargs = {}
    if domain == "mw":
        if action_repeat * MW_EPISODE_AGENT_STEPS > MW_MAX_ENV_STEPS:
            raise ValueError(
                f"bad action_repeat {action_repeat} for {task}; valid action repeats: 1, 2 "
                f"(action_repeat * {MW_EPISODE_AGENT_STEPS} must be <= {MW_MAX_ENV_STEPS})"
            )
        if goals_file is None:
            goals_per_set, source = MW_GOALS_PER_SET, ""
            if not 0 <= seed < MW_NUM_GOAL_SETS:
                raise ValueError(f"bad seed {seed} for {task}; valid seeds: 0..{MW_NUM_GOAL_SETS - 1} "
                                 f"(one goal set each)")
        else:
            from envs.mw_goals import goal_set, load_goal_sets  # light: does not import Meta-World
            goals = goal_set(load_goal_sets(goals_file), seed, goals_file)
            goals_per_set, source = len(goals), f" (goals file {goals_file})"
        if task_id is not None:
            task_id = _check_int("task_id", task_id)
            if not 0 <= task_id < goals_per_set:
                raise ValueError(f"bad task_id {task_id} for {task}; valid task ids: 0..{goals_per_set - 1} or "
                                 f"None{source}")
        kwargs["task_id"] = task_id
        kwargs["goals_file"] = goals_file
    elif domain == "jaco":
        kwargs["exorl"] = bool(exorl)
    module_name, function_name = _BUILDERS[domain]
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(task, obs_type, action_repeat, seed, img_size, **kwargs)
