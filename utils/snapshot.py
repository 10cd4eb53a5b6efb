"""Snapshots: plain state dicts written atomically and read without unpickling code
(docs/decisions.md D6).

A snapshot file holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``; anything else in a file is refused.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from utils.atomic import atomic_write


class SnapshotError(RuntimeError):
    pass


def save_snapshot(payload: dict, path: str | os.PathLike, exclusive: bool = False) -> Path:
    """Write ``payload`` to ``path`` through a temporary file in the same folder, then rename:
    a crash mid-write never leaves a half-written snapshot under the final name. ``exclusive``:
    FileExistsError, and nothing replaced, when ``path`` appeared meanwhile."""
    path = Path(path)
    try:
        with atomic_write(path, sync=True, exclusive=exclusive) as handle:
            torch.save(payload, handle)
    except BaseException as error:
        cause = _os_error(error)
        if exclusive and isinstance(cause, FileExistsError):
            raise cause from None
        if cause is not None:
            raise SnapshotError(f"could not write snapshot {path}: {cause.strerror or cause}; "
                                f"the previous file (if any) is kept") from error
        raise
    return path


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error``: torch.save reports a full disk as a RuntimeError raised while
    handling the OSError, so follow the chain."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def load_snapshot(path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "snapshot") -> dict:
    """``what``: how errors name the file (a snapshot, a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{what} not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the refused class or function "GLOBAL module.name" in its messages.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise SnapshotError(f"refusing to load {path}: it holds objects other than tensors and plain "
                                f"containers ({found.group(1)})") from error
        # Anything else the weights-only unpickler trips on is a file that is not a snapshot at all.
        detail = re.search(r"Unsupported operand \d+", str(error))
        raise SnapshotError(f"{what} {path} is corrupt or truncated "
                            f"({detail.group(0) if detail else 'unreadable pickle'}); "
                            f"expected a .pt file written by this project") from error
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:
        # torch reports an empty file as a bare EOFError and some text files as KeyError(<first byte>).
        detail = (str(error).splitlines() or [""])[0] or "unexpected end of file"
        raise SnapshotError(f"{what} {path} is corrupt or truncated ({type(error).__name__}: {detail}); "
                            f"expected a .pt file written by this project") from error
    if not isinstance(payload, dict):
        raise SnapshotError(f"{what} {path} does not hold a dict of state")
    return payload


def written_by(path: str | os.PathLike) -> str | None:
    """The run folder that wrote a snapshot (None for snapshots from before runs were recorded).
    Read memory-mapped: only the small entries are touched."""
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return payload.get("run_dir") if isinstance(payload, dict) else None


def check_snapshot_owner(path: str | os.PathLike, run_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace a snapshot another run wrote (docs/decisions.md D32): a run rewrites only its
    own snapshots, unless ``overwrite_snapshots=true``."""
    from utils.errors import UserError
    path = Path(path)
    if overwrite or not path.exists():
        return
    try:
        owner = written_by(path)
    except Exception:  # an unreadable file is still someone's: say so rather than replace it
        owner = None
    if owner is not None and Path(owner) == Path(run_dir).resolve():
        return
    raise UserError(f"snapshot {path} exists, written by {'run folder ' + owner if owner else 'another run'}; "
                    f"not replacing it: use another seed=, another snapshot_base_dir=, or overwrite_snapshots=true")
