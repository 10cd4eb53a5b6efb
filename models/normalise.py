"""StreamNorm: scale rewards by a running mean of their magnitude (docs/algorithm.md §4.3)."""
from __future__ import annotations

import torch
from torch import nn


class StreamNorm(nn.Module):
    """mag <- m mag + (1 - m) mean|r|, then r_norm = scale r / (mag + eps). With m = 1 it is the identity."""

    def __init__(self, momentum: float = 0.95, scale: float = 1.0, eps: float = 1e-8):
        super().__init__()
        self.momentum, self.scale, self.eps = momentum, scale, eps
        self.register_buffer("mag", torch.ones(()))

    def forward(self, reward: torch.Tensor, prefix: str = "reward") -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            self.mag.mul_(self.momentum).add_((1 - self.momentum) * reward.detach().abs().mean())
        normed = self.scale * reward / (self.mag + self.eps)
        metrics = {
            f"{prefix}_mean": reward.detach().mean(), f"{prefix}_std": reward.detach().std(),
            f"{prefix}_normed_mean": normed.detach().mean(), f"{prefix}_normed_std": normed.detach().std(),
        }
        return normed, metrics
