"""Resumable run state (issue "Reliability"): every random number generator's state as plain
numbers and tensors (so checkpoints load with ``weights_only=True``), and the run folder's
checkpoint file, written atomically so the previous one stays until the new one is complete.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.snapshot import load_snapshot, save_snapshot

CHECKPOINT_NAME = "checkpoint.pt"


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


def open_checkpoint(run_dir: Path, mode: str, phase: str, device) -> tuple[Path, dict] | None:
    """The run folder's checkpoint and its payload when there is one to continue (``resume=auto``);
    a checkpoint of another phase (pretrain, finetune, offline) is refused, never mixed in."""
    path = checkpoint_to_resume(run_dir, mode)
    if path is None:
        return None
    payload = load_snapshot(path, map_location=device)
    if payload.get("phase") != phase:
        raise UserError(f"the checkpoint in {run_dir} is from {payload.get('phase')}, not {phase}")
    return path, payload


def write_checkpoint(run_dir: Path, payload: dict, phase: str, total_time: float, wandb_run) -> None:
    """The loop's own state plus what every run resumes with: its phase, elapsed time, the global
    generators and the wandb run to continue."""
    payload.update(phase=phase, total_time=total_time, rng=global_rng_state(),
                   wandb_id=wandb_run.id if wandb_run is not None else None)
    save_snapshot(payload, checkpoint_path(run_dir))
