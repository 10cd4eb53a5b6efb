"""Every setting checked before a run creates anything (docs/decisions.md D32): one ``UserError`` line
naming the value and what is allowed.

* ``preflight(config_name, argv)`` runs before Hydra, on the command line itself: a misspelt key, an
  unknown config group option or a value of the wrong type (``model_opt.lr=fast``) is one line
  instead of Hydra's several-line message;
* ``check_settings(cfg, phase)`` checks the composed config's values for one phase
  (pretrain, finetune, offline).
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

import envs
from utils.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GOAL_SKILL_MODES = ("nearest", "imagine", "none")
SWITCHES = (True, False)


# ------------------------------------------------------------------------------ small value checks
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and (not _is_number(value) or value <= 0):
        raise UserError(f"{key}={value!r} must be a positive number")


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{key}={value!r} must be a positive integer")
    return value


def _one_of(cfg: DictConfig, key: str, allowed: tuple, shown: str | None = None) -> None:
    if key in cfg and cfg[key] not in allowed:
        valid = shown or ", ".join("true" if v is True else "false" if v is False else str(v) for v in allowed)
        raise UserError(f"{key}={cfg[key]!r} is not valid; valid: {valid}")


def _frame_list(cfg: DictConfig, key: str, unit: str) -> None:
    values = cfg.get(key) or []
    if not isinstance(values, (list, ListConfig)):
        raise UserError(f"{key}={values!r} must be a list of {unit} counts, e.g. {key}=[100000,200000]")
    for value in values:
        if not _is_number(value) or value <= 0 or int(value) != value:
            raise UserError(f"{key}={list(values)!r} must list positive {unit} counts")


# ------------------------------------------------------------------------------------- the checks
def check_config(cfg: DictConfig) -> None:
    """The keys every script shares."""
    for key in ("num_train_frames", "batch_size", "batch_length", "imag_horizon", "action_repeat",
                "train_every_actions", "log_every_frames", "eval_every_frames", "progress_every_s"):
        _positive(cfg, key)
    if "num_seed_frames" in cfg and (not _is_number(cfg.num_seed_frames) or cfg.num_seed_frames < 0):
        raise UserError(f"num_seed_frames={cfg.num_seed_frames!r} must be >= 0")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed={seed!r} must be a non-negative integer")
    if cfg.obs_type not in envs.OBS_TYPES:
        raise UserError(f"unknown obs_type '{cfg.obs_type}'; valid: {', '.join(envs.OBS_TYPES)}")
    if cfg.precision not in (16, 32):
        raise UserError(f"precision={cfg.precision!r} is not supported; valid: 32, 16")
    if cfg.mode not in ("fast", "eager"):
        raise UserError(f"mode={cfg.mode!r} is not supported; valid: fast, eager")
    for key in ("low_memory", "cuda_graphs", "use_tb", "use_wandb", "overwrite_snapshots"):
        _one_of(cfg, key, SWITCHES)
    _one_of(cfg, "compile", ("auto", True, False), "auto, true, false")
    _one_of(cfg, "prefetch_batches", ("auto", True, False), "auto, true, false")
    _one_of(cfg, "progress", ("auto", True, False), "auto, true, false")
    _one_of(cfg, "resume", ("auto", "never"))
    _one_of(cfg, "on_bad_file", ("stop", "skip"))
    if cfg.batch_length < 2:
        raise UserError(f"batch_length={cfg.batch_length} must be at least 2")
    _positive_int(cfg, "replay.capacity")
    minutes = cfg.get("checkpoint_every_min")
    if not _is_number(minutes) or minutes < 0:
        raise UserError(f"checkpoint_every_min={minutes!r} must be a number >= 0 (0: at every episode end)")


def resolve_task(cfg: DictConfig) -> str:
    """The run's task: ``task``, or the primal task of ``domain``."""
    if cfg.get("task"):
        try:
            envs.domain_of(cfg.task)
        except ValueError as error:
            raise UserError(str(error)) from error
        return cfg.task
    if cfg.domain not in envs.TASKS:
        raise UserError(f"unknown domain '{cfg.domain}'; valid domains: {', '.join(envs.TASKS)}")
    return envs.primal_task(cfg.domain)


def check_online_config(cfg: DictConfig, phase: str) -> None:
    """The keys of pretrain.py and finetune.py."""
    check_config(cfg)
    task = resolve_task(cfg)
    _positive_int(cfg, "num_eval_episodes")
    _positive_int(cfg, "goal_steps")
    _one_of(cfg, "goal_skill", GOAL_SKILL_MODES + (None,), ", ".join(GOAL_SKILL_MODES))
    for key in ("eval_goals", "save_dataset", "save_video"):
        _one_of(cfg, key, SWITCHES)
    if cfg.eval_goals and envs.domain_of(task) not in envs.GOAL_DOMAINS:
        raise UserError(f"eval_goals=True evaluates goal reaching, which {task} has no goals for; valid on the "
                        f"{', '.join(envs.GOAL_DOMAINS)} domains")
    if phase == "pretrain":
        _frame_list(cfg, "snapshots", "frame")
    else:
        snapshot_ts = cfg.get("snapshot_ts")
        if isinstance(snapshot_ts, bool) or not isinstance(snapshot_ts, int) or snapshot_ts < 0:
            raise UserError(f"snapshot_ts={snapshot_ts!r} must be a frame count >= 0 (0 trains from scratch)")
        _one_of(cfg, "from_offline", SWITCHES)
        _one_of(cfg, "save_ft_model", SWITCHES)


