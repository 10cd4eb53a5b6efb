"""Skill module: a VQ-VAE with an EMA codebook over the world model's deterministic state
(docs/algorithm.md §7.1-§7.3), and the code reward that pulls a skill towards its code (§7.5).

Codebook layout: ``codebook`` is (code_dim, skills); column j is code j.
"""
from __future__ import annotations

import torch
from torch import nn

from models.distributions import one_hot
from models.mlp import MSEHead
from models.optim import Optimizer, trainable


class SkillModule(nn.Module):
    def __init__(self, deter_dim: int, skill_dim: int = 64, code_dim: int = 16, layers: int = 4,
                 units: int = 400, norm: str = "layer", opt: dict | None = None, code_resampling: bool = True,
                 resample_every: int = 200, decay: float = 0.99, eps: float = 1e-5, commitment: float = 1e-4):
        super().__init__()
        self.encoder = MSEHead(deter_dim, code_dim, layers, units, norm)
        self.decoder = MSEHead(code_dim, deter_dim, layers, units, norm)
        codebook = torch.rand(code_dim, skill_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("embed_avg", codebook.clone())
        self.register_buffer("cluster_size", torch.zeros(skill_dim))
        self.register_buffer("usage", torch.zeros(skill_dim))
        self.skill_dim, self.code_dim = skill_dim, code_dim
        self.decay, self.eps, self.commitment = decay, eps, commitment
        self.code_resampling, self.resample_every = code_resampling, resample_every
        self.opt = Optimizer("skill", list(self.encoder.parameters()) + list(self.decoder.parameters()), **(opt or {"lr": 8e-5}))
        self.updates = 0
        self.resample_metrics: dict[str, torch.Tensor] = {}

    def nearest_code(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (Euclidean) for each row of z (N, code_dim)."""
        distances = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.codebook
                     + self.codebook.pow(2).sum(0, keepdim=True))
        return distances.argmin(-1)

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, index: torch.Tensor) -> None:
        assign = one_hot(index, z_e.new_empty(*index.shape, self.skill_dim))  # (N, K)
        counts = assign.sum(0)
        self.usage.add_(counts)
        # Codes nobody chose count as chosen once, as in the original (docs/algorithm.md §7.2).
        counts = torch.where(counts > 0, counts, torch.ones_like(counts))
        self.cluster_size.mul_(self.decay).add_((1 - self.decay) * counts)
        self.embed_avg.mul_(self.decay).add_((1 - self.decay) * (z_e.t() @ assign))
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.skill_dim * self.eps) * total
        self.codebook.copy_(self.embed_avg / smoothed.unsqueeze(0))

    def update(self, deter: torch.Tensor) -> dict[str, torch.Tensor]:
        """One VQ-VAE step on detached deterministic states (N, deter_dim)."""
        return {**self.update_step(deter), **self.after_update(deter)}

    def update_step(self, deter: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensor work of ``update`` (recordable as a CUDA graph): no count, no re-seeding."""
        deter = deter.detach()
        with trainable(self.encoder, self.decoder):
            z_e = self.encoder(deter).mean
            index = self.nearest_code(z_e.detach())
            z_q = self.codebook.t()[index]
            self.ema_update(z_e.detach().float(), index)
            quantised = z_e + (z_q - z_e).detach()
            rec_loss = (self.decoder(quantised).mean - deter).pow(2).mean()
            commit_loss = (z_e - z_q.detach()).pow(2).mean()
            loss = rec_loss + self.commitment * commit_loss
            metrics = {"rec_loss": rec_loss.detach(), "commit_loss": commit_loss.detach()}
            metrics.update(self.opt(loss))
        return metrics

    def after_update(self, deter: torch.Tensor) -> dict[str, torch.Tensor]:
        """Count the update; every ``resample_every`` updates re-seed unused codes (host-side work)."""
        self.updates += 1
        if self.code_resampling and self.updates % self.resample_every == 0:
            self.resample_metrics = self.resample_unused(deter.detach())
        return dict(self.resample_metrics)

    @torch.no_grad()
    def resample_unused(self, deter: torch.Tensor) -> dict[str, torch.Tensor]:
        """Re-seed codes unused since the last call at encoded batch points, drawn with probability
        proportional to their distance from the nearest code (docs/algorithm.md §7.3)."""
        z = self.encoder(deter).mean.float()
        unused = (self.usage == 0).nonzero().flatten().tolist()
        resampled = 0
        for j in unused:
            distances = torch.cdist(z, self.codebook.t()).min(-1).values
            total = distances.sum()
            if total <= 0:
                break
            pick = torch.multinomial(distances / (total + 1e-6), 1).item()
            self.codebook[:, j] = z[pick]
            self.embed_avg[:, j] = z[pick]
            resampled += 1
        self.usage.zero_()
        return {"unused_codes": torch.tensor(float(len(unused))), "resampled_codes": torch.tensor(float(resampled))}

    def skill_target(self, skill: torch.Tensor) -> torch.Tensor:
        """Decoded code of each skill: one-hot (N, K) -> deterministic state (N, deter_dim)."""
        return self.decoder(skill @ self.codebook.t()).mean

    def code_reward(self, skill: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        """-||dec(code(skill)) - deter_t|| for imagined deter (H+1, N, D); differentiable in deter."""
        return -(self.skill_target(skill).unsqueeze(0) - deter).norm(dim=-1)

    def get_extra_state(self) -> dict:
        return {"updates": self.updates, "resample_metrics": {k: float(v) for k, v in self.resample_metrics.items()}}

    def set_extra_state(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.resample_metrics = {k: torch.tensor(v) for k, v in state["resample_metrics"].items()}
