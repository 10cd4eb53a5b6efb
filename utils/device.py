"""Device selection: ``device=auto`` picks CUDA when it is there and the CPU otherwise
(docs/decisions.md D13); what the device does fast (bf16) and how host memory is handed out."""
from __future__ import annotations

import ctypes
import ctypes.util

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
    # Private helpers of torch.cpu (2.x); a build without them is treated as having no bf16 unit.
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def return_freed_host_memory() -> bool:
    """Map every tensor above 1 MiB on its own and unmap it when freed, so the process holds what
    its live tensors need and no more (low_memory=True). glibc otherwise raises its threshold as
    large blocks are freed and keeps later ones in its heap, which held about 0.4 GB of freed
    memory between updates. Returns False where there is no glibc (the call is skipped)."""
    mallopt = _mallopt()
    m_mmap_threshold = -3
    return mallopt is not None and bool(mallopt(m_mmap_threshold, 2**20))


def keep_freed_host_memory() -> bool:
    """Serve large tensors from glibc's heap and keep freed memory there, instead of mapping fresh
    pages for every large tensor and unmapping them when it is freed. An update allocates and
    frees tens of tensors of 10-200 MB; first-touch page faults on fresh pages made a plain ELU or
    matrix product 2x slower than on reused memory, and the exploration actor-critic update 1.4x
    slower (bench/RESULTS.md). The price is memory: freed memory stays with the process for the
    next update, and the peak RSS of a states update grows from about 3.3 to 4.2 GB. Returns False
    where there is no glibc (the call is skipped)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
