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


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products beat fp32 here: CUDA GPUs with bf16, CPUs with AMX or
    AVX512-BF16. Elsewhere (this project's 2-core AVX512 CPU, say) bf16 runs several times slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