def check_offline_config(cfg: DictConfig) -> None:
    """The keys of offline_train.py."""
    check_config(cfg)
    for key in ("num_train_updates", "log_every_updates", "eval_every_updates", "train_every_actions"):
        _positive_int(cfg, key)
    _frame_list(cfg, "snapshots", "update")
    fraction = cfg.get("holdout_fraction")
    if not _is_number(fraction) or not 0 <= fraction < 1:
        raise UserError(f"holdout_fraction={fraction!r} must be a number in [0, 1)")
    if cfg.get("max_episodes") is not None:
        _positive_int(cfg, "max_episodes")
    _one_of(cfg, "relabel", SWITCHES)
    if cfg.domain not in envs.TASKS:
        raise UserError(f"unknown domain '{cfg.domain}'; valid domains: {', '.join(envs.TASKS)}")
    if cfg.get("task") and cfg.task not in envs.TASKS[cfg.domain]:
        raise UserError(f"task={cfg.task} is not a {cfg.domain} task; valid: {', '.join(envs.TASKS[cfg.domain])}")


def check_settings(cfg: DictConfig, phase: str) -> None:
    """All value checks of one phase (pretrain, finetune, offline), and the agent's own."""
    from utils.agents import agent_class, check_agent_keys
    from utils.device import resolve_device
    from utils.threads import check_thread_settings
    if phase == "offline":
        check_offline_config(cfg)
    else:
        check_online_config(cfg, phase)
    resolve_device(cfg.device)
    check_thread_settings(cfg.threads, cfg.concurrent_runs)
    cls = agent_class(cfg)
    if phase == "pretrain" and not cls.reward_free:
        raise UserError(f"agent={cfg.agent.name} learns from the task reward and has no reward-free "
                        f"pre-training; run finetune.py agent={cfg.agent.name} (snapshot_ts=0 trains from scratch)")
    check_agent_keys(cfg, cls)
    if phase == "finetune" and cfg.snapshot_agent not in (None, cfg.agent.name):
        accepts = cls.loads_snapshots_of
        if "*" not in accepts and cfg.snapshot_agent not in accepts:
            raise UserError(f"snapshot_agent={cfg.snapshot_agent} is not taken by agent={cfg.agent.name}: it starts "
                            f"only from its own snapshots (leave snapshot_agent unset)")


# ------------------------------------------------------------------------------ before Hydra runs
def _config_groups(config_dir: Path) -> dict[str, list[str]]:
    return {folder.name: sorted(path.stem for path in folder.glob("*.yaml"))
            for folder in config_dir.iterdir() if folder.is_dir() and folder.name not in ("hydra", "agent_preset")}


def _leaf_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, DictConfig):
            keys += _leaf_keys(value, f"{prefix}{key}.")
        keys.append(f"{prefix}{key}")
    return keys


def _type_problem(default, value) -> str | None:
    """What a value of another type than the key's default is, or None when it fits."""
    if default is None or value is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if _is_number(default):
        return None if _is_number(value) else "a number"
    if isinstance(default, ListConfig):
        return None if isinstance(value, ListConfig) else "a list, e.g. [1,2]"
    if isinstance(default, DictConfig):
        return None if isinstance(value, DictConfig) else "a group of keys, e.g. {a: 1}"
    return None


def preflight(config_name: str, argv: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> None:
    """Compose the config as Hydra will, and turn what it would refuse (or silently accept with the
    wrong type) into one ``error:`` line. Multirun sweeps and Hydra's own flags are left to Hydra."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg.startswith("-") for arg in args):  # --multirun, --cfg, --help, ...: Hydra's business
        return
    overrides = [arg for arg in args if not arg.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        _check_overrides(config_name, overrides, Path(config_dir))
    except UserError as error:
        sys.exit(f"error: {error}")


def _check_overrides(config_name: str, overrides: list[str], config_dir: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise UserError(f"cannot read the command line: {str(error).splitlines()[0]}") from None
    if any(o.is_sweep_override() for o in parsed):
        return
    groups = _config_groups(config_dir)
    for override in parsed:
        group = override.key_or_group
        if group in groups and override.value() not in groups[group] and not override.is_delete():
            where = Path(config_dir).relative_to(CONFIG_DIR.parent) / group / f"{override.value()}.yaml"
            raise UserError(f"{group}={override.value()} names no file {where}; valid: {', '.join(groups[group])}")
    group_choices = [o.input_line for o in parsed if o.key_or_group in groups]
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        defaults = compose(config_name, overrides=group_choices)
        try:
            cfg = compose(config_name, overrides=overrides)
        except HydraException as error:
            raise UserError(_one_line(error, parsed, defaults)) from None
    for override in parsed:
        if override.key_or_group in groups or override.is_delete():
            continue
        key = override.key_or_group.lstrip("+")
        problem = _type_problem(OmegaConf.select(defaults, key), OmegaConf.select(cfg, key))
        if problem:
            raise UserError(f"{key}={override.value()!r} must be {problem} (its default: "
                            f"{OmegaConf.select(defaults, key)})")


def _one_line(error: Exception, parsed, defaults: DictConfig) -> str:
    text = str(error)
    known = _leaf_keys(defaults)
    for override in parsed:
        key = override.key_or_group
        if not override.is_add() and OmegaConf.select(defaults, key, default="__missing__") == "__missing__":
            nearest = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {nearest[0]}?" if nearest else "; to add a new key use +" + key
            return f"{key} is not a setting of this script{hint}"
    return text.strip().splitlines()[0]
