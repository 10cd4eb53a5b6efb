"""``compile=true``: the sequential steps of the update (one posterior step of the world model, one
imagination step of a policy) compiled with ``torch.compile``, which fuses their many small
elementwise kernels. These steps run 15-50 times in a row on small batches, so on a GPU their cost
is the number of kernels, not arithmetic (bench/RESULTS.md).

Random draws stay torch's own (inductor's ``fallback_random``), so compiled and plain steps give the
same numbers from the same seed. Compiling takes a while on the first updates (and on the CPU needs a
C++ compiler); a step that fails to compile says so once and runs uncompiled.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable


def compiled(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    compiled_fn = torch.compile(fn, fullgraph=True, dynamic=False)
    failed = False

    def call(*args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled_fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 -- a compiler failure must not stop a run
                failed = True
                message = str(error).splitlines()[0] if str(error) else ""
                warnings.warn(f"compile=true: '{name}' could not be compiled ({type(error).__name__}: {message}); "
                              "it runs uncompiled", stacklevel=2)
        return fn(*args, **kwargs)

    return call
