"""Optimiser wrapper used for every network (docs/algorithm.md §4.2).

Per call: backward, clip the global gradient norm, decoupled weight decay (every parameter is
multiplied by 1 - wd before the Adam step, independently of the learning rate), Adam step.
Metrics are returned as tensors so nothing synchronises with the device in the training loop.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class Optimizer:
    def __init__(self, name: str, params: Iterable[nn.Parameter], lr: float, eps: float = 1e-5,
                 clip: float = 100.0, wd: float = 0.0, opt: str = "adam"):
        self.name = name
        self.params = [p for p in params]
        if not self.params:
            raise ValueError(f"optimiser '{name}' was given no parameters")
        self.clip = clip
        self.wd = wd
        builders = {
            "adam": lambda: torch.optim.Adam(self.params, lr=lr, eps=eps),
            "adamax": lambda: torch.optim.Adamax(self.params, lr=lr, eps=eps),
            "nadam": lambda: torch.optim.NAdam(self.params, lr=lr, eps=eps),
            "sgd": lambda: torch.optim.SGD(self.params, lr=lr),
        }
        if opt not in builders:
            raise ValueError(f"unknown optimiser '{opt}' for '{name}'; valid: {', '.join(builders)}")
        self.opt = builders[opt]()
        self.capturable = False

    def __call__(self, loss: torch.Tensor, retain_graph: bool = False) -> dict[str, torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.clip) if self.clip else _grad_norm(self.params)
        if self.wd:
            with torch.no_grad():
                torch._foreach_mul_(self.params, 1 - self.wd)
        self.opt.step()
        return {f"{self.name}_loss": loss.detach(), f"{self.name}_grad_norm": grad_norm.detach()}

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state)
        # The saved groups carry the saving run's setting; this run's device decides.
        self.set_capturable(self.capturable)

    def set_capturable(self, capturable: bool) -> None:
        """Keep the step counters on the parameters' device so the step can be recorded in a CUDA
        graph (models/cuda_graph.py); off, they live on the host as torch's default has them."""
        self.capturable = capturable
        for group in self.opt.param_groups:
            if "capturable" in group:
                group["capturable"] = capturable
        for param, state in self.opt.state.items():
            if "step" in state and isinstance(state["step"], torch.Tensor):
                device = param.device if capturable else torch.device("cpu")
                state["step"] = state["step"].to(device=device, dtype=torch.float32)


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class trainable:
    """Context manager: gradients flow into ``modules`` only while inside it.

    The agent keeps every parameter frozen outside its own update, so a loss that passes through
    another network (rewards through the world model, say) never leaves gradients there.
    """

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        for module in self.modules:
            module.requires_grad_(True)

    def __exit__(self, *exc):
        for module in self.modules:
            module.requires_grad_(False)
