"""Multi-layer perceptrons and their output heads (docs/algorithm.md §4.1)."""
from __future__ import annotations

import torch
from torch import nn

from models.distributions import ClampedNormal, OneHotCategorical, UnitNormal


def norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.LayerNorm(width)
    raise ValueError(f"unknown norm '{kind}'; valid: none, layer")


def mlp_trunk(in_dim: int, layers: int, units: int, norm: str = "none") -> nn.Sequential:
    """``layers`` x [Linear(units) -> Norm -> ELU]."""
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, units), norm_layer(norm, units), nn.ELU()]
        width = units
    return nn.Sequential(*modules)


class MSEHead(nn.Module):
    """MLP whose output is the mean of a unit-variance Normal (the 'mse' distribution)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int, norm: str = "none"):
        super().__init__()
        self.trunk = mlp_trunk(in_dim, layers, units, norm)
        self.mean = nn.Linear(units if layers else in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> UnitNormal:
        return UnitNormal(self.mean(self.trunk(x)))


class ActorHead(nn.Module):
    """MLP actor with the clamped-normal action distribution.

    mean = tanh(raw_mean); std = 2 sigmoid(raw_std / 2) + min_std, so std lies in (min_std, 2 + min_std).
    """

    def __init__(self, in_dim: int, action_dim: int, layers: int, units: int, norm: str = "none",
                 min_std: float = 0.1):
        super().__init__()
        self.trunk = mlp_trunk(in_dim, layers, units, norm)
        width = units if layers else in_dim
        self.mean = nn.Linear(width, action_dim)
        self.std = nn.Linear(width, action_dim)
        self.min_std = min_std

    def forward(self, x: torch.Tensor) -> ClampedNormal:
        hidden = self.trunk(x)
        mean = torch.tanh(self.mean(hidden))
        std = 2 * torch.sigmoid(self.std(hidden) / 2) + self.min_std
        return ClampedNormal(mean, std)


class OneHotHead(nn.Module):
    """MLP with a one-hot categorical output (the meta-controller over skills)."""

    def __init__(self, in_dim: int, classes: int, layers: int, units: int, norm: str = "none"):
        super().__init__()
        self.trunk = mlp_trunk(in_dim, layers, units, norm)
        self.logits = nn.Linear(units if layers else in_dim, classes)

    def forward(self, x: torch.Tensor) -> OneHotCategorical:
        return OneHotCategorical(self.logits(self.trunk(x)))
