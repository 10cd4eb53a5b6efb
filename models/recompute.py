"""Activation recomputation for the memory-lean update (``low_memory=True``).

An actor-critic update keeps, for its backward pass, the activations of 15 imagination steps over
every start state and of the heads run over all (H+1) x N imagined states: about 2 GB at the
paper's batch (bench/RESULTS.md). With recomputation only the inputs of each imagination step and
of each row chunk of a head are kept; their activations are computed again, one piece at a time,
when the backward pass reaches them. Random draws inside a recomputed piece repeat exactly
(``torch.utils.checkpoint`` restores the generator state), so the losses and gradients are those of
the plain update.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

# Rows per recomputed head chunk: 8192 x 400 units x 4 layers x 4 bytes is about 50 MB of
# activations alive at a time during the backward pass.
CHUNK_ROWS = 8192


def recompute_rows(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                   chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """``fn`` applied to ``inputs`` (..., D) row-wise, keeping only the inputs for backward."""
    flat = inputs.reshape(-1, inputs.shape[-1])
    parts = [checkpoint(fn, part, use_reentrant=False) for part in flat.split(chunk_rows)]
    out = torch.cat(parts, 0)
    return out.reshape(*inputs.shape[:-1], *out.shape[1:])


def recompute(fn: Callable, *args):
    """``fn(*args)`` keeping only its tensor arguments for backward."""
    return checkpoint(fn, *args, use_reentrant=False)


def over_rows(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, recompute_activations: bool
              ) -> torch.Tensor:
    """``fn(inputs)``, with its activations recomputed in the backward pass when asked."""
    return recompute_rows(fn, inputs) if recompute_activations else fn(inputs)
