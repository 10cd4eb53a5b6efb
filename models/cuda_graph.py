"""CUDA graphs for the training step (fast mode on CUDA, ``cuda_graphs=true``).

An update of this agent is thousands of small kernels (15-step imagination loops of MLPs), so on a
GPU it is bound by Python and kernel launches, not by arithmetic (bench/RESULTS.md). A ``GraphStage``
records one part of the update (forward, backward and optimiser step) once and then replays the
recording: one launch instead of thousands, no Python.

What a recorded function may do: tensor work on the GPU only. No host synchronisation (``.item()``,
``bool(tensor)``, ``nonzero``), no Python state that changes from call to call (counters, periodic
work: the callers run those eagerly after the replay), optimisers built with ``capturable=True``
(``Optimizer.set_capturable``), autocast with its weight cache off. The inputs must keep their
shapes; the outputs are the same tensors after every replay, overwritten by the next one.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten

# Eager calls before recording: the optimisers create their state and the libraries their
# workspaces on the first calls, which must not happen inside a recording.
WARMUP_CALLS = 2


def _signature(leaves: list) -> list:
    return [(tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves]


class GraphStage:
    """``fn(*args)`` on tensors, recorded as a CUDA graph after ``warmup`` eager calls; ``fn`` is
    passed at every call but only read until the recording is made.

    If recording fails (an operation that cannot be captured), the stage says so once and keeps
    running ``fn`` eagerly, so a run never stops for a speed feature.
    """

    def __init__(self, name: str, warmup: int = WARMUP_CALLS):
        self.name, self.warmup = name, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.static_inputs: list = []
        self.signature: list = []
        self.outputs: Any = None
        self.stream: torch.cuda.Stream | None = None

    def __call__(self, fn: Callable[..., Any], *args):
        if self.failed:
            return fn(*args)
        leaves, _ = tree_flatten(args)
        if self.graph is None:
            if self.calls < self.warmup:
                self.calls += 1
                return self._side_stream(fn, args)
            return self._record(fn, args, leaves)
        if _signature(leaves) != self.signature:
            raise ValueError(f"CUDA graph stage '{self.name}' was recorded for inputs {self.signature} and "
                             f"got {_signature(leaves)}; run with cuda_graphs=false for changing shapes")
        for static, given in zip(self.static_inputs, leaves):
            if isinstance(static, torch.Tensor) and static.data_ptr() != given.data_ptr():
                static.copy_(given)
        self.graph.replay()
        return self.outputs

    def _side_stream(self, fn: Callable[..., Any], args):
        # Eager warm-up on a side stream (the recipe of torch's CUDA-graph notes for whole training
        # steps), ordered after and before the current stream's work.
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        stream = self.stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = fn(*args)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _record(self, fn: Callable[..., Any], args, leaves: list):
        # The inputs of the recording stay its inputs: later calls copy into them (or pass them
        # again, as the next stage does with this one's outputs, and nothing is copied).
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph):
                outputs = fn(*args)
        except Exception as error:  # noqa: BLE001 -- any capture failure falls back to eager
            self.failed = True
            warnings.warn(f"CUDA graph stage '{self.name}' could not be recorded ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); it runs eagerly", stacklevel=2)
            return fn(*args)
        self.graph, self.outputs = graph, outputs
        self.static_inputs, self.signature = leaves, _signature(leaves)
        # Recording ran no kernels: replay once for this call's result.
        graph.replay()
        return outputs


class GraphStages:
    """Named stages, made on first use; ``enabled=False`` calls the functions directly."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stages: dict[str, GraphStage] = {}

    def run(self, name: str, fn: Callable[..., Any], *args):
        if not self.enabled:
            return fn(*args)
        if name not in self.stages:
            self.stages[name] = GraphStage(name)
        return self.stages[name](fn, *args)

    def reset(self) -> None:
        """Forget every recording (the modules or optimisers they point at were replaced)."""
        self.stages.clear()

    def recorded(self) -> dict[str, bool]:
        """Per stage: replaying a recording (True) or running eagerly (False)."""
        return {name: stage.graph is not None for name, stage in self.stages.items()}
