"""Resumable run state (issue "Reliability"): every random number generator's state as plain
numbers and tensors (so checkpoints load with ``weights_only=True``), and the run folder's
checkpoint file, written atomically so the previous one stays until the new one is complete.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.snapshot import load_snapshot, save_snapshot

CHECKPOINT_NAME = "checkpoint.pt"
# Settings a rerun in the same run folder may change: budgets, logging, evaluation, output places and
# how fast (not what) the run computes. Any other difference from the checkpoint's config changes the
# networks or the algorithm, and resuming under it is refused.
MAY_CHANGE_ON_RESUME = frozenset({
    "num_train_frames", "num_train_updates", "snapshots", "log_every_frames", "log_every_updates",
    "eval_every_frames", "eval_every_updates", "num_eval_episodes", "use_tb", "use_wandb",
    "progress", "progress_every_s", "checkpoint_every_min", "resume", "device", "threads", "concurrent_runs",
    "save_video", "recon_every_frames", "snapshot_base_dir", "save_ft_model", "experiment", "project_name",
    "prefetch_batches", "compile", "cuda_graphs", "mode", "low_memory", "goal_skill", "goal_steps", "pixels_dir",
    "on_bad_file", "agent.knn_chunk_elements", "overwrite_snapshots",
})


def global_rng_state() -> dict:
    """torch, NumPy (legacy global) and Python ``random`` states as weights-only-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def checkpoint_to_resume(run_dir: Path, mode: str) -> Path | None:
    """The run folder's checkpoint when ``resume=auto`` finds one; ``resume=never`` refuses a folder
    that holds one, so a finished or interrupted run is never overwritten by accident."""
    if mode not in ("auto", "never"):
        raise UserError(f"resume={mode!r} is not valid; valid: auto, never")
    path = checkpoint_path(run_dir)
    if not path.exists():
        return None
    if mode == "never":
        raise UserError(f"{run_dir} already holds a checkpoint ({path.name}) and resume=never; "
                        f"use resume=auto to continue that run, or another hydra.run.dir")
    return path


# What a run writes into its folder besides the checkpoint: the part of an earlier run that a fresh
# start would otherwise append to (CSV rows, TensorBoard events) or mix in (episode files).
RUN_OUTPUTS = ("train.csv", "eval.csv", "buffer", "tb", "eval_video", "finetuned_snapshot.pt")


def set_aside_unfinished_run(run_dir: Path, mode: str) -> Path | None:
    """A run that died before its first checkpoint leaves logs and episodes that cannot be continued;
    a fresh start in the same folder moves them into ``interrupted/<time>/`` (kept, not deleted)
    so its own logs and episode indices start clean. Nothing is moved when a checkpoint is there
    (``mode``: the run's ``resume`` setting, checked here so a refused start moves nothing)."""
    run_dir = Path(run_dir)
    if checkpoint_to_resume(run_dir, mode) is not None:
        return None
    leftovers = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if not leftovers:
        return None
    target = run_dir / "interrupted" / time.strftime("%Y%m%dT%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "_")
    target.mkdir(parents=True)
    for path in leftovers:
        path.rename(target / path.name)
    print(f"{run_dir} holds the logs of a run stopped before its first checkpoint, so nothing to continue: "
          f"moved them to {target} and starting fresh", flush=True)
    return target


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def setting_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """``key: old -> new`` for every setting that differs, split into (refused, allowed) on resume."""
    old, new = flatten(saved), flatten(current)
    missing = "<unset>"
    refused, allowed = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key, missing) != new.get(key, missing):
            change = f"{key}: {old.get(key, missing)} -> {new.get(key, missing)}"
            (allowed if key in MAY_CHANGE_ON_RESUME else refused).append(change)
    return refused, allowed


def open_checkpoint(run_dir: Path, mode: str, phase: str, device, config: dict | None = None
                    ) -> tuple[Path, dict] | None:
    """The run folder's checkpoint and its payload when there is one to continue (``resume=auto``);
    a checkpoint of another phase (pretrain, finetune, offline) is refused, never mixed in, and so is
    one made under settings that change the networks or the algorithm (``config``: this run's)."""
    path = checkpoint_to_resume(run_dir, mode)
    if path is None:
        return None
    payload = load_snapshot(path, map_location=device, what="checkpoint")
    if payload.get("phase") != phase:
        raise UserError(f"the checkpoint in {run_dir} is from {payload.get('phase')}, not {phase}")
    if config is not None and isinstance(payload.get("config"), dict):
        refused, allowed = setting_changes(payload["config"], config)
        if refused:
            shown = "; ".join(refused[:6]) + (f"; and {len(refused) - 6} more" if len(refused) > 6 else "")
            raise UserError(f"{path} was made with other settings, which change the networks or the algorithm "
                            f"({shown}): rerun with the checkpoint's settings to continue it, or start a new run "
                            f"in another hydra.run.dir (resume=never refuses folders that hold a checkpoint)")
        if allowed:
            print(f"resuming with changed settings: {'; '.join(allowed)}", flush=True)
    return path, payload


def write_checkpoint(run_dir: Path, payload: dict, phase: str, total_time: float, wandb_run) -> None:
    """The loop's own state plus what every run resumes with: its phase, elapsed time, the global
    generators and the wandb run to continue."""
    payload.update(phase=phase, total_time=total_time, rng=global_rng_state(),
                   wandb_id=wandb_run.id if wandb_run is not None else None)
    save_snapshot(payload, checkpoint_path(run_dir))
