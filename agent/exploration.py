"""Exploration signals (docs/algorithm.md §6, §7.5), each written once for every agent that uses it.

* ``LBSHead``: predicts the per-step latent Bayesian surprise KL(post || prior) from the model
  feature; its prediction on imagined states is the exploration reward. ``LBSExploration`` wires it
  into an agent (Choreographer's exploration, the LBS baseline): the head, its update stage, its reward.
* ``particle_entropy_reward``: the APT-style k-nearest-neighbour entropy reward over imagined
  deterministic states, computed in row chunks so memory stays bounded (docs/decisions.md D5).
  ``fused=True`` (the fast mode) gets each chunk of distances from one matrix product and keeps
  chunks small enough to stay in cache; ``fused=False`` is the plain version kept for comparison.
"""
from __future__ import annotations

import torch
from torch import nn

from models.mlp import MSEHead
from models.optim import Optimizer, trainable
from models.recompute import over_rows
from models.rssm import State


class LBSHead(nn.Module):
    def __init__(self, feat_dim: int, layers: int, units: int, norm: str, opt: dict):
        super().__init__()
        self.head = MSEHead(feat_dim, 1, layers, units, norm)
        self.opt = Optimizer("lbs", self.head.parameters(), **opt)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Predicted surprise (...,) for features (..., F)."""
        return self.head(feat).mean.squeeze(-1)

    def update(self, feat: torch.Tensor, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        with trainable(self.head):
            loss = -self.head(feat.detach()).log_prob(kl.detach().unsqueeze(-1)).mean()
            return self.opt(loss)


class LBSExploration:
    """Mixin for a ``WorldModelAgent``: the LBS head ``lbs`` (the reward head's sizes, ``model_opt``
    settings), trained on the world model's per-step KL as the stage ``lbs``; ``lbs_reward`` of imagined
    features is its prediction, differentiable in them (the actor's dynamics gradient flows through it)."""

    def build_lbs(self) -> None:
        head = self.reward_head_cfg
        self.lbs = LBSHead(self.feat_dim, head["layers"], head["units"], head["norm"], self.model_opt_cfg)

    def update_lbs(self, post: State, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.stages.run("lbs", self._lbs_step, post, kl))

    def _lbs_step(self, post: State, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.lbs.update(self.wm.rssm.feat(post).detach(), kl)

    def lbs_reward(self, _states: State, feat: torch.Tensor, _actions: torch.Tensor | None = None) -> torch.Tensor:
        return over_rows(self.lbs, feat, self.low_memory)


def imagined_particle_entropy(points: torch.Tensor, k: int, clip: float, chunk_elements: int,
                              fused: bool) -> torch.Tensor:
    """``particle_entropy_reward`` of imagined points (..., D) (every step and start pooled), detached,
    in their shape (...) and dtype: the entropy reward of APT, Choreographer's skill reward and APS."""
    entropy = particle_entropy_reward(points.reshape(-1, points.shape[-1]).detach(), k, clip, chunk_elements,
                                      fused=fused)
    return entropy.reshape(points.shape[:-1]).to(points.dtype)


@torch.no_grad()
def particle_entropy_reward(points: torch.Tensor, k: int = 30, clip: float = 1e-4,
                            chunk_elements: int = 1 << 25, fused: bool = False) -> torch.Tensor:
    """Mean distance to the k nearest neighbours (the point itself included), each distance
    reduced by ``clip`` and floored at 0, for every row of ``points`` (M, D) -> (M,).

    Squared distances come from matrix products, ``chunk_elements`` entries of the distance matrix
    at a time, so the full (M, M) matrix never exists. Points are centred first to keep the
    round-off of ||a||^2 + ||b||^2 - 2 a.b small, and each point's distance to itself is set to
    exactly 0.
    """
    points = points.float()
    points = points - points.mean(0, keepdim=True)
    if fused:
        return _particle_entropy_fused(points, k, clip, chunk_elements)
    total = points.shape[0]
    k = min(k, total)
    sq_norm = points.pow(2).sum(-1)
    rows = max(1, chunk_elements // total)
    out = torch.empty(total, device=points.device)
    for start in range(0, total, rows):
        block = points[start:start + rows]
        sq_dist = torch.addmm(sq_norm[start:start + rows, None] + sq_norm[None, :], block, points.t(), alpha=-2)
        sq_dist.diagonal(offset=start).zero_()
        nearest = sq_dist.topk(k, dim=-1, largest=False).values
        distance = nearest.clamp(min=0).sqrt()
        out[start:start + rows] = (distance - clip).clamp(min=0).mean(-1)
    return out


# Rows of distances per chunk in the fused version, at most: a (rows, M) block small enough to be
# read back by top-k from cache rather than from memory (64-512 rows measured: bench/RESULTS.md).
FUSED_CHUNK_ROWS = 128


def _particle_entropy_fused(points: torch.Tensor, k: int, clip: float, chunk_elements: int) -> torch.Tensor:
    """Same result as the plain version. [a, 1] . [-2b, |b|^2] = d^2(a, b) - |a|^2, so each block
    of squared distances, up to a per-row constant that does not change the ranking, is a single
    matrix product with no broadcast add or copy; the constant is added to the k kept values only."""
    total, _ = points.shape
    k = min(k, total)
    sq_norm = points.pow(2).sum(-1)
    ones = torch.ones(total, 1, device=points.device, dtype=points.dtype)
    lhs = torch.cat([points, ones], 1)
    rhs = torch.cat([-2 * points, sq_norm[:, None]], 1).t().contiguous()
    # The row cap is for CPU caches; a GPU is fed best by the largest chunk memory allows.
    cap = FUSED_CHUNK_ROWS if points.device.type == "cpu" else total
    rows = max(1, min(cap, chunk_elements // total))
    out = torch.empty(total, device=points.device)
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        shifted = lhs[start:stop] @ rhs
        own_norm = sq_norm[start:stop]
        # A point's distance to itself is exactly 0: its shifted value is -|a|^2.
        shifted.diagonal(offset=start).copy_(-own_norm)
        nearest = shifted.topk(k, dim=-1, largest=False, sorted=False).values
        distance = (nearest + own_norm[:, None]).clamp(min=0).sqrt()
        out[start:stop] = (distance - clip).clamp(min=0).mean(-1)
    return out
