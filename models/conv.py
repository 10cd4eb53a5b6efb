"""Pixel encoder and decoder for 64x64 RGB observations (docs/algorithm.md §3.1, §3.3).

Encoder: 4 x [Conv2d(k=4, s=2) -> Norm -> ELU] with depth x (1, 2, 4, 8) channels, 64->31->14->6->2,
flattened channel-major to 32 * depth features. Decoder: Linear to 32 * depth, then transposed
convolutions with kernels 5, 5, 6, 6 (1->5->13->30->64) back to 3 channels.
"""
from __future__ import annotations

import torch
from torch import nn

from models.distributions import UnitNormal


def _channel_norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown norm '{kind}'; valid: none, layer")


class ConvEncoder(nn.Module):
    def __init__(self, depth: int = 48, kernels: tuple[int, ...] = (4, 4, 4, 4), norm: str = "none",
                 in_channels: int = 3):
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for i, kernel in enumerate(kernels):
            out = depth * 2 ** i
            modules += [nn.Conv2d(channels, out, kernel, stride=2), _channel_norm(norm, out), nn.ELU()]
            channels = out
        self.net = nn.Sequential(*modules)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., 3, 64, 64) in [-0.5, 0.5] -> (..., embed_dim)."""
        lead = obs.shape[:-3]
        out = self.net(obs.reshape(-1, *obs.shape[-3:]))
        return out.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    def __init__(self, feat_dim: int, depth: int = 48, kernels: tuple[int, ...] = (5, 5, 6, 6),
                 norm: str = "none", out_channels: int = 3):
        super().__init__()
        self.bottleneck = 32 * depth
        self.project = nn.Linear(feat_dim, self.bottleneck)
        modules: list[nn.Module] = []
        channels = self.bottleneck
        for i, kernel in enumerate(kernels):
            last = i == len(kernels) - 1
            out = out_channels if last else depth * 2 ** (len(kernels) - i - 2)
            modules.append(nn.ConvTranspose2d(channels, out, kernel, stride=2))
            if not last:
                modules += [_channel_norm(norm, out), nn.ELU()]
            channels = out
        self.net = nn.Sequential(*modules)
        # The first transposed convolution sees a 1x1 input, so it is one matrix product with the
        # kernel as a (in, out * k * k) matrix; CPU convolution kernels run it 10-20x slower than
        # that product. ``first_as_matmul`` (the fast mode) takes the product; same parameters.
        self.first_as_matmul = False

    def forward(self, feat: torch.Tensor) -> UnitNormal:
        """(..., feat_dim) -> Normal over (..., 3, 64, 64), unit variance."""
        lead = feat.shape[:-1]
        x = self.project(feat.reshape(-1, feat.shape[-1]))
        if self.first_as_matmul:
            first = self.net[0]
            weight = first.weight  # (in, out, k, k)
            x = (x @ weight.reshape(weight.shape[0], -1)).reshape(-1, *weight.shape[1:])
            x = self.net[1:](x + first.bias[:, None, None])
        else:
            x = self.net(x.reshape(-1, self.bottleneck, 1, 1))
        return UnitNormal(x.reshape(*lead, *x.shape[1:]), event_dims=3)

