"""DreamerV2-style world model: encoder, discrete RSSM, decoder and reward head
(docs/algorithm.md §2, §3).

Batches are batch-major dicts: ``observation`` (B, T, *obs), ``action`` (B, T, A), ``reward`` (B, T, 1),
``is_first`` (B, T). Observations are float vectors (states) or uint8 images (pixels).
"""
from __future__ import annotations

import torch
from torch import nn

from models.conv import ConvDecoder, ConvEncoder
from models.mlp import MSEHead, mlp_trunk
from models.optim import Optimizer
from models.rssm import RSSM, State


def preprocess_obs(obs: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-0.5, 0.5]; state vectors pass through unchanged."""
    if obs.dtype == torch.uint8:
        return obs.float() / 255.0 - 0.5
    return obs.float()


def clip_reward(reward: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "identity":
        return reward
    if mode == "sign":
        return torch.sign(reward)
    if mode == "tanh":
        return torch.tanh(reward)
    raise ValueError(f"unknown clip_rewards '{mode}'; valid: identity, sign, tanh")


class WorldModel(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, encoder: dict, decoder: dict, rssm: dict,
                 reward_head: dict, kl: dict, loss_scales: dict, model_opt: dict, grad_heads: list[str],
                 clip_rewards: str = "identity"):
        super().__init__()
        self.pixels = len(obs_shape) == 3
        if self.pixels:
            self.encoder = ConvEncoder(encoder["cnn_depth"], tuple(encoder["cnn_kernels"]), encoder["norm"],
                                       in_channels=obs_shape[0])
            embed_dim = self.encoder(torch.zeros(1, *obs_shape)).shape[-1]
        else:
            self.encoder = mlp_trunk(obs_shape[0], encoder["mlp_layers"], encoder["mlp_units"], encoder["norm"])
            embed_dim = encoder["mlp_units"]
        self.rssm = RSSM(action_dim, embed_dim, **rssm)
        feat_dim = self.rssm.feat_dim
        if self.pixels:
            self.decoder = ConvDecoder(feat_dim, decoder["cnn_depth"], tuple(decoder["cnn_kernels"]), decoder["norm"],
                                       out_channels=obs_shape[0])
        else:
            self.decoder = MSEHead(feat_dim, obs_shape[0], decoder["mlp_layers"], decoder["mlp_units"], decoder["norm"])
        self.reward_head = MSEHead(feat_dim, 1, reward_head["layers"], reward_head["units"], reward_head["norm"])
        unknown = set(grad_heads) - {"decoder", "reward"}
        if unknown:
            raise ValueError(f"unknown grad_heads {sorted(unknown)}; valid: decoder, reward")
        self.grad_heads = set(grad_heads)
        self.kl = dict(kl)
        self.loss_scales = dict(loss_scales)
        self.clip_rewards = clip_rewards
        self.opt = Optimizer("model", self.parameters(), **model_opt)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, State, torch.Tensor, dict]:
        """Returns (model loss, posterior (B, T, ...), per-step KL(post || sg(prior)) (B, T), metrics)."""
        obs = preprocess_obs(batch["observation"])
        embed = self.encoder(obs)
        post, prior = self.rssm.observe(embed, batch["action"], batch["is_first"])
        kl_loss, kl_value = self.rssm.kl_loss(post, prior, self.kl["balance"], self.kl["free"],
                                              self.kl.get("forward", False))
        feat = self.rssm.feat(post)
        decoder_in = feat if "decoder" in self.grad_heads else feat.detach()
        reward_in = feat if "reward" in self.grad_heads else feat.detach()
        observation_loss = -self.decoder(decoder_in).log_prob(obs).mean()
        reward = clip_reward(batch["reward"], self.clip_rewards)
        reward_loss = -self.reward_head(reward_in).log_prob(reward).mean()
        model_loss = (self.loss_scales.get("kl", 1.0) * kl_loss
                      + self.loss_scales.get("observation", 1.0) * observation_loss
                      + self.loss_scales.get("reward", 1.0) * reward_loss)
        metrics = {
            "kl_loss": kl_loss.detach(), "observation_loss": observation_loss.detach(),
            "reward_loss": reward_loss.detach(), "model_kl": kl_value.detach().mean(),
            "prior_ent": self.rssm.entropy(prior).detach().mean(), "post_ent": self.rssm.entropy(post).detach().mean(),
        }
        return model_loss, post, kl_value, metrics
