"""Building agents: from the config (``configs/agent/<name>.yaml`` instantiated with Hydra) and from
a snapshot file (its own config and weights). The scripts, ``collect.py`` and ``visualize_skills.py``
all build their agents here.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import hydra.utils
from hydra.errors import InstantiationException
import torch
from omegaconf import DictConfig, OmegaConf

from agent.base import AGENT_YAML_BASE_KEYS, WorldModelAgent
from utils.device import has_fast_bf16, keep_freed_host_memory, return_freed_host_memory
from utils.errors import UserError
from utils.snapshot import SnapshotError, load_snapshot

# Snapshots written before agents were chosen by ``_target_`` are Choreographer's.
LEGACY_TARGET = "agent.choreo.ChoreoAgent"


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def compile_steps(cfg: DictConfig, device) -> bool:
    """compile=auto: on for CUDA, where it measured 1.3-1.5x on the whole update (bench/RESULTS.md);
    off on the CPU, where it gains ~10% and costs minutes of compiling and a C++ compiler."""
    setting = cfg.compile
    return torch.device(device).type == "cuda" if setting == "auto" else bool(setting)


def prefetch_batches(cfg: DictConfig, device) -> bool:
    """``prefetch_batches``: auto prefetches on CUDA only."""
    setting = cfg.prefetch_batches
    return torch.device(device).type == "cuda" if setting == "auto" else bool(setting)


def agent_class(cfg: DictConfig) -> type:
    """The class ``configs/agent/<name>.yaml`` names in ``_target_``."""
    target = cfg.agent.get("_target_") or (LEGACY_TARGET if cfg.agent.get("name") == "choreo" else None)
    if not target:
        raise UserError(f"agent={cfg.agent.get('name')!r}: its yaml names no _target_ class")
    try:
        return hydra.utils.get_class(target)
    except Exception as error:  # Hydra wraps import errors in its own types
        raise UserError(f"agent={cfg.agent.get('name')!r}: cannot import {target} ({error})") from error


def check_agent_keys(cfg: DictConfig, cls: type) -> None:
    """Every key under ``agent.`` must be an argument the agent takes, and every argument it needs
    must be there: one line naming the key and the agent's settings otherwise."""
    # The keyword-only arguments of the class and of its agent bases (a baseline's own keys plus what
    # its exploration base takes); WorldModelAgent's own come from the rest of the config.
    own = {}
    for klass in reversed(cls.__mro__):
        if issubclass(klass, WorldModelAgent) and klass is not WorldModelAgent and "__init__" in vars(klass):
            own.update({key: p for key, p in inspect.signature(klass.__init__).parameters.items()
                        if p.kind == p.KEYWORD_ONLY})
    taken = set(own) | set(AGENT_YAML_BASE_KEYS)
    given = {key for key in cfg.agent if key != "_target_"}
    name = cfg.agent.get("name")
    unknown = sorted(given - taken)
    if unknown:
        raise UserError(f"agent.{unknown[0]} is not a setting of agent={name}; its settings: "
                        f"{', '.join(sorted(taken))}")
    required = {name for name, p in own.items() if p.default is p.empty}
    missing = sorted((required | set(AGENT_YAML_BASE_KEYS)) - given)
    if missing:
        raise UserError(f"agent={name} needs agent.{missing[0]} (configs/agent/{name}.yaml sets it)")


def build_agent(cfg: DictConfig, obs_shape: tuple[int, ...], action_dim: int, device) -> WorldModelAgent:
    """The agent of ``configs/agent/<name>.yaml``, instantiated with its own keys and the shared
    settings (networks, optimisers, imagination, speed) from the rest of the config."""
    cls = agent_class(cfg)
    check_agent_keys(cfg, cls)
    if cfg.precision == 16 and not has_fast_bf16(torch.device(device)):
        print(f"warning: precision=16 on {device}: this device has no fast bf16 matrix unit (AMX, AVX512-BF16 "
              "or a bf16 GPU), so bf16 runs slower than precision=32 here", flush=True)
    if torch.device(device).type == "cpu" and cfg.low_memory:
        return_freed_host_memory()
    elif torch.device(device).type == "cpu" and cfg.mode == "fast":
        keep_freed_host_memory()
    world_model = dict(encoder=plain(cfg.encoder), decoder=plain(cfg.decoder), rssm=plain(cfg.rssm),
                       kl=plain(cfg.kl), loss_scales=plain(cfg.loss_scales), clip_rewards=cfg.clip_rewards)
    behaviour = dict(discount=cfg.discount, discount_lambda=cfg.discount_lambda, slow_target=cfg.slow_target,
                     slow_target_update=cfg.slow_target_update, slow_target_fraction=cfg.slow_target_fraction)
    agent_cfg = {**plain(cfg.agent), "_target_": f"{cls.__module__}.{cls.__qualname__}"}
    try:
        return hydra.utils.instantiate(
            agent_cfg, obs_shape, action_dim, _convert_="all", device=device, seed=cfg.seed, precision=cfg.precision,
            mode=cfg.mode, low_memory=bool(cfg.low_memory), cuda_graphs=bool(cfg.cuda_graphs),
            compile=compile_steps(cfg, device), world_model=world_model, behaviour=behaviour, actor=plain(cfg.actor),
            critic=plain(cfg.critic), actor_opt=plain(cfg.actor_opt), critic_opt=plain(cfg.critic_opt),
            reward_head=plain(cfg.reward_head), model_opt=plain(cfg.model_opt), imag_horizon=cfg.imag_horizon,
            imag_starts=cfg.imag_starts, action_repeat=cfg.action_repeat)
    except InstantiationException as error:  # Hydra wraps what the agent's constructor raised
        if isinstance(error.__cause__, ValueError):
            raise UserError(str(error.__cause__)) from error
        raise


def load_agent_state(agent, state: dict, path: Path) -> None:
    """A checkpoint's agent state; one that does not fit this agent's networks is one line, not a traceback."""
    try:
        agent.load_snapshot_state(state)
    except (RuntimeError, KeyError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} does not fit this run's agent ({first}); start a new run in another "
                        f"hydra.run.dir") from error


def read_snapshot(path: str | Path, what: str = "a snapshot of this project") -> dict:
    """A snapshot file's payload, with everything needed to rebuild its agent; one line otherwise."""
    path = Path(path).expanduser()
    try:
        payload = load_snapshot(path)
    except SnapshotError as error:
        raise UserError(str(error)) from error
    missing = [key for key in ("agent", "config", "obs_type", "action_repeat") if key not in payload]
    if missing or not isinstance(payload["agent"], dict):
        raise UserError(f"{path} is not {what}: it lacks {', '.join(missing) or 'agent weights'}")
    return payload


def agent_from_snapshot(payload: dict, path: str | Path, obs_shape: tuple[int, ...], action_dim: int, device,
                        seed: int | None = None) -> WorldModelAgent:
    """The snapshot's own agent (its config, its phase) with every weight and optimiser state loaded."""
    cfg = OmegaConf.create(payload["config"])
    if seed is not None:
        cfg.seed = seed
    agent = build_agent(cfg, obs_shape, action_dim, device)
    if payload["agent"].get("phase") == "finetune":
        agent.finetune_mode()
    load_agent_state(agent, payload["agent"], Path(path))
    return agent
