"""Device selection: ``device=auto`` picks CUDA when it is there and the CPU otherwise (decision 13)."""
from __future__ import annotations

import torch

from utils.errors import UserError

VALID = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"device={name!r} is not valid; valid: auto, cpu, cuda, cuda:<index>")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} was asked for but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)
